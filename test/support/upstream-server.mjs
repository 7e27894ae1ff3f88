// A test upstream: an HTTPS server (run inside a test network namespace)
// that records what it received, one JSON line per request on stdout.
// It records a SHA-256 of the Authorization header, never the header, so a
// token cannot reach the test's output through it.
// Like many real APIs it also gives bodies back, the worst case for a
// credential that ends up inside a body: POST /echo answers with the body it
// got and keeps it, and GET /stored returns every body kept so far.
// WebSocket (the `ws` package's server): an upgrade to any path is recorded
// like a request (with `upgrade: "websocket"`), then every message is
// recorded (`ws`: connection number, binary, length, SHA-256) and echoed
// back as it came; GET /ws/refuse answers the upgrade 403 instead of 101.
// Two upgrades give the Authorization they got back, as an upstream that
// reflects the request would: GET /ws/refuse-reflect answers 403 with it in
// a header and in its body, GET /ws/reflect answers 101 with it in a
// header and then closes the connection at once.
// GET /sse/ID streams server-sent events one at a time: the first at once,
// each next one only when GET /sse-next/ID arrives (on any connection), the
// last (`data: end`) after the /sse-next/ID request that passes ?n=N; so
// a client that sees event k before asking for k+1 proves nothing waited.
// A line `sync N` on stdin is answered with {"sync":N} on stdout, after every
// record of a request whose response has started: the test's barrier for
// "everything the upstream has answered so far is recorded".
//
// With --plain it serves plain HTTP (no certificate): the kernel datapath's
// WebSocket tests. There GET /ws/refuse-keep answers the upgrade 403 and
// keeps the connection, reading what comes next on it as HTTP requests.
// usage: node upstream-server.mjs [--cert FILE --key FILE | --plain] [--port 443] [--host 0.0.0.0]
import http from 'node:http';
import https from 'node:https';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import { WebSocketServer } from 'ws';

const { values } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string', default: '443' },
    host: { type: 'string', default: '0.0.0.0' },
    plain: { type: 'boolean', default: false },
  },
});

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
let n = 0;
const stored = [];

const server = (values.plain ? http.createServer : https.createServer)(
  values.plain ? { keepAlive: true } : { cert: readFileSync(values.cert), key: readFileSync(values.key), keepAlive: true },
  (req, res) => {
    const hash = createHash('sha256');
    let bodyLength = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      hash.update(chunk);
      bodyLength += chunk.length;
      chunks.push(chunk);
    });
    req.on('end', () => {
      const auth = [];
      const apiKey = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        if (req.rawHeaders[i].toLowerCase() === 'authorization') auth.push(sha256(req.rawHeaders[i + 1]));
        if (req.rawHeaders[i].toLowerCase() === 'x-api-key') apiKey.push(sha256(req.rawHeaders[i + 1]));
      }
      n += 1;
      const record = {
        n,
        method: req.method,
        url: req.url,
        host: req.headers.host,
        servername: req.socket.servername,
        authorization: auth,
        apiKey,
        headerNames: req.rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase()),
        remoteAddress: req.socket.remoteAddress,
        remotePort: req.socket.remotePort,
        bodyLength,
        bodySha256: hash.digest('hex'),
      };
      process.stdout.write(`${JSON.stringify(record)}\n`);
      // GET /redirect/HOST: a redirect to https://HOST/landed, as an API might send a client elsewhere.
      const redirect = /^\/redirect\/([a-z0-9.-]+)$/.exec(req.url);
      if (redirect) {
        res.writeHead(302, { location: `https://${redirect[1]}/landed`, 'content-length': 0 });
        return res.end();
      }
      const sse = /^\/sse\/([a-z0-9-]+)$/.exec(req.url);
      if (sse) return startEvents(sse[1], res);
      const next = /^\/sse-next\/([a-z0-9-]+)(?:\?n=(\d+))?$/.exec(req.url);
      if (next) return nextEvent(next[1], next[2] !== undefined ? Number(next[2]) : undefined, res);
      const timed = /^\/sse-timed\/(\d+)\/(\d+)$/.exec(req.url);
      if (timed) return timedEvents(res, Number(timed[1]), Number(timed[2]));
      const bytes = /^\/bytes\/(\d+)(?:\?close=(length|eof))?$/.exec(req.url);
      if (bytes) return sendBytes(res, Number(bytes[1]), bytes[2]);
      const reflect = /^\/reflect(?:\?split=mid)?$/.exec(req.url);
      if (reflect) return reflectHeaders(req, res, req.url.endsWith('split=mid'));
      if (req.url === '/echo' || req.url === '/stored') {
        if (req.url === '/echo') stored.push(Buffer.concat(chunks));
        const echoed = req.url === '/echo' ? Buffer.concat(chunks) : Buffer.concat(stored);
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': echoed.length });
        return res.end(echoed);
      }
      const body = JSON.stringify({ ok: true, n, path: req.url });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  },
);
// GET or POST /reflect answers with the request's headers as JSON, as debug
// endpoints do (the credential among them), and the Authorization or
// X-Api-Key value again in an X-Reflected header. With ?split=mid the body
// goes chunked, in two writes cut inside the credential's value; a request
// that accepts gzip gets the body gzip-coded.
function reflectHeaders(req, res, mid) {
  const body = Buffer.from(JSON.stringify({ headers: req.rawHeaders }));
  const value = req.headers.authorization ?? req.headers['x-api-key'] ?? '';
  const headers = { 'content-type': 'application/json', 'x-reflected': value };
  if (/\bgzip\b/.test(req.headers['accept-encoding'] ?? '')) {
    const coded = gzipSync(body);
    res.writeHead(200, { ...headers, 'content-encoding': 'gzip', 'content-length': coded.length });
    return res.end(coded);
  }
  if (!mid) {
    res.writeHead(200, { ...headers, 'content-length': body.length });
    return res.end(body);
  }
  const at = value ? body.indexOf(value.slice(-12)) + 5 : body.length >> 1;
  res.writeHead(200, headers);
  res.write(body.subarray(0, at));
  setImmediate(() => res.end(body.subarray(at)));
}

// GET /sse-timed/COUNT/GAP_MS (for bench/): COUNT events GAP_MS apart, the
// first at once, each stamped with the wall-clock time (ms, fractional) it
// was written, so a reader on the same host can tell how long it took.
function timedEvents(res, count, gap) {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  let k = 0;
  const send = () => {
    k += 1;
    res.write(`data: {"n":${k},"t":${performance.timeOrigin + performance.now()}}\n\n`);
    if (k >= count) return res.end();
    setTimeout(send, gap);
  };
  send();
}

const streams = new Map();
function startEvents(id, res) {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  const stream = { res, sent: 0 };
  streams.set(id, stream);
  res.once('close', () => streams.delete(id));
  sendEvent(stream);
}
function sendEvent(stream) {
  stream.sent += 1;
  stream.res.write(`id: ${stream.sent}\nevent: token\ndata: {"n":${stream.sent}}\n\n`);
}
function nextEvent(id, last, res) {
  const stream = streams.get(id);
  if (!stream) {
    res.writeHead(404, { 'content-length': 0 });
    return res.end();
  }
  if (last !== undefined && stream.sent >= last) {
    stream.res.end('event: done\ndata: end\n\n');
  } else {
    sendEvent(stream);
  }
  const body = JSON.stringify({ sent: stream.sent });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
let wsConnections = 0;
server.on('upgrade', (req, socket, head) => {
  const auth = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i].toLowerCase() === 'authorization') auth.push(sha256(req.rawHeaders[i + 1]));
  }
  n += 1;
  const conn = ++wsConnections;
  process.stdout.write(`${JSON.stringify({
    n, method: req.method, url: req.url, host: req.headers.host, servername: socket.servername, authorization: auth, apiKey: [],
    headerNames: req.rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase()),
    remoteAddress: socket.remoteAddress, remotePort: socket.remotePort, bodyLength: head.length, bodySha256: sha256(head),
    upgrade: 'websocket', ws: conn,
  })}\n`);
  if (req.url === '/ws/refuse-keep') {
    // Not switching: the connection stays HTTP, and what follows on it is parsed as requests.
    socket.write('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\nforbidden\n');
    if (head.length) socket.unshift(head);
    server.emit('connection', socket);
    return;
  }
  if (req.url === '/ws/refuse') {
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\nforbidden\n');
    return;
  }
  const seen = req.headers.authorization ?? '';
  if (req.url === '/ws/refuse-reflect') {
    const body = `${JSON.stringify({ error: `key not allowed: ${seen}` })}\n`;
    socket.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\nx-seen: ${seen}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    return;
  }
  if (req.url === '/ws/reflect') {
    wss.once('headers', (headers) => headers.push(`x-seen: ${seen}`));
    wss.handleUpgrade(req, socket, head, (ws) => ws.terminate());
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (data, isBinary) => {
      process.stdout.write(`${JSON.stringify({ wsMessage: conn, binary: isBinary, length: data.length, sha256: sha256(data) })}\n`);
      ws.send(data, { binary: isBinary });
    });
  });
});

// GET /bytes/N: N pseudo-random bytes, streamed, with their SHA-256 in a header.
// GET /bytes/N: N bytes, chunked; ?close=length: with Content-Length and
// Connection: close; ?close=eof: delimited by closing the connection.
function sendBytes(res, total, close) {
  const block = createHash('sha256').update('wirekey').digest();
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i += block.length) block.copy(chunk, i);
  const digest = createHash('sha256');
  for (let sent = 0; sent < total; sent += chunk.length) digest.update(chunk.subarray(0, Math.min(chunk.length, total - sent)));
  const headers = { 'content-type': 'application/octet-stream', 'x-body-sha256': digest.digest('hex') };
  if (close) headers.connection = 'close';
  if (close === 'length') headers['content-length'] = total;
  if (close === 'eof') res.useChunkedEncodingByDefault = false;
  res.writeHead(200, headers);
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const part = chunk.subarray(0, Math.min(chunk.length, total - sent));
      sent += part.length;
      if (!res.write(part)) return res.once('drain', pump);
    }
    res.end();
  };
  pump();
}

server.listen(Number(values.port), values.host, () => process.stdout.write(`${JSON.stringify({ listening: true })}\n`));
// Records are written before their response, and stdout is one ordered stream.
createInterface({ input: process.stdin }).on('line', (line) => {
  const m = /^sync (\d+)$/.exec(line);
  if (m) process.stdout.write(`${JSON.stringify({ sync: Number(m[1]) })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
