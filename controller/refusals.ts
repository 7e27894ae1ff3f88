/**
 * Why wirekey refused a request or a connection: the codes the proxy puts
 * in `x-wirekey-error` and in audit lines' `reason`. One list, so scripts
 * and dashboards match on stable names.
 */
export const REFUSAL_CODES = [
  // The request itself.
  'malformed-request', // the HTTP parser refused it (bare CR/LF, obs-fold, CL+CL, CL+TE, ...)
  'method-not-allowed', // CONNECT, TRACE, TRACK, or a method override naming one
  'ambiguous-host', // not exactly one Host header
  'ambiguous-length', // duplicate Content-Length, or Content-Length with Transfer-Encoding
  'bad-transfer-encoding', // a Transfer-Encoding other than exactly one "chunked"
  'bad-header-name', // a header name outside RFC 9110's token characters, or with "_"
  'connection-names-protected', // Connection lists a header the proxy checks or sets
  'host-mismatch', // Host or the absolute target names another host or port than the connection
  'bad-target', // the request target is not a path or an absolute https URL
  'upgrade-unsupported', // a protocol upgrade (WebSocket)
  // The binding and its credential.
  'binding-changed', // the binding the connection was made under was removed or changed
  'credential-unavailable', // the credential cannot be read, or cannot be sent as a header
  'sigv4-scope', // the AWS service and region of the host are unknown
  'sigv4-signed-chunks', // a payload signed chunk by chunk cannot be re-signed
  'sigv4-body-too-large', // the body must be read to be signed and is over --sigv4-body-limit
  'sigv4-busy', // bodies held for signing already fill --sigv4-body-memory
  'upstream-failed', // the upstream could not be reached, or its TLS could not be verified
  // The connection, before any request.
  'too-many-connections', // the workload has --max-connections-per-workload open
  'too-many-handshakes', // --max-handshakes connections are between accept and TLS established
  'handshake-timeout', // no complete ClientHello and handshake within --handshake-timeout
] as const;

export type RefusalCode = (typeof REFUSAL_CODES)[number];

/** A refused request: the status answered, the code, and a message for the workload that never says where a secret lives. */
export interface Refusal {
  status: number;
  code: RefusalCode;
  message: string;
}
