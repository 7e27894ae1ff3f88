/**
 * Why wirekey refused a request or a connection: the codes the proxy puts
 * in `x-wirekey-error`, and both datapaths in audit lines' `reason` and in
 * `wirekey status`. One list, so scripts and dashboards match on stable
 * names whichever datapath refused. (The kernel datapath's counters map to
 * these in controller/datapath/layout.ts.)
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
  'binding-changed', // the binding (or, on the kernel datapath, the pinned address) the connection was made under was removed or changed
  'credential-unavailable', // the credential cannot be read, or cannot be sent as a header
  'sigv4-scope', // the AWS service and region of the host are unknown
  'sigv4-signed-chunks', // a payload signed chunk by chunk cannot be re-signed
  'sigv4-body-too-large', // the body must be read to be signed and is over --sigv4-body-limit
  'sigv4-busy', // bodies held for signing already fill --sigv4-body-memory
  'sigv4-mints-credentials', // the call would have AWS hand out credentials of their own (STS AssumeRole, GetSessionToken; IAM CreateAccessKey; ECR GetAuthorizationToken; ...)
  'upstream-failed', // the upstream could not be reached, its TLS could not be verified, or it failed before its response head
  'audit-unavailable', // the audit log cannot be written (or stdout's reader is that far behind): no audit, no injection
  // Kernel datapath only (the proxy reads the request whole, or drops the header instead).
  'head-too-large', // a request head over 8 KiB
  'credential-header-present', // the workload sent the injected header itself
  'bad-chunked-framing', // malformed chunk sizes, extensions, CRLFs or trailers
  'stream-desync', // bytes reached the stream without the program seeing them (urgent data, a write before established)
  'send-buffer-full', // the send buffer could not take the request line and the injected line in one piece
  'push-failed', // the kernel failed to queue a write, or socket memory accounting refused its charge
  'fast-open', // TCP Fast Open to a pinned destination (connect() fails with EPERM)
  'no-socket-storage', // connect() refused: socket storage could not be allocated
  'agent-gone', // no live agent: its heartbeat lapsed, or it stopped
  'internal-error', // a kernel helper failed (memory)
  // Egress policy (a workload with an egress section), both datapaths.
  'egress-not-allowed', // no egress rule allows the destination address, port and protocol (connect()/sendmsg() fail with EPERM)
  'egress-name-not-allowed', // the SNI, or a plaintext request's Host, is no name an egress rule allows on that port
  'egress-name-unresolved', // an allowed name resolves to no address the agent can reach
  // The connection, before any request.
  'too-many-connections', // the workload has --max-connections-per-workload open
  'too-many-handshakes', // --max-handshakes connections are between accept and TLS established
  'handshake-timeout', // no complete ClientHello and handshake within --handshake-timeout
  'too-many-resets', // an HTTP/2 connection reset more streams than --h2-max-resets allows in 10 s (rapid reset): GOAWAY
] as const;

export type RefusalCode = (typeof REFUSAL_CODES)[number];

/** A refused request: the status answered, the code, and a message for the workload that never says where a secret lives. */
export interface Refusal {
  status: number;
  code: RefusalCode;
  message: string;
}
