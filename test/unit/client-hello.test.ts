import { beforeAll, describe, expect, it } from 'vitest';
import {
  MAX_CLIENT_HELLO_BYTES,
  MAX_CLIENT_HELLO_RECORDS,
  normalizeHostName,
  parseClientHello,
  type ClientHelloResult,
} from '../../controller/tls/client-hello.js';
import {
  alpnExtension,
  captureClientHello,
  extension,
  handshakeBytes,
  sniExtension,
  syntheticHello,
  toRecords,
  u16,
} from '../support/client-hello.js';

function expectOk(result: ClientHelloResult): Extract<ClientHelloResult, { status: 'ok' }> {
  if (result.status !== 'ok') throw new Error(`expected ok, got ${JSON.stringify(result)}`);
  return result;
}

function expectInvalid(result: ClientHelloResult, reason?: RegExp): void {
  expect(result.status).toBe('invalid');
  if (reason && result.status === 'invalid') expect(result.reason).toMatch(reason);
}

/** Offset of a byte sequence inside a buffer, failing loudly when absent. */
function offsetOf(haystack: Buffer, needle: Buffer | string): number {
  const at = haystack.indexOf(needle);
  if (at < 0) throw new Error('needle not found');
  return at;
}

let withSni: Buffer;
let withoutSni: Buffer;

beforeAll(async () => {
  withSni = await captureClientHello({ servername: 'api.example.test', ALPNProtocols: ['http/1.1'] });
  withoutSni = await captureClientHello({});
});

describe('parseClientHello on real Node ClientHellos', () => {
  it('returns SNI, ALPN and the hello length from a whole buffer', () => {
    const r = expectOk(parseClientHello(withSni));
    expect(r.serverName).toBe('api.example.test');
    expect(r.alpn).toEqual(['http/1.1']);
    expect(r.bytesNeeded).toBe(withSni.length);
  });

  it('reports no server name when the client connects to an IP', () => {
    const r = expectOk(parseClientHello(withoutSni));
    expect(r.serverName).toBeUndefined();
    expect(r.alpn).toEqual([]);
    expect(r.bytesNeeded).toBe(withoutSni.length);
  });

  it('says incomplete for every proper prefix when fed byte by byte', () => {
    for (let i = 0; i < withSni.length; i++) {
      expect(parseClientHello(withSni.subarray(0, i)).status, `prefix ${i}`).toBe('incomplete');
    }
    expect(expectOk(parseClientHello(withSni)).serverName).toBe('api.example.test');
  });

  it('reassembles a hello re-fragmented into several records', () => {
    const handshake = handshakeBytes(withSni);
    const splits = [[1], [2, 2, 500], [3, 7], [4, 100], [50], [handshake.length - 1, 1]];
    for (const sizes of splits) {
      const records = toRecords(handshake, sizes);
      expect(records.length).toBeGreaterThan(withSni.length);
      const r = expectOk(parseClientHello(records));
      expect(r.serverName).toBe('api.example.test');
      expect(r.alpn).toEqual(['http/1.1']);
      expect(r.bytesNeeded).toBe(records.length);
    }
  });

  it('reassembles a fragmented hello fed byte by byte', () => {
    const records = toRecords(handshakeBytes(withSni), [3, 40, 17]);
    for (let i = 0; i < records.length; i++) {
      expect(parseClientHello(records.subarray(0, i)).status, `prefix ${i}`).toBe('incomplete');
    }
    expect(expectOk(parseClientHello(records)).bytesNeeded).toBe(records.length);
  });

  it('leaves bytes after the hello to the caller', () => {
    const ccs = Buffer.from([0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
    const r = expectOk(parseClientHello(Buffer.concat([withSni, ccs])));
    expect(r.bytesNeeded).toBe(withSni.length);
  });

  it('never throws on mutated input', () => {
    // A fixed-seed PRNG keeps failures reproducible.
    let seed = 0x2545f491;
    const rand = (n: number): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const statuses = new Set<string>();
    for (let i = 0; i < 5000; i++) {
      const mutated = Buffer.from(withSni);
      const flips = 1 + rand(4);
      for (let j = 0; j < flips; j++) mutated[rand(mutated.length)] = rand(256);
      const cut = rand(4) === 0 ? rand(mutated.length) : mutated.length;
      const r = parseClientHello(mutated.subarray(0, cut));
      statuses.add(r.status);
      if (r.status === 'ok') {
        expect(r.bytesNeeded).toBeLessThanOrEqual(cut);
        if (r.serverName !== undefined) expect(normalizeHostName(r.serverName)).toBe(r.serverName);
      }
    }
    expect([...statuses]).toContain('invalid');
  });
});

describe('parseClientHello on non-TLS and broken input', () => {
  it('recognises plaintext protocols as not TLS', () => {
    expect(parseClientHello(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')).status).toBe('not-tls');
    expect(parseClientHello(Buffer.from('G')).status).toBe('not-tls');
    expect(parseClientHello(Buffer.from('SSH-2.0-OpenSSH_9.6\r\n')).status).toBe('not-tls');
    expect(parseClientHello(Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])).status).toBe('not-tls');
    expect(parseClientHello(Buffer.from([0x16, 0x01])).status).toBe('not-tls');
  });

  it('needs more bytes for an empty or tiny buffer', () => {
    expect(parseClientHello(Buffer.alloc(0)).status).toBe('incomplete');
    expect(parseClientHello(Buffer.from([0x16])).status).toBe('incomplete');
    expect(parseClientHello(Buffer.from([0x16, 0x03, 0x01])).status).toBe('incomplete');
  });

  it('rejects garbage inside a handshake record', () => {
    const garbage = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x00, 0x08]), Buffer.from('deadbeef')]);
    expectInvalid(parseClientHello(garbage), /not ClientHello/);
  });

  it('rejects a handshake message that is not a ClientHello', () => {
    const hello = syntheticHello([sniExtension('a.example')]);
    hello[0] = 0x02;
    expectInvalid(parseClientHello(toRecords(hello)), /type 2/);
  });

  it('rejects zero-length and oversized records', () => {
    expectInvalid(parseClientHello(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00])), /empty/);
    expectInvalid(parseClientHello(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x01])), /exceeds 16384/);
  });

  it('rejects a different record type before the hello is complete', () => {
    const records = toRecords(handshakeBytes(withSni), [100]);
    const first = records.subarray(0, 105);
    const alert = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    expectInvalid(parseClientHello(Buffer.concat([first, alert])), /non-handshake/);
    expectInvalid(parseClientHello(Buffer.concat([first, alert.subarray(0, 1)])), /non-handshake/);
  });
});

describe('parseClientHello with lying length fields', () => {
  const good = syntheticHello([sniExtension('api.example.test'), alpnExtension('h2', 'http/1.1')]);

  it('parses the synthetic baseline', () => {
    const r = expectOk(parseClientHello(toRecords(good)));
    expect(r.serverName).toBe('api.example.test');
    expect(r.alpn).toEqual(['h2', 'http/1.1']);
  });

  it('judges a record by its declared length before the rest arrives', () => {
    const records = toRecords(good);
    records.writeUInt16BE(records.readUInt16BE(3) + 10, 3);
    expectInvalid(parseClientHello(records), /beyond the end/);
  });

  it('rejects a record that runs past the handshake length', () => {
    const records = Buffer.concat([toRecords(good), Buffer.alloc(1)]);
    records.writeUInt16BE(records.readUInt16BE(3) + 1, 3);
    expectInvalid(parseClientHello(records), /beyond the end/);
  });

  it('waits, then rejects, when the handshake length exceeds the records', () => {
    const hello = Buffer.from(good);
    hello.writeUIntBE(hello.readUIntBE(1, 3) + 20, 1, 3);
    const records = toRecords(hello);
    expect(parseClientHello(records).status).toBe('incomplete');
    const appData = Buffer.from([0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
    expectInvalid(parseClientHello(Buffer.concat([records, appData])), /non-handshake/);
  });

  it('rejects a handshake length too short for a ClientHello', () => {
    const hello = Buffer.from(good.subarray(0, 30));
    hello.writeUIntBE(26, 1, 3);
    expectInvalid(parseClientHello(toRecords(hello)), /too short/);
  });

  it('rejects a session id length that runs past the message', () => {
    const hello = syntheticHello(null, { sessionIdLength: 0 });
    hello[4 + 34] = 200;
    expectInvalid(parseClientHello(toRecords(hello)));
  });

  it('rejects an extensions block length that disagrees with the message', () => {
    const hello = Buffer.from(good);
    const at = 4 + 2 + 32 + 1 + 32 + 2 + 4 + 2;
    hello.writeUInt16BE(hello.readUInt16BE(at) + 1, at);
    expectInvalid(parseClientHello(toRecords(hello)), /past the end/);
    hello.writeUInt16BE(hello.readUInt16BE(at) - 2, at);
    expectInvalid(parseClientHello(toRecords(hello)), /trailing/);
  });

  it('rejects an SNI list length that lies', () => {
    const hello = Buffer.from(good);
    const listAt = offsetOf(hello, Buffer.from('api.example.test')) - 5;
    hello.writeUInt16BE(hello.readUInt16BE(listAt) + 3, listAt);
    expectInvalid(parseClientHello(toRecords(hello)), /server_name_list/);
  });

  it('rejects a host name length that lies', () => {
    const hello = Buffer.from(good);
    const nameLengthAt = offsetOf(hello, Buffer.from('api.example.test')) - 2;
    hello.writeUInt16BE(200, nameLengthAt);
    expectInvalid(parseClientHello(toRecords(hello)), /host_name/);
  });

  it('rejects an ALPN entry length that lies', () => {
    const hello = Buffer.from(good);
    const h2LengthAt = offsetOf(hello, Buffer.from('\x02h2\x08', 'latin1'));
    hello[h2LengthAt] = 40;
    expectInvalid(parseClientHello(toRecords(hello)), /protocol name/);
  });

  it('rejects an extension length that runs past the block', () => {
    const hello = Buffer.from(good);
    const alpnTypeAt = offsetOf(hello, Buffer.from('\x02h2\x08', 'latin1')) - 6;
    hello.writeUInt16BE(0xffff, alpnTypeAt + 2);
    expectInvalid(parseClientHello(toRecords(hello)), /extension 16/);
  });
});

describe('parseClientHello size limit', () => {
  const padding = (n: number): Buffer => extension(21, Buffer.alloc(n));

  it('accepts a large hello fragmented across records under the limit', () => {
    const hello = syntheticHello([sniExtension('big.example'), padding(60_000)]);
    const records = toRecords(hello);
    expect(records.length).toBeLessThanOrEqual(MAX_CLIENT_HELLO_BYTES);
    const r = expectOk(parseClientHello(records));
    expect(r.serverName).toBe('big.example');
    expect(r.bytesNeeded).toBe(records.length);
  });

  it('rejects a hello whose declared length exceeds the limit, before it arrives', () => {
    // 65,521 bytes of message fit under the limit with one header's worth of
    // overhead, but not with the five full records it actually needs.
    const hello = syntheticHello([sniExtension('big.example'), padding(65_420)]);
    expect(hello.length + 5).toBeLessThanOrEqual(MAX_CLIENT_HELLO_BYTES);
    expectInvalid(parseClientHello(toRecords(hello).subarray(0, 9)), /exceeds/);
    const huge = syntheticHello([padding(65_500)]);
    expectInvalid(parseClientHello(toRecords(huge).subarray(0, 9)), /exceeds/);
  });

  it('rejects accumulating past the limit with small records', () => {
    // Small enough that headers add a quarter, few enough to stay under the record cap.
    const hello = syntheticHello([padding(60_000)]);
    const records = toRecords(hello, [16]);
    expect(Math.ceil(hello.length / 16)).toBeLessThan(MAX_CLIENT_HELLO_RECORDS);
    expect(records.length).toBeGreaterThan(MAX_CLIENT_HELLO_BYTES);
    expectInvalid(parseClientHello(records.subarray(0, MAX_CLIENT_HELLO_BYTES)), /exceeds 65536/);
    expectInvalid(parseClientHello(records), /exceeds 65536/);
  });
});

describe('parseClientHello record limit', () => {
  const padding = (n: number): Buffer => extension(21, Buffer.alloc(n));

  it('accepts a hello that ends in the last record allowed', () => {
    const hello = syntheticHello([sniExtension('big.example'), padding(MAX_CLIENT_HELLO_RECORDS - 105)]);
    expect(hello.length).toBe(MAX_CLIENT_HELLO_RECORDS);
    const records = toRecords(hello, [1]);
    expect(expectOk(parseClientHello(records)).bytesNeeded).toBe(records.length);
  });

  it('refuses once that many records have not completed the hello', () => {
    const records = toRecords(syntheticHello([padding(20_000)]), [1]);
    const limit = MAX_CLIENT_HELLO_RECORDS * 6;
    expect(parseClientHello(records.subarray(0, limit - 1)).status).toBe('incomplete');
    expectInvalid(parseClientHello(records.subarray(0, limit)), /not complete after 4096 records/);
    expectInvalid(parseClientHello(records), /not complete after 4096 records/);
  });
});

describe('parseClientHello extension rules', () => {
  const parse = (...extensions: Buffer[]): ClientHelloResult =>
    parseClientHello(toRecords(syntheticHello(extensions)));

  it('accepts a hello without any extensions', () => {
    const r = expectOk(parseClientHello(toRecords(syntheticHello(null))));
    expect(r.serverName).toBeUndefined();
    expect(r.alpn).toEqual([]);
  });

  it('lower-cases the host name', () => {
    expect(expectOk(parse(sniExtension('API.Example.TEST'))).serverName).toBe('api.example.test');
  });

  it('rejects invalid host names', () => {
    for (const name of ['', 'a b.example', 'example.com.', '10.0.0.1', '[::1]', '-a.example', 'a..example', `${'a'.repeat(64)}.example`, 'caf\xe9.example', 'a\0.example']) {
      expectInvalid(parse(sniExtension(name)), /host_name/);
    }
  });

  it('rejects two host names and unknown name types', () => {
    expectInvalid(parse(sniExtension('a.example', 'b.example')), /more than one/);
    const otherType = extension(0, Buffer.concat([u16(4), Buffer.from([1]), u16(1), Buffer.from('x')]));
    expectInvalid(parse(otherType), /not host_name/);
    expectInvalid(parse(extension(0, u16(0))), /empty/);
  });

  it('rejects duplicate extensions', () => {
    expectInvalid(parse(sniExtension('a.example'), sniExtension('a.example')), /duplicate extension 0/);
    expectInvalid(parse(alpnExtension('h2'), alpnExtension('h2')), /duplicate extension 16/);
  });

  it('rejects empty ALPN lists and names', () => {
    expectInvalid(parse(extension(16, u16(0))), /empty/);
    expectInvalid(parse(extension(16, Buffer.concat([u16(1), Buffer.from([0])]))), /empty ALPN/);
  });

  it('keeps non-ASCII ALPN bytes intact', () => {
    expect(expectOk(parse(alpnExtension('\x0a\x0a', 'h2'))).alpn).toEqual(['\x0a\x0a', 'h2']);
  });
});

describe('normalizeHostName', () => {
  it('accepts and lower-cases DNS names', () => {
    expect(normalizeHostName('Api.OpenAI.com')).toBe('api.openai.com');
    expect(normalizeHostName('my_svc.internal')).toBe('my_svc.internal');
    expect(normalizeHostName('xn--caf-dma.example')).toBe('xn--caf-dma.example');
    expect(normalizeHostName('localhost')).toBe('localhost');
  });

  it('refuses what is not a DNS name', () => {
    for (const name of ['', '1.2.3.4', '::1', 'a.b-', '*.example.com', 'a'.repeat(254), 'x.y.']) {
      expect(normalizeHostName(name), name).toBeUndefined();
    }
  });
});

