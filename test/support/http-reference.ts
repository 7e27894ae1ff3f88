/**
 * The reference model of request boundaries that the kernel fuzz test
 * (test/kernel/http-inject.test.ts) and the host-compiled scanners' unit
 * tests both check the parser against.
 */

/**
 * Where the request lines of `stream` end, and their heads: a lenient
 * reference that only follows boundaries (Content-Length, chunked framing),
 * and stops where it cannot.
 */
export function requestHeads(stream: Buffer): { rlEnd: number; headEnd: number }[] {
  const out: { rlEnd: number; headEnd: number }[] = [];
  let p = 0;
  while (p < stream.length) {
    const he = stream.indexOf('\r\n\r\n', p);
    if (he < 0) break;
    out.push({ rlEnd: stream.indexOf('\r\n', p) + 2, headEnd: he + 4 });
    let cl = 0;
    let chunked = false;
    for (const l of stream.subarray(p, he).toString('latin1').split('\r\n').slice(1)) {
      const name = l.slice(0, Math.max(0, l.indexOf(':'))).toLowerCase();
      const value = l.slice(l.indexOf(':') + 1).trim();
      if (name === 'content-length') cl = Number(value);
      if (name === 'transfer-encoding') chunked = value.toLowerCase() === 'chunked';
    }
    let q = he + 4;
    if (!chunked) {
      if (!Number.isSafeInteger(cl)) break;
      p = q + cl;
      continue;
    }
    for (;;) {
      const eol = stream.indexOf('\r\n', q);
      const size = eol < 0 ? NaN : parseInt(stream.subarray(q, eol).toString('latin1'), 16);
      if (!(size >= 0)) return out;
      q = eol + 2;
      if (size > 0) {
        q += size + 2;
        continue;
      }
      for (;;) {
        const e = stream.indexOf('\r\n', q);
        if (e < 0) return out;
        const empty = e === q;
        q = e + 2;
        if (empty) break;
      }
      break;
    }
    p = q;
  }
  return out;
}

/** A small seeded PRNG (mulberry32), so a failing split can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
/** Piece lengths that cut `total` bytes at random places, each piece 1..max bytes. */
export function randomPieces(total: number, max: number, rnd: () => number): number[] {
  const out: number[] = [];
  for (let left = total; left > 0; ) {
    const n = Math.min(left, 1 + Math.floor(rnd() * max));
    out.push(n);
    left -= n;
  }
  return out;
}
