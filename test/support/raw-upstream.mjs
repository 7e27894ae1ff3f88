// A TLS upstream that writes its responses byte by byte as scripted, for
// tests of how the proxy frames what an upstream sends (run inside a test
// network namespace, started with startUpstream() from upstream.ts).
//
// It reads requests with a parser of its own (a head to its empty line, a
// body by Content-Length only) and records each one, one JSON line on
// stdout, like upstream-server.mjs: hashes of Authorization and X-Api-Key,
// never the values, and `conn`, the number of the connection it came on.
// A request with Transfer-Encoding, or a head it cannot read, is recorded
// with `unreadable: true` and its connection closed. Lines with `event`:
// {"event":"partial",conn,url} once a head came whose body has not all come
// yet, {"event":"closed",conn} when a connection closes.
//
// The response depends on the path: /raw/NAME sends RESPONSES[NAME] (a
// function of the connection's socket), anything else a 200 whose body
// names the path and the connection; POST /raw/early is answered 413 as
// soon as its head has come, before its body, and POST /raw/early-chunked
// (chunked) 200 the same way, its body then read and dropped. A GET of /cl0/... is read as
// a server with the "CL.0" bug reads it: without a body, whatever its
// Content-Length (what follows is the next request). After a request with
// Connection: close nothing more is read, and the connection ends. A line `sync N` on stdin is answered
// with {"sync":N} after every record so far.
// usage: node raw-upstream.mjs --cert FILE --key FILE [--port 443] [--host ::]
import tls from 'node:tls';
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
const ok = (body) => `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

/** Scripted responses: each writes to `socket` (and may close it). */
const RESPONSES = {
  // A whole second response after the first one's Content-Length, in the same write.
  extra: (s) => s.write(`${ok('ok')}${ok('evil!')}`),
  'te-cl': (s) => s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n'),
  'te-gzip': (s) => s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello'),
  'switch': (s) => s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!'),
  'bare-lf': (s) => s.write('HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 2\r\n\r\nok'),
  'bare-lf-status': (s) => s.write('HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok'),
  'obs-fold': (s) => s.write('HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok'),
  'big-head': (s) => s.write(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(17 * 1024)}\r\nContent-Length: 2\r\n\r\nok`),
  'double-length': (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nokevil!'),
  'list-length': (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok'),
  'signed-length': (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok'),
  // The head goes out, then a chunk-size that is not hexadecimal.
  'bad-chunk': (s) => s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nevil!\r\n0\r\n\r\n'),
  'chunk-no-crlf': (s) => s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n'),
  // A valid chunked body with an extension and a trailer, in small writes.
  chunked: (s) => {
    for (const part of ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r', '\n3;ext=1\r', '\nabc\r\n', '4\r\nde', 'fg\r\n0\r\nX-Trailer: t\r\n', '\r\n']) s.write(part);
  },
  // Delimited by the close: the whole body, then the end of the connection.
  close: (s) => s.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n${'close-delimited body '.repeat(500)}end`),
  http10: (s) => s.end('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhttp/1.0 body'),
  // Content-Length promises more than comes before the close.
  cut: (s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc'),
  interim: (s) => s.write(`HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n${ok('after interim')}`),
  // For HEAD: a length and no body; anything after would be a second response.
  head: (s) => s.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n'),
  // A complete response, then the connection's end without a word about it.
  fin: (s) => s.end(ok('fin')),
  // For HEAD: a body all the same, in the same write: never a response of its own.
  'head-body': (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!'),
  'no-content': (s) => s.write('HTTP/1.1 204 No Content\r\nX-After: 1\r\n\r\n'),
  // Hop-by-hop headers, and one the upstream's Connection names: none reach the workload.
  hop: (s) => s.write('HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-End: kept\r\nContent-Length: 2\r\n\r\nok'),
};

let n = 0;
/** Where a chunked body starting at `at` ends (its trailer section included), or -1 until it has all come. */
function chunkedLength(buf, at) {
  for (;;) {
    const eol = buf.indexOf('\r\n', at);
    if (eol < 0) return -1;
    const size = parseInt(buf.toString('latin1', at, eol).split(';')[0], 16);
    if (size === 0) {
      const end = buf.indexOf('\r\n\r\n', eol);
      return end < 0 ? -1 : end + 4;
    }
    if (buf.length < eol + 2 + size + 2) return -1;
    at = eol + 2 + size + 2;
  }
}

let conns = 0;
const server = tls.createServer({ cert: readFileSync(values.cert), key: readFileSync(values.key), ALPNProtocols: ['http/1.1'] }, (socket) => {
  const conn = ++conns;
  let buf = Buffer.alloc(0);
  let partial = -1;
  socket.on('error', () => {});
  socket.on('close', () => process.stdout.write(`${JSON.stringify({ event: 'closed', conn })}\n`));
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const lines = buf.toString('latin1', 0, end).split('\r\n');
      const [method, url, version] = (lines[0] ?? '').split(' ');
      const headers = lines.slice(1).map((l) => {
        const i = l.indexOf(':');
        return [l.slice(0, i), l.slice(i + 1).trim()];
      });
      const value = (name) => headers.filter(([h]) => h.toLowerCase() === name).map(([, v]) => v);
      const lengths = value('content-length');
      const record = {
        conn, method, url, host: value('host')[0], servername: socket.servername,
        authorization: value('authorization').map(sha256), apiKey: value('x-api-key').map(sha256),
        headerNames: headers.map(([h]) => h.toLowerCase()), remoteAddress: socket.remoteAddress, remotePort: socket.remotePort,
      };
      // POST /raw/early-chunked: answered 200 as soon as its head has come; its chunked body is then read and dropped.
      if (url === '/raw/early-chunked' && value('transfer-encoding').join(',').toLowerCase() === 'chunked' && !lengths.length) {
        if (partial !== end) {
          process.stdout.write(`${JSON.stringify({ event: 'partial', conn, url })}\n`);
          socket.write(ok(JSON.stringify({ path: url, conn })));
          partial = end;
        }
        const used = chunkedLength(buf, end + 4);
        if (used < 0) return;
        partial = -1;
        buf = buf.subarray(used);
        process.stdout.write(`${JSON.stringify({ n: ++n, ...record, chunked: true })}\n`);
        continue;
      }
      if (version !== 'HTTP/1.1' || value('transfer-encoding').length || lengths.length > 1 || headers.some(([h]) => !h || /\s/.test(h)) ||
        (lengths.length && !/^\d+$/.test(lengths[0]))) {
        process.stdout.write(`${JSON.stringify({ n: ++n, ...record, unreadable: true })}\n`);
        socket.destroy();
        return;
      }
      // GET /cl0/...: a server with the "CL.0" bug, which reads no body on a GET whatever Content-Length says.
      const length = lengths.length && !(method === 'GET' && url.startsWith('/cl0/')) ? Number(lengths[0]) : 0;
      if (buf.length < end + 4 + length) {
        // A head whose body has not all come: said once, so a test knows the request is under way here.
        if (partial !== end) {
          process.stdout.write(`${JSON.stringify({ event: 'partial', conn, url })}\n`);
          // An answer before the request's body has all come (as a server refusing a large upload does).
          if (url === '/raw/early') socket.write('HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!');
        }
        partial = end;
        return;
      }
      partial = -1;
      const body = buf.subarray(end + 4, end + 4 + length);
      buf = buf.subarray(end + 4 + length);
      process.stdout.write(`${JSON.stringify({ n: ++n, ...record, bodyLength: body.length, bodySha256: sha256(body) })}\n`);
      const scripted = /^\/raw\/([a-z0-9-]+)$/.exec(url);
      const respond = scripted && RESPONSES[scripted[1]];
      if (respond) respond(socket);
      else if (url === '/echo') socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body]));
      else socket.write(ok(JSON.stringify({ path: url, conn })));
      // Connection: close is the last request read on the connection.
      if (value('connection').some((v) => /(^|,)\s*close\s*(,|$)/i.test(v))) {
        buf = Buffer.alloc(0);
        socket.end();
        return;
      }
    }
  });
});
server.listen({ port: Number(values.port), host: values.host }, () => process.stdout.write(`${JSON.stringify({ listening: true })}\n`));

createInterface({ input: process.stdin }).on('line', (line) => {
  const m = /^sync (\d+)$/.exec(line);
  if (m) process.stdout.write(`${JSON.stringify({ sync: Number(m[1]) })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
