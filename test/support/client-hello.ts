/** Builders of ClientHello bytes for the parser and reader tests: real ones from Node's TLS client, and synthetic ones. */

import net from 'node:net';
import tls from 'node:tls';

/**
 * Captures the bytes a real Node TLS client sends first, using framing that
 * is independent of the parser under test (one complete record).
 */
export async function captureClientHello(options: tls.ConnectionOptions): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      server.once('connection', (socket) => {
        let received = Buffer.alloc(0);
        socket.on('data', (chunk: Buffer) => {
          received = Buffer.concat([received, chunk]);
          if (received.length >= 5 && received.length >= 5 + received.readUInt16BE(3)) {
            socket.destroy();
            resolve(received);
          }
        });
        socket.on('error', reject);
      });
      const client = tls.connect({ host: '127.0.0.1', port, ...options });
      // The server hangs up mid-handshake on purpose.
      client.on('error', () => {});
    });
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

/** The handshake bytes carried by a sequence of complete handshake records. */
export function handshakeBytes(records: Buffer): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  while (offset < records.length) {
    const length = records.readUInt16BE(offset + 3);
    parts.push(records.subarray(offset + 5, offset + 5 + length));
    offset += 5 + length;
  }
  return Buffer.concat(parts);
}

/**
 * Wraps handshake bytes into handshake records whose fragments have the
 * given sizes in turn (the last size repeats until the bytes run out).
 */
export function toRecords(handshake: Buffer, sizes: number[] = [16384]): Buffer {
  const out: Buffer[] = [];
  let offset = 0;
  let i = 0;
  while (offset < handshake.length) {
    const size = Math.min(sizes[Math.min(i, sizes.length - 1)]!, handshake.length - offset);
    const header = Buffer.from([0x16, 0x03, 0x01, 0, 0]);
    header.writeUInt16BE(size, 3);
    out.push(header, handshake.subarray(offset, offset + size));
    offset += size;
    i += 1;
  }
  return Buffer.concat(out);
}

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

export function extension(type: number, data: Buffer): Buffer {
  return Buffer.concat([u16(type), u16(data.length), data]);
}

export function sniExtension(...names: string[]): Buffer {
  const entries = names.map((n) => Buffer.concat([Buffer.from([0]), u16(Buffer.byteLength(n)), Buffer.from(n, 'latin1')]));
  const list = Buffer.concat(entries);
  return extension(0, Buffer.concat([u16(list.length), list]));
}

export function alpnExtension(...protocols: string[]): Buffer {
  const list = Buffer.concat(protocols.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, 'latin1')])));
  return extension(16, Buffer.concat([u16(list.length), list]));
}

/** A syntactically valid ClientHello handshake message (header included). */
export function syntheticHello(extensions: Buffer[] | null, options: { sessionIdLength?: number } = {}): Buffer {
  const sessionId = Buffer.alloc(options.sessionIdLength ?? 32, 0xab);
  const parts = [
    Buffer.from([0x03, 0x03]),
    Buffer.alloc(32, 0x11),
    Buffer.from([sessionId.length]),
    sessionId,
    u16(4),
    Buffer.from([0x13, 0x01, 0x13, 0x02]),
    Buffer.from([1, 0]),
  ];
  if (extensions !== null) {
    const block = Buffer.concat(extensions);
    parts.push(u16(block.length), block);
  }
  const body = Buffer.concat(parts);
  const header = Buffer.from([0x01, 0, 0, 0]);
  header.writeUIntBE(body.length, 1, 3);
  return Buffer.concat([header, body]);
}

/** A fixed-seed PRNG (xorshift32), so a failing random case can be replayed. */
export function seededRandom(seed: number): (n: number) => number {
  let state = seed | 0 || 1;
  return (n: number): number => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
}
