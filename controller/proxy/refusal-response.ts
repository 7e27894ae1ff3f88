/**
 * How an HTTP/1.1 refusal reaches the workload, on every proxy path: the
 * status, the refusal code in `x-wirekey-error`, a one-line message that
 * never says where a secret lives, and the connection closed.
 */
import type net from 'node:net';
import http from 'node:http';
import type { Refusal } from '../refusals.js';
import { ResponseFramingError } from './h1-wire.js';

/**
 * What went wrong with an upstream, as far as the workload is told: which
 * of these it was, never the socket error itself. Connect errors (refused,
 * timed out, unreachable, reset), their errno names and the addresses in
 * their text would tell a workload what listens where behind the agent;
 * the agent's log keeps the error.
 */
export type UpstreamFailure = 'unreachable' | 'certificate' | 'malformed' | 'closed';

/** The error codes Node gives a TLS certificate that does not verify (OpenSSL's X509_V_ERR_* names, and a name it does not carry). */
const CERTIFICATE_ERRORS: ReadonlySet<string> = new Set([
  'ERR_TLS_CERT_ALTNAME_INVALID', 'HOSTNAME_MISMATCH',
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE', 'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY', 'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID', 'CERT_HAS_EXPIRED', 'ERROR_IN_CERT_NOT_BEFORE_FIELD', 'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'CERT_CHAIN_TOO_LONG', 'CERT_REVOKED',
  'INVALID_CA', 'PATH_LENGTH_EXCEEDED', 'INVALID_PURPOSE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'UNABLE_TO_GET_CRL', 'UNABLE_TO_DECRYPT_CRL_SIGNATURE', 'CRL_SIGNATURE_FAILURE', 'CRL_NOT_YET_VALID', 'CRL_HAS_EXPIRED',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD', 'ERROR_IN_CRL_NEXT_UPDATE_FIELD',
]);

/**
 * The class of an upstream failure. `connected`: the connection was
 * established (and its TLS verified) before it failed; a failure before
 * that is `unreachable`, whatever the error, unless it is the certificate.
 */
export function upstreamFailure(err: unknown, connected: boolean): UpstreamFailure {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  // HPE_*: Node's and undici's HTTP parsers.
  if (err instanceof ResponseFramingError || (typeof code === 'string' && code.startsWith('HPE_'))) return 'malformed';
  if (typeof code === 'string' && CERTIFICATE_ERRORS.has(code)) return 'certificate';
  return connected ? 'closed' : 'unreachable';
}

/** The refusal (502 upstream-failed) for a request whose upstream `host` failed with `err`: the class of failure, nothing of the error. */
export function upstreamFailed(host: string, err: unknown, connected: boolean): Refusal {
  const message = {
    unreachable: `upstream ${host} could not be reached`,
    certificate: `upstream ${host}'s certificate did not verify for ${host}`,
    malformed: `upstream ${host} sent a malformed response`,
    closed: `upstream ${host} closed the connection before answering`,
  }[upstreamFailure(err, connected)];
  return { status: 502, code: 'upstream-failed', message };
}

/** Answers `refusal` on a response not yet begun, then closes the connection; a response already begun is cut instead. */
export function answerRefusal(res: http.ServerResponse, refusal: Refusal): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = `wirekey: ${refusal.message}\n`;
  res.shouldKeepAlive = false;
  res.writeHead(refusal.status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-wirekey-error': refusal.code,
    connection: 'close',
  });
  res.end(body);
}

/** Answers `refusal` on a raw socket (before or outside a response object) and closes it. */
export function refuseRaw(socket: net.Socket, refusal: Refusal): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = `wirekey: ${refusal.message}\n`;
  socket.end(
    `HTTP/1.1 ${refusal.status} ${http.STATUS_CODES[refusal.status] ?? ''}\r\n` +
      `content-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-wirekey-error: ${refusal.code}\r\nconnection: close\r\n\r\n${body}`,
  );
}
