import { isDeepStrictEqual } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  MAX_CLIENT_HELLO_BYTES,
  MAX_CLIENT_HELLO_RECORDS,
  normalizeHostName,
  parseClientHello,
  type ClientHelloResult,
} from '../../controller/tls/client-hello.js';
import { ClientHelloReader } from '../../controller/tls/client-hello-reader.js';
import {
  alpnExtension,
  captureClientHello,
  extension,
  handshakeBytes,
  seededRandom,
  sniExtension,
  syntheticHello,
  toRecords,
} from '../support/client-hello.js';

const rand = seededRandom(0x5eed1e55);
const pick = <T>(items: readonly T[]): T => items[rand(items.length)]!;

function randomLabel(): string {
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const length = 1 + rand(rand(4) === 0 ? 63 : 12);
  let label = '';
  for (let i = 0; i < length; i++) label += chars[rand(chars.length)];
  return label;
}

function randomHostName(): string {
  const labels = Array.from({ length: 1 + rand(4) }, randomLabel);
  // A fixed top-level label: an all-digit one would make the name an IPv4 literal.
  labels.push(pick(['example', 'test', 'internal']));
  return labels.join('.');
}

function randomAlpn(): string[] {
  const known = ['h2', 'http/1.1', 'http/1.0', 'spdy/3.1', 'acme-tls/1'];
  return Array.from({ length: rand(4) }, () => (rand(3) === 0 ? randomLabel() : pick(known)));
}

/** Wraps handshake bytes into records of random sizes: often 1 byte, sometimes mixed, sometimes few. */
function randomRecords(handshake: Buffer): Buffer {
  switch (rand(4)) {
    case 0:
      return toRecords(handshake, [1]);
    case 1:
      return toRecords(handshake, Array.from({ length: handshake.length }, () => 1 + rand(40)));
    case 2:
      return toRecords(handshake, [1 + rand(Math.min(handshake.length, 1 << 14))]);
    default:
      return toRecords(handshake);
  }
}

/** Chunk boundaries for a stream: often 1 byte per chunk, sometimes a few bytes, sometimes all at once. */
function randomChunkEnds(length: number): number[] {
  const mode = rand(4);
  const ends: number[] = [];
  for (let end = 0; end < length; ) {
    end += mode === 0 ? 1 : mode === 1 ? 1 + rand(16) : mode === 2 ? 1 + rand(2000) : length;
    ends.push(Math.min(end, length));
  }
  return ends;
}

/**
 * Pushes a stream in random chunks until the result is final, checking that
 * the reader agrees with the whole-buffer parser on everything pushed so far
 * and hands back exactly those bytes. Checked after every push for short
 * streams, after about 64 of them for long ones (the check itself is not
 * linear), and always at the end.
 */
function feed(stream: Buffer, label: string): { result: ClientHelloResult; received: Buffer } {
  const reader = new ClientHelloReader();
  const ends = randomChunkEnds(stream.length);
  const stride = stream.length <= 2048 ? 1 : Math.ceil(ends.length / 64);
  let start = 0;
  for (const [i, end] of ends.entries()) {
    const result = reader.push(stream.subarray(start, end));
    start = end;
    if (result.status === 'incomplete') {
      if (end > MAX_CLIENT_HELLO_BYTES) expect.fail(`${label}: incomplete after ${end} bytes`);
      if (i % stride !== 0) continue;
    }
    // expect() is slow for this many calls; it runs only to report a mismatch.
    const soFar = stream.subarray(0, end);
    if (!reader.received.equals(soFar)) expect(reader.received, `${label}: received bytes`).toEqual(soFar);
    const reference = parseClientHello(soFar);
    if (!isDeepStrictEqual(result, reference)) expect(result, `${label}: after ${end} bytes`).toEqual(reference);
    if (result.status !== 'incomplete') break;
  }
  expect(reader.received.equals(stream.subarray(0, start)), `${label}: received bytes`).toBe(true);
  return { result: reader.result, received: reader.received };
}

interface Sample {
  handshake: Buffer;
  serverName: string | undefined;
  alpn: string[];
}

/** Captured from Node's TLS client first, then synthetic ones. */
let samples: Sample[];
const REAL_SAMPLES = 16;

beforeAll(async () => {
  samples = [];
  for (let i = 0; i < REAL_SAMPLES; i++) {
    const serverName = i % 5 === 4 ? undefined : randomHostName();
    const alpn = randomAlpn();
    // Upper case exercises lower-casing; Node sends the name as given.
    const sent = serverName && rand(2) === 0 ? serverName.toUpperCase() : serverName;
    const records = await captureClientHello({
      ...(sent ? { servername: sent } : {}),
      ...(alpn.length ? { ALPNProtocols: alpn } : {}),
    });
    samples.push({ handshake: handshakeBytes(records), serverName, alpn });
  }
  // Synthetic ones too, up to sizes that need more than one full record.
  for (const size of [0, 3000, 20_000, 40_000]) {
    const serverName = randomHostName();
    const alpn = ['h2', 'http/1.1'];
    const handshake = syntheticHello([sniExtension(serverName), alpnExtension(...alpn), extension(21, Buffer.alloc(size))]);
    samples.push({ handshake, serverName, alpn });
  }
});

describe('ClientHelloReader agrees with parseClientHello', () => {
  it('on valid hellos in random records and random chunks, prefix by prefix', () => {
    for (let trial = 0; trial < 400; trial++) {
      const sample = pick(samples);
      const records = randomRecords(sample.handshake);
      // What follows the hello (a ChangeCipherSpec, early data) must be handed back, not judged.
      const trailer = rand(3) === 0 ? Buffer.from([0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17]) : Buffer.alloc(0);
      const stream = Buffer.concat([records, trailer]);
      const label = `trial ${trial}: ${records.length} bytes of records`;
      const { result, received } = feed(stream, label);

      const recordCount = (records.length - sample.handshake.length) / 5;
      if (records.length <= MAX_CLIENT_HELLO_BYTES && recordCount <= MAX_CLIENT_HELLO_RECORDS) {
        expect(result, label).toEqual({ status: 'ok', serverName: sample.serverName, alpn: sample.alpn, bytesNeeded: records.length });
        expect(received.subarray(0, records.length).equals(records), label).toBe(true);
      } else {
        expect(result.status, label).toBe('invalid');
      }
    }
  });

  it('on a real hello in 1-byte records fed 1 byte at a time', () => {
    const sample = samples[0]!;
    const records = toRecords(sample.handshake, [1]);
    const reader = new ClientHelloReader();
    for (let i = 0; i < records.length; i++) {
      expect(reader.push(records.subarray(i, i + 1)), `byte ${i}`).toEqual(parseClientHello(records.subarray(0, i + 1)));
    }
    expect(reader.result).toEqual({ status: 'ok', serverName: sample.serverName, alpn: sample.alpn, bytesNeeded: records.length });
  });

  it('at the byte cap, deciding when a record ends that no header can follow', () => {
    // The largest hello allowed, in records that end 1 byte short of the cap
    // with 1 handshake byte still to come.
    const hello = syntheticHello([extension(21, Buffer.alloc(65_516 - 85))]);
    expect(hello.length).toBe(65_516);
    const records = toRecords(hello, [16_384, 16_384, 16_384, 16_363, 1]);
    const ends = 4 * 5 + 16_384 * 3 + 16_363;
    expect(ends).toBe(MAX_CLIENT_HELLO_BYTES - 1);
    const refused = { status: 'invalid', reason: `ClientHello exceeds ${MAX_CLIENT_HELLO_BYTES} bytes` };
    expect(parseClientHello(records.subarray(0, ends))).toEqual(refused);
    expect(parseClientHello(records)).toEqual(refused);
    const reader = new ClientHelloReader();
    expect(reader.push(records.subarray(0, ends - 1)).status).toBe('incomplete');
    expect(reader.push(records.subarray(ends - 1, ends + 2))).toEqual(refused);
  });

  it('on mutated real hellos in random records and chunks', () => {
    const statuses = new Set<string>();
    for (let trial = 0; trial < 1000; trial++) {
      const stream = Buffer.from(randomRecords(pick(samples.slice(0, REAL_SAMPLES)).handshake));
      for (let flips = 1 + rand(4); flips > 0; flips--) stream[rand(stream.length)] = rand(256);
      const cut = rand(4) === 0 ? rand(stream.length) : stream.length;
      const { result, received } = feed(stream.subarray(0, cut), `mutation ${trial}`);
      statuses.add(result.status);
      if (result.status === 'ok') {
        expect(result.bytesNeeded).toBeLessThanOrEqual(received.length);
        if (result.serverName !== undefined) expect(normalizeHostName(result.serverName)).toBe(result.serverName);
      }
    }
    expect([...statuses]).toEqual(expect.arrayContaining(['incomplete', 'invalid', 'ok']));
  });
});

describe('ClientHelloReader on garbage', () => {
  const randomBytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => rand(256)));

  /** Handshake-looking records with random lengths and contents. */
  function randomRecordsOfGarbage(): Buffer {
    const parts: Buffer[] = [];
    for (let i = 1 + rand(20); i > 0; i--) {
      const length = pick([0, 1, 2, 3, 4, 5, rand(64), rand(0x10000)]);
      const header = Buffer.from([rand(8) === 0 ? rand(256) : 0x16, rand(8) === 0 ? rand(256) : 0x03, rand(4), 0, 0]);
      header.writeUInt16BE(length, 3);
      const body = randomBytes(Math.min(length, 1 + rand(300)));
      if (i === 1 || rand(2) === 0) body[0] = 0x01;
      parts.push(header, body);
    }
    return Buffer.concat(parts);
  }

  it('never throws, never says ok, and decides within the caps', () => {
    const statuses = new Set<string>();
    for (let trial = 0; trial < 3000; trial++) {
      const stream =
        trial % 3 === 0 ? randomBytes(rand(400))
        : trial % 3 === 1 ? Buffer.concat([Buffer.from([0x16, 0x03]), randomBytes(rand(400))])
        : randomRecordsOfGarbage();
      const { result } = feed(stream, `garbage ${trial}`);
      expect(result.status).not.toBe('ok');
      statuses.add(result.status);
    }
    expect([...statuses].sort()).toEqual(['incomplete', 'invalid', 'not-tls']);
  });

  it('refuses an endless stream of tiny records at the record cap', () => {
    const header = Buffer.from([0x01, 0x00, 0xff, 0x00]);
    const stream = toRecords(Buffer.concat([header, randomBytes(70_000)]), [1]);
    const reader = new ClientHelloReader();
    let pushed = 0;
    while (reader.result.status === 'incomplete') {
      const size = 1 + rand(8);
      reader.push(stream.subarray(pushed, pushed + size));
      pushed += size;
    }
    expect(reader.result).toEqual({ status: 'invalid', reason: `ClientHello not complete after ${MAX_CLIENT_HELLO_RECORDS} records` });
    expect(pushed).toBeLessThan(MAX_CLIENT_HELLO_RECORDS * 6 + 8);
  });
});

describe('ClientHelloReader use', () => {
  it('keeps its own copy of each chunk', () => {
    const records = toRecords(samples[0]!.handshake);
    const chunk = Buffer.from(records.subarray(0, 10));
    const reader = new ClientHelloReader();
    reader.push(chunk);
    const view = reader.received;
    chunk.fill(0);
    reader.push(records.subarray(10));
    expect(reader.received.equals(records)).toBe(true);
    expect(view.equals(records.subarray(0, 10))).toBe(true);
  });

  it('is incomplete before the first push and after an empty one', () => {
    const reader = new ClientHelloReader();
    expect(reader.result.status).toBe('incomplete');
    expect(reader.push(Buffer.alloc(0)).status).toBe('incomplete');
    expect(reader.received.length).toBe(0);
  });

  it('refuses a push after a final result, so no byte goes unreplayed', () => {
    const reader = new ClientHelloReader();
    expect(reader.push(Buffer.from('GET / HTTP/1.1\r\n')).status).toBe('not-tls');
    expect(() => reader.push(Buffer.from('Host: x\r\n'))).toThrow(/after a final result \(not-tls\)/);
    expect(reader.received.toString()).toBe('GET / HTTP/1.1\r\n');
  });
});

describe('ClientHelloReader work', () => {
  /**
   * Pushes a stream in 1-byte chunks and returns the reader's work per byte
   * pushed. Re-parsing everything on each chunk would make this grow with
   * the stream's length (thousands per byte here); the reader's stays a
   * small constant.
   */
  function workPerByte(stream: Buffer): { result: ClientHelloResult; perByte: number } {
    // Each byte is examined once and copied twice (received, reassembled);
    // buffer growth allocates and copies about three times more.
    const reader = new ClientHelloReader();
    let pushed = 0;
    while (reader.result.status === 'incomplete' && pushed < stream.length) {
      reader.push(stream.subarray(pushed, pushed + 1));
      pushed += 1;
    }
    return { result: reader.result, perByte: reader.work / pushed };
  }

  const padding = (n: number): Buffer => extension(21, Buffer.alloc(n));
  /** Re-parsing the buffered bytes on every chunk would cost about half the stream's length per byte. */
  const LINEAR = 16;

  it('is linear for the most records a hello may use, one byte per record', () => {
    const hello = syntheticHello([sniExtension('a.example'), padding(MAX_CLIENT_HELLO_RECORDS - 103)]);
    expect(hello.length).toBe(MAX_CLIENT_HELLO_RECORDS);
    const { result, perByte } = workPerByte(toRecords(hello, [1]));
    expect(result.status).toBe('ok');
    expect(perByte).toBeLessThan(LINEAR);
  });

  it('is linear for a 16 KiB hello in one record, one byte per chunk', () => {
    const hello = syntheticHello([sniExtension('a.example'), padding(16_000)]);
    const { result, perByte } = workPerByte(toRecords(hello));
    expect(result.status).toBe('ok');
    expect(perByte).toBeLessThan(LINEAR);
  });

  it('is linear up to the record cap and up to the byte cap', () => {
    const big = syntheticHello([padding(60_000)]);
    const tiny = workPerByte(toRecords(big, [1]));
    expect(tiny.result).toMatchObject({ status: 'invalid', reason: expect.stringMatching(/4096 records/) });
    expect(tiny.perByte).toBeLessThan(LINEAR);
    const small = workPerByte(toRecords(big, [16]));
    expect(small.result).toMatchObject({ status: 'invalid', reason: expect.stringMatching(/exceeds 65536/) });
    expect(small.perByte).toBeLessThan(LINEAR);
  });

  it('does the same work per byte for a stream twice as long', () => {
    const short = workPerByte(toRecords(syntheticHello([padding(1000)]), [1]));
    const long = workPerByte(toRecords(syntheticHello([padding(2100)]), [1]));
    expect(short.result.status).toBe('ok');
    expect(long.result.status).toBe('ok');
    expect(long.perByte / short.perByte).toBeLessThan(1.25);
  });
});
