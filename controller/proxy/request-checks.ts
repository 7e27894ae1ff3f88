/**
 * The proxy refuses requests it cannot attribute to the bound service with
 * certainty. Node's HTTP parser (llhttp, strict mode) already refuses bare
 * CR/LF, obs-fold, conflicting Content-Length and Content-Length with
 * Transfer-Encoding at the framing level; these checks cover what a parser
 * accepts but an injector must not.
 */
import type { IncomingMessage } from 'node:http';
import { countHeader } from './headers.js';
import { normalizeHost } from '../policy/compile.js';

export interface Refusal {
  status: number;
  code: string;
  message: string;
}

/**
 * Checks a request arriving on a connection whose TLS SNI was `sni` and
 * whose original destination port was `port`. Returns why it must be
 * refused, or null when it may be forwarded with a credential.
 */
export function checkRequest(req: IncomingMessage, sni: string, port: number): Refusal | null {
  const raw = req.rawHeaders;
  if (req.method === 'CONNECT') {
    return { status: 405, code: 'method-not-allowed', message: 'CONNECT is not supported through wirekey' };
  }
  if (req.method === 'TRACE') {
    // The upstream would echo the request, injected credential included, back to the workload.
    return { status: 405, code: 'method-not-allowed', message: 'TRACE would echo the injected credential back; it is not allowed through wirekey' };
  }
  if (countHeader(raw, 'host') !== 1) {
    return { status: 400, code: 'ambiguous-host', message: 'exactly one Host header is required' };
  }
  if (countHeader(raw, 'content-length') > 1) {
    return { status: 400, code: 'ambiguous-length', message: 'duplicate Content-Length' };
  }
  if (countHeader(raw, 'transfer-encoding') > 0 && countHeader(raw, 'content-length') > 0) {
    return { status: 400, code: 'ambiguous-length', message: 'Content-Length with Transfer-Encoding' };
  }
  const hostProblem = checkAuthority(req.headers.host ?? '', sni, port);
  if (hostProblem) return { status: 421, code: 'host-mismatch', message: `Host header ${hostProblem}` };

  const target = req.url ?? '';
  if (target.startsWith('/') || (target === '*' && req.method === 'OPTIONS')) return null;
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    return { status: 400, code: 'bad-target', message: 'request target is not a path or an absolute https URL' };
  }
  if (url.protocol !== 'https:') {
    return { status: 400, code: 'bad-target', message: 'absolute request target must be https' };
  }
  const targetProblem = checkAuthority(url.host, sni, port);
  return targetProblem ? { status: 421, code: 'host-mismatch', message: `request target ${targetProblem}` } : null;
}

/** Why `authority` (host[:port]) does not name `sni` on `port`, or null. */
function checkAuthority(authority: string, sni: string, port: number): string | null {
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(authority);
  if (!m || !m[1]) return 'is not a valid host[:port]';
  if (normalizeHost(m[1]) !== sni) return `names a different host than the TLS server name ${sni}`;
  if (m[2] !== undefined && m[2] !== '' && Number(m[2]) !== port) {
    return `names port ${m[2]}, but the connection was to port ${port}`;
  }
  return null;
}
