// A test upstream that speaks HTTP/2 only (ALPN h2; a client that cannot is
// refused): run inside a test network namespace, it records what it
// received, one JSON line per request on stdout, like upstream-server.mjs
// (a SHA-256 of the authorization header, never the header).
// A line `sync N` on stdin is answered with {"sync":N} after every record so
// far. Paths:
//   /bytes/N      N bytes, streamed, their SHA-256 in a header
//   /echo         the body back
//   /trailers     a body, then trailers (x-checksum, grpc-status)
//   /hold/NAME    no answer until `release NAME` on stdin; a stream the
//                 client cancels meanwhile is recorded as {"cancelled": path}
//   /goaway       GOAWAY (NO_ERROR) naming the streams before this one only
//
// usage: node h2-upstream-server.mjs --cert FILE --key FILE [--port 443] [--host ::]
import http2 from 'node:http2';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string', default: '443' },
    host: { type: 'string', default: '::' },
  },
});

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
let n = 0;
const held = new Map();

const server = http2.createSecureServer({ cert: readFileSync(values.cert), key: readFileSync(values.key), allowHTTP1: false });
server.on('sessionError', () => {});
server.on('stream', (stream, headers, flags, rawHeaders) => {
  stream.on('error', () => {});
  const path = headers[':path'];
  const hash = createHash('sha256');
  let bodyLength = 0;
  const chunks = [];
  const record = () => {
    const auth = [];
    const apiKey = [];
    const names = [];
    for (let i = 0; i < rawHeaders.length; i += 2) {
      names.push(rawHeaders[i]);
      if (rawHeaders[i] === 'authorization') auth.push(sha256(rawHeaders[i + 1]));
      if (rawHeaders[i] === 'x-api-key') apiKey.push(sha256(rawHeaders[i + 1]));
    }
    n += 1;
    out({
      n,
      protocol: 'h2',
      method: headers[':method'],
      url: path,
      host: headers[':authority'],
      hostHeader: headers.host,
      servername: stream.session.socket.servername,
      authorization: auth,
      apiKey,
      headerNames: names,
      te: headers.te,
      custom: headers['x-custom'],
      remotePort: stream.session.socket.remotePort,
      bodyLength,
      bodySha256: hash.digest('hex'),
    });
  };
  if (path.startsWith('/hold/')) {
    // Recorded at once: the request arrived; its body (if any) is not waited for.
    bodyLength = 0;
    record();
    held.set(path.slice('/hold/'.length), stream);
    stream.on('close', () => {
      if (stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) out({ cancelled: path, rstCode: stream.rstCode });
    });
    return;
  }
  if (path === '/reset') {
    // The request arrived (credential and all); the stream is reset before any response.
    record();
    stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    return;
  }
  if (path === '/goaway') {
    record();
    // Streams up to the one before this stay; this one and later are refused.
    stream.session.goaway(http2.constants.NGHTTP2_NO_ERROR, stream.id - 2);
    return;
  }
  stream.on('data', (chunk) => {
    hash.update(chunk);
    bodyLength += chunk.length;
    if (path === '/echo') chunks.push(chunk);
  });
  stream.on('end', () => {
    record();
    const bytes = /^\/bytes\/(\d+)$/.exec(path);
    if (bytes) return sendBytes(stream, Number(bytes[1]));
    if (path === '/echo') {
      const body = Buffer.concat(chunks);
      stream.respond({ ':status': 200, 'content-type': 'application/octet-stream', 'content-length': body.length });
      return stream.end(body);
    }
    if (path === '/trailers') {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-checksum': 'abc123', 'grpc-status': '0' }));
      return stream.end('body before trailers\n');
    }
    const body = JSON.stringify({ ok: true, n, path, protocol: 'h2' });
    stream.respond({ ':status': 200, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-upstream': 'h2' });
    stream.end(body);
  });
});

function sendBytes(stream, total) {
  const block = createHash('sha256').update('wirekey').digest();
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i += block.length) block.copy(chunk, i);
  const digest = createHash('sha256');
  for (let sent = 0; sent < total; sent += chunk.length) digest.update(chunk.subarray(0, Math.min(chunk.length, total - sent)));
  stream.respond({ ':status': 200, 'content-type': 'application/octet-stream', 'x-body-sha256': digest.digest('hex') });
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const part = chunk.subarray(0, Math.min(chunk.length, total - sent));
      sent += part.length;
      if (!stream.write(part)) return stream.once('drain', pump);
    }
    stream.end();
  };
  pump();
}

server.listen(Number(values.port), values.host, () => out({ listening: true }));
createInterface({ input: process.stdin }).on('line', (line) => {
  const m = /^sync (\d+)$/.exec(line);
  if (m) return out({ sync: Number(m[1]) });
  const r = /^release (\S+)$/.exec(line);
  if (r) {
    const stream = held.get(r[1]);
    held.delete(r[1]);
    if (stream && !stream.closed) {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' });
      stream.end(`released ${r[1]}\n`);
    }
  }
});
process.on('SIGTERM', () => process.exit(0));
