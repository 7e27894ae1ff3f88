// A test upstream: an HTTPS server (run inside a test network namespace)
// that records what it received, one JSON line per request on stdout.
// It records a SHA-256 of the Authorization header, never the header, so a
// token cannot reach the test's output through it.
// Like many real APIs it also gives bodies back, the worst case for a
// credential that ends up inside a body: POST /echo answers with the body it
// got and keeps it, and GET /stored returns every body kept so far.
// A line `sync N` on stdin is answered with {"sync":N} on stdout, after every
// record of a request whose response has started: the test's barrier for
// "everything the upstream has answered so far is recorded".
//
// usage: node upstream-server.mjs --cert FILE --key FILE [--port 443] [--host 0.0.0.0]
import https from 'node:https';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string', default: '443' },
    host: { type: 'string', default: '0.0.0.0' },
  },
});

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
let n = 0;
const stored = [];

const server = https.createServer(
  { cert: readFileSync(values.cert), key: readFileSync(values.key), keepAlive: true },
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
      const bytes = /^\/bytes\/(\d+)$/.exec(req.url);
      if (bytes) return sendBytes(res, Number(bytes[1]));
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
// GET /bytes/N: N pseudo-random bytes, streamed, with their SHA-256 in a header.
function sendBytes(res, total) {
  const block = createHash('sha256').update('wirekey').digest();
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i += block.length) block.copy(chunk, i);
  const digest = createHash('sha256');
  for (let sent = 0; sent < total; sent += chunk.length) digest.update(chunk.subarray(0, Math.min(chunk.length, total - sent)));
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-body-sha256': digest.digest('hex') });
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
