// Upstream for bench/http-datapaths: answers every request with 200 and a
// small body, as cheaply as node:http allows, over plain HTTP and HTTPS.
// Run it inside the test network namespace.
//
// It logs nothing per request. It counts, per listener, requests with and
// without an Authorization header, and the peers (remote ports) of the
// connections it accepted, so the bench can tell whether a header really
// arrived and whether a connection came straight from the client's own
// socket or through a proxy.
//
// stdout, one JSON line each:
//   {listening: true}                    once, when both listeners are up
//   {http: Counts, https: Counts}         in answer to "stats" on stdin;
//                                         the counts then start again at zero
// where Counts = {requests, withAuthorization, authorizationSha256: {hash: n},
// remotePorts: [..]}. Authorization values leave this process as SHA-256
// hashes only.
//
// usage: node http-upstream.mjs --cert FILE --key FILE [--http-port 80] [--https-port 443] [--host ::]
import http from 'node:http';
import https from 'node:https';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    'http-port': { type: 'string', default: '80' },
    'https-port': { type: 'string', default: '443' },
    host: { type: 'string', default: '::' },
  },
});
if (!values.cert || !values.key) {
  process.stderr.write('usage: node http-upstream.mjs --cert FILE --key FILE [--http-port 80] [--https-port 443] [--host ::]\n');
  process.exit(2);
}

const BODY = Buffer.from('{"ok":true}\n');
const HEADERS = { 'content-type': 'application/json', 'content-length': String(BODY.length) };

function freshCounts() {
  // Raw values stay in this process; only their hashes are reported.
  return { requests: 0, withAuthorization: 0, authorization: new Map(), remotePorts: new Set() };
}

function listen(server, port, counts) {
  server.keepAliveTimeout = 60_000;
  server.on('connection', (socket) => counts().remotePorts.add(socket.remotePort));
  server.on('request', (req, res) => {
    const c = counts();
    c.requests += 1;
    const auth = req.headers.authorization;
    if (auth !== undefined) {
      c.withAuthorization += 1;
      c.authorization.set(auth, (c.authorization.get(auth) ?? 0) + 1);
    }
    // GETs only here; drain anything else so the connection stays usable.
    req.resume();
    res.writeHead(200, HEADERS);
    res.end(BODY);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(port), values.host, resolve);
  });
}

let plain = freshCounts();
let tls = freshCounts();
const sha256 = (s) => createHash('sha256').update(s).digest('hex');
const report = (c) => ({
  requests: c.requests,
  withAuthorization: c.withAuthorization,
  authorizationSha256: Object.fromEntries([...c.authorization].map(([v, n]) => [sha256(v), n])),
  remotePorts: [...c.remotePorts],
});

await Promise.all([
  listen(http.createServer({ noDelay: true }), values['http-port'], () => plain),
  listen(https.createServer({ cert: readFileSync(values.cert), key: readFileSync(values.key), noDelay: true }), values['https-port'], () => tls),
]);
process.stdout.write(`${JSON.stringify({ listening: true })}\n`);

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() !== 'stats') return;
  process.stdout.write(`${JSON.stringify({ http: report(plain), https: report(tls) })}\n`);
  plain = freshCounts();
  tls = freshCounts();
});
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
