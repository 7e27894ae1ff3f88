/**
 * Which headers cross the proxy. Framing (Content-Length,
 * Transfer-Encoding) and Host on the upstream request are the proxy's own,
 * computed after the request was checked; hop-by-hop headers belong to one
 * connection; routing hints a workload adds are not the workload's to give.
 */

/** RFC 9110 7.6.1: meaningful for one connection only, never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Set on the upstream request by the proxy itself, never copied from the workload's. */
const PROXY_SET = new Set(['host', 'content-length', 'transfer-encoding']);

/**
 * Routing hints: a front or framework upstream may route, rewrite or
 * authorise by them, so a workload could use them to steer its credential
 * to another backend or path than the one it was checked for. Removed from
 * every request (README: "What the proxy forwards").
 */
const ROUTING_HINTS = new Set([
  'forwarded',
  'x-original-url',
  'x-original-uri',
  'x-rewrite-url',
  'x-original-host',
  'x-host',
  'x-http-host-override',
  'x-envoy-original-path',
  'x-real-ip',
  'x-proxyuser-ip',
]);

export function isRoutingHint(lower: string): boolean {
  return ROUTING_HINTS.has(lower) || lower.startsWith('x-forwarded-');
}

/** The header names a request's Connection header lists, lower-cased. */
export function connectionTokens(raw: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() !== 'connection') continue;
    for (const token of (raw[i + 1] as string).split(',')) {
      const t = token.trim().toLowerCase();
      if (t) out.push(t);
    }
  }
  return out;
}

/**
 * The workload's request headers that go upstream: without hop-by-hop
 * headers, those its Connection header lists, routing hints, Host and
 * framing (the proxy sets those), and `drop` (lower-case names: the
 * credential headers the injection replaces), appended to `out`.
 */
export function upstreamRequestHeaders(raw: string[], drop: ReadonlySet<string>, out: string[] = []): string[] {
  const tokens = connectionTokens(raw);
  const listed = tokens.length ? new Set(tokens) : undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || PROXY_SET.has(lower) || listed?.has(lower) || drop.has(lower) || isRoutingHint(lower)) continue;
    out.push(name, raw[i + 1] as string);
  }
  return out;
}

/** An upstream response's headers as the workload gets them: without hop-by-hop headers and those its Connection header lists. */
export function downstreamResponseHeaders(raw: string[]): string[] {
  const listed = new Set(connectionTokens(raw));
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = (raw[i] as string).toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed.has(lower)) continue;
    out.push(raw[i] as string, raw[i + 1] as string);
  }
  return out;
}

/** How many times `name` (lower-case) appears in raw headers. */
export function countHeader(raw: string[], name: string): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) n++;
  return n;
}

/**
 * The framing header of the upstream request for `req`: the length Node's
 * parser framed its body by, or chunked; none for a request without a body.
 * The workload's own copies never go upstream (upstreamRequestHeaders drops them).
 */
export function framingHeaders(req: { headers: { 'transfer-encoding'?: string; 'content-length'?: string } }): string[] {
  if (req.headers['transfer-encoding'] !== undefined) return ['Transfer-Encoding', 'chunked'];
  const length = req.headers['content-length'];
  return length !== undefined ? ['Content-Length', length] : [];
}

/**
 * downstreamResponseHeaders for headers as undici gives them (lower-case
 * names, a repeated header's values in an array), as raw [name, value, ...].
 */
export function downstreamResponseHeaderList(headers: Record<string, string | string[] | undefined>): string[] {
  const connection = headers.connection;
  let listed: Set<string> | undefined;
  if (connection !== undefined) listed = new Set(connectionTokens(Array.isArray(connection) ? connection.flatMap((v) => ['connection', v]) : ['connection', connection]));
  const out: string[] = [];
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || listed?.has(name)) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (typeof value === 'string') out.push(name, value);
    else for (const v of value) out.push(name, v);
  }
  return out;
}

/**
 * Methods whose content has no generally defined meaning (RFC 9110 9.3.1,
 * 9.3.2, 9.3.5, 9.3.7). Some servers read no body on them whatever the
 * framing says, and take the body for the next request on the connection.
 */
const BODY_WITHOUT_MEANING = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS']);

/**
 * Whether the upstream connection must carry nothing after this request: a
 * body on a method some servers read no body on. Were the connection
 * reused, such a server would read the body as a request of the workload's
 * making, and the workload's next request, credential and all, as that
 * one's body, which the workload may then read back.
 */
export function bodyEndsConnection(method: string, hasBody: boolean): boolean {
  return hasBody && BODY_WITHOUT_MEANING.has(method);
}

/** `headers` with `Connection: close` added when `close` (a copy; `headers` is left as it is). */
export function closingHeaders(headers: string[], close: boolean | undefined): string[] {
  return close ? [...headers, 'Connection', 'close'] : headers;
}

/**
 * A request target as the upstream gets it: origin-form. An absolute-form
 * target (`https://host/path?query`, which the proxy accepts once its host
 * is checked) loses its scheme and authority, byte for byte otherwise: a
 * server routes by an absolute target's own authority, which the check
 * read only after normalising it (percent-decoding, a trailing dot).
 */
export function originForm(target: string): string {
  // Nearly every target is already origin-form: no pattern for those, on the per-request path.
  if (target.charCodeAt(0) === 0x2f) return target;
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.exec(target);
  if (!scheme) return target;
  const rest = target.slice(scheme[0].length);
  const end = rest.search(/[/?#]/);
  if (end < 0) return '/';
  const tail = rest.slice(end);
  return tail.startsWith('/') ? tail : `/${tail}`;
}
