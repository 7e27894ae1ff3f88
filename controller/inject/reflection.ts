/**
 * Credential reflection guard: the credential a request carried upstream
 * must not come back to the workload in the response. An upstream that
 * echoes request headers (a debug endpoint, an error page quoting the
 * request, a `/headers` route) would otherwise hand the workload the very
 * value the proxy keeps from it.
 *
 * Every occurrence of an injected value in a response's head field values
 * and in its body (as the workload reads it: the body's content, not its
 * chunk framing) is overwritten with `*`, byte for byte, so that lengths
 * and framing stay true. A body is scanned as a stream: the bytes at the
 * end of what arrived that could begin a value are held back until the
 * next bytes say whether they do (or the body ends), so a value split
 * across reads, TLS records or chunks is found all the same, and nothing
 * is held back when the last bytes cannot begin one.
 *
 * What it cannot see: a body in a content coding (the proxy asks the
 * upstream for `identity` in place of any Accept-Encoding the workload
 * sent; an upstream that compresses anyway is passed through), a value the
 * upstream transformed (re-encoded, escaped other than as JSON escapes it,
 * split by markup), part of a value (an echo cut short, a byte range), and
 * WebSocket messages after the upgrade. The kernel datapath never sees
 * responses at all.
 */

import { Transform, type TransformCallback } from 'node:stream';

/** Values shorter than this are not looked for: masking every occurrence of a few common bytes would corrupt bodies. */
export const MIN_MASKED_BYTES = 8;

/** The byte a reflected value's bytes are replaced with. */
const MASK_BYTE = 0x2a; // '*'

/** The Accept-Encoding the proxy sends upstream in place of the workload's, so that the response can be scanned. */
export const IDENTITY_CODING = 'identity';

/** The values a response must not carry back, as bytes (bodies) and as latin1 text (heads), made once per credential. */
export interface MaskSet {
  readonly bytes: readonly Buffer[];
  readonly texts: readonly string[];
  /** Those of `bytes` a head read as latin1 can hold: the values without a character past U+00FF. */
  readonly headBytes: readonly Buffer[];
  /** The longest value's length: what a body's scanner may hold back, at most, less one. */
  readonly longest: number;
}

/**
 * The spellings worth looking for of `values`: each as it is and as a JSON
 * string holds it (an echo is most often JSON: `"` and `\` escaped, and `/`
 * as `\/` by encoders that escape it), long enough, once each. Undefined
 * when none is long enough.
 */
export function maskedValues(values: readonly string[]): MaskSet | undefined {
  const texts = new Set<string>();
  for (const value of values) {
    const json = JSON.stringify(value).slice(1, -1);
    for (const v of [value, json, json.replaceAll('/', '\\/')]) if (Buffer.byteLength(v, 'latin1') >= MIN_MASKED_BYTES) texts.add(v);
  }
  if (!texts.size) return undefined;
  const list = [...texts];
  const bytes = list.map((t) => Buffer.from(t, 'latin1'));
  const headBytes = bytes.filter((_, i) => !/[^\x00-\xff]/.test(list[i] as string));
  return { bytes, texts: list, headBytes, longest: Math.max(...bytes.map((b) => b.length)) };
}

/**
 * `text` (a head field value, read as latin1) with every occurrence of
 * `values` masked; `text` itself when none occurs (the common case).
 */
export function maskText(text: string, values: MaskSet): string {
  let out = text;
  for (const needle of values.texts) {
    if (!out.includes(needle)) continue;
    out = out.split(needle).join('*'.repeat(needle.length));
  }
  return out;
}

/**
 * Masks raw `[name, value, ...]` header pairs in place; returns how many
 * values it changed. Content-Length is left alone: a number that happens
 * to equal a numeric secret is the body's length, not an echo of it.
 */
export function maskHeaderPairs(raw: string[], values: MaskSet): number {
  let n = 0;
  for (let i = 1; i < raw.length; i += 2) {
    if ((raw[i - 1] as string).toLowerCase() === 'content-length') continue;
    const v = raw[i] as string;
    const m = maskText(v, values);
    if (m !== v) {
      raw[i] = m;
      n++;
    }
  }
  return n;
}

/**
 * One response's mask. text() and pairs() mask its head (status text,
 * fields, trailers); push() takes the body's content bytes in order and
 * returns those that may go to the workload now (masked where a value
 * occurs), holding back what could begin a value; end() returns what was
 * held back once the body is over. `masked` counts what it changed.
 */
export class ResponseMask {
  readonly #set: MaskSet;
  readonly #values: readonly Buffer[];
  /** The values a head can hold, read as latin1: those without a character past U+00FF. */
  readonly #headValues: readonly Buffer[];
  readonly #longest: number;
  /** Bytes held back: a proper prefix of some value, not yet sent. */
  #held: Buffer | undefined;
  /** Head values changed and body occurrences masked so far. */
  masked = 0;

  constructor(values: MaskSet) {
    this.#set = values;
    this.#values = values.bytes;
    this.#headValues = values.headBytes;
    this.#longest = values.longest;
  }

  /** maskText(), counted. */
  text(text: string): string {
    const out = maskText(text, this.#set);
    if (out !== text) this.masked++;
    return out;
  }

  /** Whether a value occurs anywhere in `head` (a head's bytes): if not, no part of it needs maskRange(). */
  occursIn(head: Buffer): boolean {
    for (const v of this.#headValues) if (head.indexOf(v) >= 0) return true;
    return false;
  }

  /**
   * text() on the latin1 bytes buf[from, to), in place: the same bytes
   * masked, counted once if any was.
   */
  maskRange(buf: Buffer, from: number, to: number): void {
    const view = buf.subarray(from, to);
    let changed = false;
    for (const v of this.#headValues) {
      // Left to right, each occurrence after the last one masked, as String#split finds them.
      for (let at = view.indexOf(v); at >= 0; at = view.indexOf(v, at + v.length)) {
        view.fill(MASK_BYTE, at, at + v.length);
        changed = true;
      }
    }
    if (changed) this.masked++;
  }

  /** maskHeaderPairs(), counted; returns `raw`. */
  pairs(raw: string[]): string[] {
    this.masked += maskHeaderPairs(raw, this.#set);
    return raw;
  }

  push(chunk: Buffer): Buffer {
    if (!chunk.length) return chunk;
    // Only the held bytes are copied in front of the chunk; the chunk is
    // copied again only if a value occurs in it (a body from the upstream
    // is never written to: a chunk may be a slice of a buffer still in use).
    let buf = this.#held ? Buffer.concat([this.#held, chunk]) : chunk;
    this.#held = undefined;
    let copied = buf !== chunk;
    for (const v of this.#values) {
      let at = buf.indexOf(v);
      while (at >= 0) {
        if (!copied) {
          buf = Buffer.from(buf);
          copied = true;
        }
        buf.fill(MASK_BYTE, at, at + v.length);
        this.masked++;
        at = buf.indexOf(v, at + v.length);
      }
    }
    const keep = this.#heldBack(buf);
    if (keep === 0) return buf;
    // The held bytes are copied: `buf` may be the upstream's buffer.
    this.#held = Buffer.from(buf.subarray(buf.length - keep));
    return buf.subarray(0, buf.length - keep);
  }

  /** The bytes held back, once the body has ended (they began no value). */
  end(): Buffer | undefined {
    const held = this.#held;
    this.#held = undefined;
    return held;
  }

  /** The length of the longest suffix of `buf` that is a proper prefix of a value. */
  #heldBack(buf: Buffer): number {
    let best = 0;
    const from = Math.max(0, buf.length - this.#longest + 1);
    for (const v of this.#values) {
      const first = v[0] as number;
      // Candidates start where the value's first byte is, the longest first.
      for (let p = Math.max(from, buf.length - v.length + 1); p < buf.length; p++) {
        const n = buf.length - p;
        if (n <= best) break;
        if (buf[p] === first && buf.compare(v, 0, n, p, buf.length) === 0) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}

/** A ResponseMask's body scanner as a stream, for bodies that are piped. */
export class MaskingStream extends Transform {
  readonly mask: ResponseMask;

  constructor(mask: ResponseMask) {
    super();
    this.mask = mask;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    const out = this.mask.push(chunk);
    done(null, out.length ? out : undefined);
  }

  override _flush(done: TransformCallback): void {
    done(null, this.mask.end());
  }
}
