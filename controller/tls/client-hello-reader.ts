/**
 * Reads the ClientHello of a redirected connection as its bytes arrive, for
 * the proxy to learn SNI and ALPN before it terminates TLS or relays.
 *
 * A client controls how its hello is cut up: into many tiny records, and into
 * one TCP segment per byte. Re-parsing everything received on every chunk is
 * then quadratic, so this reader keeps its place instead: each byte pushed is
 * looked at once and copied at most a constant number of times.
 */

import {
  MAX_CLIENT_HELLO_BYTES,
  MAX_CLIENT_HELLO_RECORDS,
  parseClientHelloMessage,
  type ClientHelloResult,
} from './client-hello.js';

const CONTENT_TYPE_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const RECORD_HEADER_BYTES = 5;
const HANDSHAKE_HEADER_BYTES = 4;
/** RFC 8446 5.1: a plaintext record fragment never exceeds 2^14 bytes. */
const MAX_FRAGMENT_BYTES = 1 << 14;
/** version(2) + random(32) + session_id len(1) + suites len(2) + one suite(2) + compression len(1) + one method(1). */
const MIN_CLIENT_HELLO_BODY_BYTES = 41;

const INCOMPLETE: ClientHelloResult = Object.freeze({ status: 'incomplete' });
const NOT_TLS: ClientHelloResult = Object.freeze({ status: 'not-tls' });

function invalid(reason: string): ClientHelloResult {
  return { status: 'invalid', reason };
}

/**
 * An append-only byte buffer. Capacity at least doubles when it grows, so
 * appending n bytes in any chunking copies O(n) bytes in all; it stops
 * doubling at `ceiling` so a full hello does not cost twice its size.
 * Bytes once appended never change, so views of them stay valid.
 */
class ByteBuffer {
  #buf = Buffer.alloc(0);
  #length = 0;
  /** Bytes allocated or copied so far. */
  work = 0;

  constructor(private readonly ceiling: number) {}

  get length(): number {
    return this.#length;
  }

  /** A view of the bytes appended so far. */
  get bytes(): Buffer {
    return this.#buf.subarray(0, this.#length);
  }

  append(src: Buffer, start: number, end: number): void {
    const needed = this.#length + (end - start);
    if (needed > this.#buf.length) {
      const doubled = Math.min(Math.max(this.#buf.length * 2, 256), this.ceiling);
      const next = Buffer.alloc(Math.max(needed, doubled));
      this.#buf.copy(next, 0, 0, this.#length);
      this.work += next.length + this.#length;
      this.#buf = next;
    }
    src.copy(this.#buf, this.#length, start, end);
    this.work += end - start;
    this.#length = needed;
  }
}

/**
 * Reads one ClientHello from chunks pushed in arrival order, and keeps every
 * byte pushed so the caller can replay them to the TLS stack or the relay.
 *
 * For any split of a stream into chunks, the result after each push equals
 * parseClientHello on everything pushed so far, until that result is final
 * (anything but 'incomplete'). Total work is linear in the bytes pushed.
 * While the result is 'incomplete', {@link received} holds at most
 * MAX_CLIENT_HELLO_BYTES.
 *
 * The proxy's use, with its own deadline around it:
 *
 * ```ts
 * const reader = new ClientHelloReader();
 * socket.on('data', function onData(chunk: Buffer) {
 *   const hello = reader.push(chunk);
 *   if (hello.status === 'incomplete') return;
 *   socket.off('data', onData);
 *   socket.pause();
 *   // 'ok': route on hello.serverName, terminate or relay with reader.received.
 *   // 'not-tls' / 'invalid': relay reader.received unchanged.
 * });
 * ```
 */
export class ClientHelloReader {
  readonly #received = new ByteBuffer(MAX_CLIENT_HELLO_BYTES);
  /** The handshake bytes reassembled from the records' fragments. */
  readonly #handshake = new ByteBuffer(MAX_CLIENT_HELLO_BYTES);
  #result: ClientHelloResult = INCOMPLETE;
  /** Offset in the received bytes of the next byte not looked at yet. */
  #pos = 0;
  /** Offset of the current record's header. */
  #recordStart = 0;
  /** Where the current record's fragment ends; -1 while its header is still arriving. */
  #recordEnd = -1;
  /** Handshake bytes that came before the current record. */
  #handshakeBefore = 0;
  #records = 1;
  /** The ClientHello's length, header included, once its header has arrived. */
  #messageBytes: number | undefined;
  #examined = 0;
  #parsed = 0;

  /**
   * Takes the next chunk received on the connection and returns the result
   * so far; see {@link ClientHelloResult}. Copies the chunk, so the caller
   * may reuse it.
   *
   * @throws Error when called after a final result: the caller should have
   * stopped reading, and the bytes would not be replayed.
   */
  push(chunk: Buffer): ClientHelloResult {
    if (this.#result.status !== 'incomplete') {
      throw new Error(`ClientHelloReader.push after a final result (${this.#result.status})`);
    }
    this.#received.append(chunk, 0, chunk.length);
    this.#result = this.#advance(this.#received.bytes);
    return this.#result;
  }

  /** The result of the last push; 'incomplete' before the first. */
  get result(): ClientHelloResult {
    return this.#result;
  }

  /**
   * Every byte pushed so far, in order: what the TLS stack or the relay must
   * see first. A view that later pushes do not change.
   */
  get received(): Buffer {
    return this.#received.bytes;
  }

  /**
   * Bytes looked at, copied, allocated or parsed so far: a measure of the
   * work done, which stays within a constant factor of the bytes pushed.
   * Exposed for tests.
   */
  get work(): number {
    return this.#examined + this.#parsed + this.#received.work + this.#handshake.work;
  }

  /** Looks at the bytes after #pos, deciding as soon as a byte allows. */
  #advance(buf: Buffer): ClientHelloResult {
    while (this.#pos < buf.length) {
      if (this.#recordEnd < 0) {
        const result = this.#headerByte(buf);
        if (result) return result;
        continue;
      }

      const handshake = this.#handshake;
      const end = Math.min(this.#recordEnd, buf.length);
      handshake.append(buf, this.#pos, end);
      this.#examined += end - this.#pos;
      this.#pos = end;

      if (this.#messageBytes === undefined && handshake.length >= HANDSHAKE_HEADER_BYTES) {
        const result = this.#messageHeader(handshake.bytes);
        if (result) return result;
      }
      if (this.#pos < this.#recordEnd) return INCOMPLETE;

      // The record is complete.
      if (handshake.length === this.#messageBytes) {
        this.#parsed += handshake.length;
        return parseClientHelloMessage(handshake.bytes, this.#recordEnd);
      }
      if (this.#records === MAX_CLIENT_HELLO_RECORDS) {
        return invalid(`ClientHello not complete after ${MAX_CLIENT_HELLO_RECORDS} records`);
      }
      if (this.#recordEnd + RECORD_HEADER_BYTES > MAX_CLIENT_HELLO_BYTES) {
        return invalid(`ClientHello exceeds ${MAX_CLIENT_HELLO_BYTES} bytes`);
      }
      this.#records += 1;
      this.#recordStart = this.#recordEnd;
      this.#recordEnd = -1;
    }
    return INCOMPLETE;
  }

  /** Takes one byte of a record header; returns a final result, if that byte decides one. */
  #headerByte(buf: Buffer): ClientHelloResult | undefined {
    const at = this.#pos - this.#recordStart;
    const byte = buf[this.#pos]!;
    this.#pos += 1;
    this.#examined += 1;
    const first = this.#recordStart === 0;
    // Decide "not TLS" from the first record header alone, so plaintext
    // protocols (HTTP, SSH banners) are told apart from broken TLS.
    if (at === 0 && byte !== CONTENT_TYPE_HANDSHAKE) {
      return first ? NOT_TLS : invalid('non-handshake record before the ClientHello was complete');
    }
    if (at === 1 && byte !== 0x03) {
      return first ? NOT_TLS : invalid('record with an unknown protocol version');
    }
    if (at < RECORD_HEADER_BYTES - 1) return undefined;

    const fragmentLength = buf.readUInt16BE(this.#recordStart + 3);
    // RFC 8446 5.1: zero-length handshake fragments are forbidden; allowing
    // them would let a peer send unbounded headers without progress.
    if (fragmentLength === 0) return invalid('empty handshake record');
    if (fragmentLength > MAX_FRAGMENT_BYTES) {
      return invalid(`record length ${fragmentLength} exceeds ${MAX_FRAGMENT_BYTES}`);
    }
    this.#recordEnd = this.#pos + fragmentLength;
    if (this.#recordEnd > MAX_CLIENT_HELLO_BYTES) {
      return invalid(`ClientHello exceeds ${MAX_CLIENT_HELLO_BYTES} bytes`);
    }
    this.#handshakeBefore = this.#handshake.length;
    return this.#messageBytes === undefined ? undefined : this.#checkRecordFits();
  }

  /** Reads the handshake message header once its 4 bytes are in. */
  #messageHeader(handshake: Buffer): ClientHelloResult | undefined {
    if (handshake[0] !== HANDSHAKE_CLIENT_HELLO) {
      return invalid(`first handshake message has type ${handshake[0]}, not ClientHello`);
    }
    const bodyLength = handshake.readUIntBE(1, 3);
    if (bodyLength < MIN_CLIENT_HELLO_BODY_BYTES) {
      return invalid(`ClientHello length ${bodyLength} is too short`);
    }
    this.#messageBytes = HANDSHAKE_HEADER_BYTES + bodyLength;
    // Refuse now rather than buffer up to the limit: even packed into
    // full-size records the message could not fit.
    const minimumRecords = Math.ceil(this.#messageBytes / MAX_FRAGMENT_BYTES);
    if (this.#messageBytes + minimumRecords * RECORD_HEADER_BYTES > MAX_CLIENT_HELLO_BYTES) {
      return invalid(`ClientHello length ${bodyLength} exceeds ${MAX_CLIENT_HELLO_BYTES} bytes`);
    }
    return this.#checkRecordFits();
  }

  /**
   * A record reaching past the end of the ClientHello would carry a second
   * handshake message, which a client must not send before the server has
   * answered. The declared length suffices to tell, complete or not.
   */
  #checkRecordFits(): ClientHelloResult | undefined {
    const fragmentLength = this.#recordEnd - this.#recordStart - RECORD_HEADER_BYTES;
    if (this.#handshakeBefore + fragmentLength > this.#messageBytes!) {
      return invalid('record carries data beyond the end of the ClientHello');
    }
    return undefined;
  }
}
