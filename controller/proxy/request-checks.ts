/**
 * The proxy refuses requests it cannot attribute to the bound service with
 * certainty. Node's HTTP parser (llhttp, strict mode) already refuses bare
 * CR/LF, obs-fold, conflicting Content-Length and Content-Length with
 * Transfer-Encoding at the framing level; these checks cover what a parser
 * accepts but an injector must not.
 */
import type { IncomingMessage } from 'node:http';
import { connectionTokens, countHeader } from '../http/headers.js';
import { normalizeHost } from '../policy/compile.js';
import { normalizeHostName } from '../tls/client-hello.js';
import type { Refusal } from '../refusals.js';

export type { Refusal } from '../refusals.js';

/** RFC 9110 5.6.2 token characters, without "_": nginx drops such names by default, and some servers read "_" as "-". */
const HEADER_NAME = /^[!#$%&'*+\-.^`|~0-9A-Za-z]+$/;

/** Methods whose response can echo the request, injected credential included. */
const ECHO_METHODS = new Set(['TRACE', 'TRACK']);
const METHOD_OVERRIDES = new Set(['x-http-method-override', 'x-http-method', 'x-method-override']);

/**
 * Headers a Connection header may not list: removing them would change
 * what the proxy checked (Host), how the upstream frames the request
 * (Content-Length, Transfer-Encoding, ...) or what it authenticates.
 */
const PROTECTED = new Set([
  'host', 'content-length', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect',
  'authorization', 'proxy-authorization', 'connection',
]);

/**
 * A request as the checks see it, whichever protocol carried it: an
 * HTTP/1.1 IncomingMessage is one; an HTTP/2 stream becomes one once its
 * pseudo-headers are checked (controller/proxy/h2.ts), with `:authority`
 * as its one Host header.
 */
export interface RequestHead {
  method?: string;
  url?: string;
  /** [name, value, ...] as received (HTTP/2: the regular headers, pseudo-headers excluded). */
  rawHeaders: string[];
  httpVersion: string;
}

/**
 * Checks a request arriving on a connection whose TLS SNI was `sni` and
 * whose original destination port was `port`. `injected` is the header
 * name the binding adds, lower-case (or undefined for SigV4, which sets
 * x-amz-* headers). With `upgrade` (a WebSocket upgrade the proxy accepted,
 * whose Connection and Upgrade it sets itself upstream) Connection may list
 * upgrade. Returns why it must be refused, or null when it may be forwarded
 * with a credential.
 */
export function checkRequest(req: RequestHead, sni: string, port: number, injected?: string, upgrade = false): Refusal | null {
  const head = checkHead(req, injected, upgrade);
  if (head) return head;
  const hostProblem = checkAuthority(firstHeader(req.rawHeaders, 'host') ?? '', sni, port);
  if (hostProblem) return { status: 421, code: 'host-mismatch', message: `Host header ${hostProblem}` };

  const target = req.url ?? '';
  if (target.startsWith('/') || (target === '*' && req.method === 'OPTIONS')) return null;
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    return { status: 400, code: 'bad-target', message: 'request target is not a path or an absolute https URL' };
  }
  if (url.protocol !== 'https:' || url.username || url.password) {
    return { status: 400, code: 'bad-target', message: 'absolute request target must be https, without user info' };
  }
  const targetProblem = checkAuthority(url.host, sni, port);
  return targetProblem ? { status: 421, code: 'host-mismatch', message: `request target ${targetProblem}` } : null;
}

/**
 * Checks a plaintext HTTP request of a restricted workload on a connection
 * to `port` (the proxy forwards it to the name its Host gives, if an egress
 * rule allows that name): the same head checks as a terminated request,
 * then the Host itself. Returns the refusal, or the name the Host gives
 * (lower-case, a trailing dot dropped; undefined when it is no DNS name,
 * e.g. an IP literal, which no name rule can allow) and the authority to
 * send upstream.
 */
export function checkPlainRequest(req: IncomingMessage, port: number): Refusal | { name: string | undefined; authority: string } {
  const head = checkHead(req, undefined);
  if (head) return head;
  const m = AUTHORITY.exec(req.headers.host ?? '');
  if (!m || !m[1]) return { status: 400, code: 'ambiguous-host', message: 'the Host header is not a valid host[:port]' };
  if (m[2] !== undefined && m[2] !== '' && Number(m[2]) !== port) {
    return { status: 421, code: 'host-mismatch', message: `Host header names port ${m[2]}, but the connection was to port ${port}` };
  }
  const name = m[1].startsWith('[') ? undefined : normalizeHostName(m[1].replace(/\.$/, ''));
  const target = req.url ?? '';
  if (!(target.startsWith('/') || (target === '*' && req.method === 'OPTIONS'))) {
    let url: URL;
    try {
      url = new URL(target);
    } catch {
      return { status: 400, code: 'bad-target', message: 'request target is not a path or an absolute http URL' };
    }
    if (url.protocol !== 'http:' || url.username || url.password) {
      return { status: 400, code: 'bad-target', message: 'absolute request target must be http, without user info' };
    }
    // As for the Host: no port is the connection's; a port must be the connection's.
    const hostname = url.hostname.replace(/\.$/, '');
    if (name === undefined || normalizeHostName(hostname) !== name || (url.port !== '' && Number(url.port) !== port)) {
      return { status: 421, code: 'host-mismatch', message: 'request target names another host or port than the Host header' };
    }
  }
  const authority = name === undefined ? m[1] : m[2] ? `${name}:${m[2]}` : name;
  return { name, authority };
}

const AUTHORITY = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/;

/** Checks of the request line and header section that do not depend on where the request goes. */
function checkHead(req: RequestHead, injected: string | undefined, upgrade = false): Refusal | null {
  const raw = req.rawHeaders;
  const method = req.method ?? '';
  if (method === 'CONNECT') {
    return { status: 405, code: 'method-not-allowed', message: 'CONNECT is not supported through wirekey' };
  }
  if (ECHO_METHODS.has(method)) {
    // The upstream would echo the request, injected credential included, back to the workload.
    return { status: 405, code: 'method-not-allowed', message: `${method} would echo the injected credential back; it is not allowed through wirekey` };
  }
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (!HEADER_NAME.test(name)) {
      return { status: 400, code: 'bad-header-name', message: `header name ${JSON.stringify(name.slice(0, 64))} is not an HTTP token (or holds "_")` };
    }
    const lower = name.toLowerCase();
    if (METHOD_OVERRIDES.has(lower) && ECHO_METHODS.has((raw[i + 1] as string).trim().toUpperCase())) {
      return { status: 405, code: 'method-not-allowed', message: `${name} names a method that would echo the injected credential back` };
    }
  }
  for (const token of connectionTokens(raw)) {
    if (upgrade && token === 'upgrade') continue;
    if (PROTECTED.has(token) || token === injected || token.startsWith('x-amz-')) {
      return { status: 400, code: 'connection-names-protected', message: `the Connection header lists ${token}, which wirekey checks or sets` };
    }
  }
  if (countHeader(raw, 'host') !== 1) {
    return { status: 400, code: 'ambiguous-host', message: 'exactly one Host header is required' };
  }
  const lengths = countHeader(raw, 'content-length');
  const codings = countHeader(raw, 'transfer-encoding');
  if (lengths > 1) {
    return { status: 400, code: 'ambiguous-length', message: 'duplicate Content-Length' };
  }
  if (codings > 0 && lengths > 0) {
    return { status: 400, code: 'ambiguous-length', message: 'Content-Length with Transfer-Encoding' };
  }
  if (codings > 0) {
    const te = firstHeader(raw, 'transfer-encoding');
    if (codings > 1 || te === undefined || te.trim().toLowerCase() !== 'chunked' || req.httpVersion !== '1.1') {
      return { status: 400, code: 'bad-transfer-encoding', message: 'Transfer-Encoding must be exactly one "chunked" on HTTP/1.1' };
    }
  }
  return null;
}

function firstHeader(raw: string[], name: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) return raw[i + 1] as string;
  return undefined;
}

/** Why `authority` (host[:port]) does not name `sni` on `port`, or null. */
export function checkAuthority(authority: string, sni: string, port: number): string | null {
  const m = AUTHORITY.exec(authority);
  if (!m || !m[1]) return 'is not a valid host[:port]';
  if (normalizeHost(m[1]) !== sni) return `names a different host than the TLS server name ${sni}`;
  if (m[2] !== undefined && m[2] !== '' && Number(m[2]) !== port) {
    return `names port ${m[2]}, but the connection was to port ${port}`;
  }
  return null;
}
