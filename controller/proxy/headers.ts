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
  'x-rewrite-url',
  'x-original-host',
  'x-host',
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
