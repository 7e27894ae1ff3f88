/**
 * Header handling shared by the request and response paths: HTTP/1.1
 * hop-by-hop headers belong to one connection and are never forwarded.
 */

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Copies raw [name, value, name, value...] headers without hop-by-hop
 * headers, those listed in Connection, and `drop`.
 */
export function forwardableHeaders(raw: string[], drop: Set<string> = new Set()): string[] {
  const listed = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() === 'connection') {
      for (const token of (raw[i + 1] as string).split(',')) listed.add(token.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    if (HOP_BY_HOP.has(name) || listed.has(name) || drop.has(name)) continue;
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
