/**
 * Peeks at the first bytes of a redirected connection to learn which host the
 * workload meant to reach (SNI) and which protocols it offers (ALPN), before
 * the proxy picks a leaf certificate and hands the socket to Node's TLS stack.
 *
 * The input is attacker-influenced (any workload can send anything), so this
 * parser is pure, never reads outside a length it has checked, and bounds how
 * much it will ever look at.
 */

/**
 * The most bytes (records plus headers) a ClientHello may occupy. Real
 * hellos, even with post-quantum key shares, are a few KiB; anything bigger is
 * refused rather than buffered.
 */
export const MAX_CLIENT_HELLO_BYTES = 64 * 1024;

/**
 * The most handshake records a ClientHello may be spread over. Clients send
 * one record, or a few when the hello outgrows 16 KiB or a tool splits it to
 * get past middleboxes. 4096 still admits a 4 KiB hello sent one byte per
 * record, and refuses by name the streams of tiny records that would
 * otherwise only stop at {@link MAX_CLIENT_HELLO_BYTES}.
 */
export const MAX_CLIENT_HELLO_RECORDS = 4096;

export type ClientHelloResult =
  | { status: 'incomplete' }
  | { status: 'not-tls' }
  | { status: 'invalid'; reason: string }
  | {
      status: 'ok';
      /** The SNI host_name, lower-cased; undefined when the client sent none. */
      serverName: string | undefined;
      /**
       * ALPN protocol names in the client's order, decoded as latin1 so every
       * byte survives (GREASE values are not ASCII); empty when none offered.
       */
      alpn: string[];
      /**
       * How many bytes at the start of the buffer make up the records that
       * carry the ClientHello. Anything after them belongs to the TLS stream
       * that follows (e.g. early data) and must be kept, not dropped.
       */
      bytesNeeded: number;
    };

const CONTENT_TYPE_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const RECORD_HEADER_BYTES = 5;
const HANDSHAKE_HEADER_BYTES = 4;
/** RFC 8446 5.1: a plaintext record fragment never exceeds 2^14 bytes. */
const MAX_FRAGMENT_BYTES = 1 << 14;
/** version(2) + random(32) + session_id len(1) + suites len(2) + one suite(2) + compression len(1) + one method(1). */
const MIN_CLIENT_HELLO_BODY_BYTES = 41;
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const SNI_HOST_NAME = 0;

const INCOMPLETE: ClientHelloResult = Object.freeze({ status: 'incomplete' });
const NOT_TLS: ClientHelloResult = Object.freeze({ status: 'not-tls' });

function invalid(reason: string): ClientHelloResult {
  return { status: 'invalid', reason };
}

/** Thrown inside the body parser only; turned into an 'invalid' result. */
class MalformedHello extends Error {}

/**
 * A cursor over one length-delimited region. Every read checks the bytes are
 * there first, so a lying length field becomes MalformedHello, never an
 * out-of-bounds read or a silently short slice.
 */
class Reader {
  private pos: number;

  constructor(
    private readonly buf: Buffer,
    start: number,
    private readonly end: number,
    private readonly what: string,
  ) {
    this.pos = start;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) {
      throw new MalformedHello(`${field} runs past the end of ${this.what}`);
    }
  }

  u8(field: string): number {
    this.need(1, field);
    const v = this.buf.readUInt8(this.pos);
    this.pos += 1;
    return v;
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  skip(n: number, field: string): void {
    this.need(n, field);
    this.pos += n;
  }

  /** A sub-reader over the next n bytes; this reader moves past them. */
  sub(n: number, field: string): Reader {
    this.need(n, field);
    const r = new Reader(this.buf, this.pos, this.pos + n, field);
    this.pos += n;
    return r;
  }

  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  expectEnd(): void {
    if (this.remaining !== 0) {
      throw new MalformedHello(`${this.remaining} unexpected trailing byte(s) in ${this.what}`);
    }
  }
}

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * Validates and canonicalises a DNS host name as SNI carries it (RFC 6066 3:
 * ASCII, no trailing dot, not an IP literal): lower-cased LDH labels of 1-63
 * characters, at most 253 characters in all. Underscores are tolerated
 * because real internal names use them. Returns undefined when the name is
 * not acceptable, so callers cannot mistake a rejected name for a usable one.
 */
export function normalizeHostName(name: string): string | undefined {
  if (name.length === 0 || name.length > 253) return undefined;
  if (/[^\x21-\x7e]/.test(name)) return undefined;
  const lower = name.toLowerCase();
  const labels = lower.split('.');
  for (const label of labels) {
    if (!LABEL.test(label)) return undefined;
  }
  // An all-numeric last label reads as an IPv4 literal to URL parsers and
  // resolvers; no real TLD is numeric, so refusing it removes the ambiguity.
  const last = labels[labels.length - 1];
  if (last === undefined || /^[0-9]+$/.test(last)) return undefined;
  return lower;
}

/**
 * Parses the ClientHello at the start of `buf`, a whole buffer: the bytes
 * received on a connection so far. To read a hello as it arrives, use
 * ClientHelloReader (client-hello-reader.ts): calling this again on every
 * chunk re-walks every record each time, which is quadratic in the number of
 * records. This is the reference the reader is tested against: for every
 * prefix of a stream, both give the same answer.
 *
 * Handles a ClientHello fragmented across several handshake records and
 * validates every length field. Refuses (status 'invalid') anything that
 * would need more than {@link MAX_CLIENT_HELLO_BYTES} or
 * {@link MAX_CLIENT_HELLO_RECORDS}, any record or message other than a single
 * ClientHello, duplicate extensions, and SNI that is not exactly one valid
 * DNS host name.
 *
 * Never throws; all outcomes are expressed in the result.
 */
export function parseClientHello(buf: Buffer): ClientHelloResult {
  if (buf.length === 0) return INCOMPLETE;
  // Decide "not TLS" from the first record header alone, so plaintext
  // protocols (HTTP, SSH banners) are told apart from broken TLS.
  if (buf[0] !== CONTENT_TYPE_HANDSHAKE) return NOT_TLS;
  if (buf.length >= 2 && buf[1] !== 0x03) return NOT_TLS;

  // Fragments are kept as views, and only joined once the whole message is
  // present.
  const fragments: Buffer[] = [];
  let handshakeBytes = 0;
  let messageBytes: number | undefined;
  let offset = 0;
  let records = 0;

  for (;;) {
    // A record ended without completing the hello. Whether another may follow
    // is decided here, before any of its bytes, so the answer for a prefix
    // never changes once more bytes arrive.
    if (records === MAX_CLIENT_HELLO_RECORDS) {
      return invalid(`ClientHello not complete after ${MAX_CLIENT_HELLO_RECORDS} records`);
    }
    if (offset + RECORD_HEADER_BYTES > MAX_CLIENT_HELLO_BYTES) {
      return invalid(`ClientHello exceeds ${MAX_CLIENT_HELLO_BYTES} bytes`);
    }
    records += 1;

    const available = buf.length - offset;
    if (available < RECORD_HEADER_BYTES) {
      if (available >= 1 && buf[offset] !== CONTENT_TYPE_HANDSHAKE) {
        return invalid('non-handshake record before the ClientHello was complete');
      }
      if (available >= 2 && buf[offset + 1] !== 0x03) {
        return invalid('record with an unknown protocol version');
      }
      return INCOMPLETE;
    }

    if (buf[offset] !== CONTENT_TYPE_HANDSHAKE) {
      return invalid('non-handshake record before the ClientHello was complete');
    }
    if (buf[offset + 1] !== 0x03) {
      return invalid('record with an unknown protocol version');
    }
    const fragmentLength = buf.readUInt16BE(offset + 3);
    // RFC 8446 5.1: zero-length handshake fragments are forbidden; allowing
    // them would let a peer send unbounded headers without progress.
    if (fragmentLength === 0) return invalid('empty handshake record');
    if (fragmentLength > MAX_FRAGMENT_BYTES) {
      return invalid(`record length ${fragmentLength} exceeds ${MAX_FRAGMENT_BYTES}`);
    }
    const fragmentStart = offset + RECORD_HEADER_BYTES;
    const recordEnd = fragmentStart + fragmentLength;
    if (recordEnd > MAX_CLIENT_HELLO_BYTES) {
      return invalid(`ClientHello exceeds ${MAX_CLIENT_HELLO_BYTES} bytes`);
    }

    const handshakeBytesBefore = handshakeBytes;
    const fragmentEnd = Math.min(recordEnd, buf.length);
    fragments.push(buf.subarray(fragmentStart, fragmentEnd));
    handshakeBytes += fragmentEnd - fragmentStart;

    if (messageBytes === undefined && handshakeBytes >= HANDSHAKE_HEADER_BYTES) {
      const header = firstBytes(fragments, HANDSHAKE_HEADER_BYTES);
      if (header[0] !== HANDSHAKE_CLIENT_HELLO) {
        return invalid(`first handshake message has type ${header[0]}, not ClientHello`);
      }
      const bodyLength = header.readUIntBE(1, 3);
      if (bodyLength < MIN_CLIENT_HELLO_BODY_BYTES) {
        return invalid(`ClientHello length ${bodyLength} is too short`);
      }
      messageBytes = HANDSHAKE_HEADER_BYTES + bodyLength;
      // Refuse now rather than buffer up to the limit: even packed into
      // full-size records the message could not fit.
      const minimumRecords = Math.ceil(messageBytes / MAX_FRAGMENT_BYTES);
      if (messageBytes + minimumRecords * RECORD_HEADER_BYTES > MAX_CLIENT_HELLO_BYTES) {
        return invalid(`ClientHello length ${bodyLength} exceeds ${MAX_CLIENT_HELLO_BYTES} bytes`);
      }
    }
    // A record reaching past the end of the ClientHello would carry a second
    // handshake message, which a client must not send before the server has
    // answered. The declared length suffices to tell, complete or not.
    if (messageBytes !== undefined && handshakeBytesBefore + fragmentLength > messageBytes) {
      return invalid('record carries data beyond the end of the ClientHello');
    }

    if (recordEnd > buf.length) return INCOMPLETE;
    if (messageBytes !== undefined && handshakeBytes === messageBytes) {
      const message = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments, handshakeBytes);
      return parseClientHelloMessage(message, recordEnd);
    }
    offset = recordEnd;
  }
}

/** The first n bytes across fragments whose total length is at least n. */
function firstBytes(fragments: Buffer[], n: number): Buffer {
  const out = Buffer.alloc(n);
  let filled = 0;
  for (const f of fragments) {
    if (filled === n) break;
    filled += f.copy(out, filled, 0, Math.min(f.length, n - filled));
  }
  return out;
}

/**
 * Parses a complete, reassembled handshake message (its 4-byte header
 * included) whose header already says ClientHello. `bytesNeeded` is passed
 * through to an 'ok' result. Shared by parseClientHello and
 * ClientHelloReader, which differ only in how they find the message.
 * Never throws.
 */
export function parseClientHelloMessage(message: Buffer, bytesNeeded: number): ClientHelloResult {
  try {
    const body = new Reader(message, HANDSHAKE_HEADER_BYTES, message.length, 'ClientHello');
    const legacyVersion = body.u16('legacy_version');
    if (legacyVersion >> 8 !== 0x03) {
      throw new MalformedHello(`legacy_version 0x${legacyVersion.toString(16)} is not TLS`);
    }
    body.skip(32, 'random');
    const sessionIdLength = body.u8('legacy_session_id length');
    if (sessionIdLength > 32) throw new MalformedHello('legacy_session_id longer than 32 bytes');
    body.skip(sessionIdLength, 'legacy_session_id');
    const suitesLength = body.u16('cipher_suites length');
    if (suitesLength < 2 || suitesLength % 2 !== 0) {
      throw new MalformedHello(`cipher_suites length ${suitesLength} is invalid`);
    }
    body.skip(suitesLength, 'cipher_suites');
    const compressionLength = body.u8('compression_methods length');
    if (compressionLength < 1) throw new MalformedHello('compression_methods is empty');
    body.skip(compressionLength, 'compression_methods');

    let serverName: string | undefined;
    let alpn: string[] = [];
    // Extensions are optional in TLS 1.0-1.2 hellos: absent means none.
    if (body.remaining > 0) {
      const extensionsLength = body.u16('extensions length');
      const extensions = body.sub(extensionsLength, 'extensions');
      body.expectEnd();
      const seen = new Set<number>();
      while (extensions.remaining > 0) {
        const type = extensions.u16('extension type');
        const length = extensions.u16('extension length');
        const data = extensions.sub(length, `extension ${type}`);
        // RFC 8446 4.2: duplicates are forbidden, and which one a server
        // honours differs between stacks: exactly the ambiguity we refuse.
        if (seen.has(type)) throw new MalformedHello(`duplicate extension ${type}`);
        seen.add(type);
        if (type === EXT_SERVER_NAME) serverName = parseServerName(data);
        else if (type === EXT_ALPN) alpn = parseAlpn(data);
      }
    }
    return { status: 'ok', serverName, alpn, bytesNeeded };
  } catch (err) {
    if (err instanceof MalformedHello) return invalid(err.message);
    throw err;
  }
}

function parseServerName(ext: Reader): string {
  const listLength = ext.u16('server_name_list length');
  const list = ext.sub(listLength, 'server_name_list');
  ext.expectEnd();
  if (list.remaining === 0) throw new MalformedHello('server_name_list is empty');
  // Only host_name is defined, and RFC 6066 allows one name per type: more
  // than one entry can only mean two different names, which is ambiguous.
  const nameType = list.u8('server name type');
  if (nameType !== SNI_HOST_NAME) throw new MalformedHello(`server name type ${nameType} is not host_name`);
  const nameLength = list.u16('host_name length');
  const raw = list.bytes(nameLength, 'host_name');
  if (list.remaining !== 0) throw new MalformedHello('server_name_list holds more than one name');
  for (const byte of raw) {
    if (byte < 0x21 || byte > 0x7e) throw new MalformedHello('host_name is not printable ASCII');
  }
  const name = normalizeHostName(raw.toString('latin1'));
  if (name === undefined) throw new MalformedHello('host_name is not a valid DNS name');
  return name;
}

function parseAlpn(ext: Reader): string[] {
  const listLength = ext.u16('protocol_name_list length');
  const list = ext.sub(listLength, 'protocol_name_list');
  ext.expectEnd();
  if (list.remaining === 0) throw new MalformedHello('protocol_name_list is empty');
  const protocols: string[] = [];
  while (list.remaining > 0) {
    const length = list.u8('protocol name length');
    // RFC 7301 3.1: empty protocol names must not be sent.
    if (length === 0) throw new MalformedHello('empty ALPN protocol name');
    protocols.push(list.bytes(length, 'protocol name').toString('latin1'));
  }
  return protocols;
}
