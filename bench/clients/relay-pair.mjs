// What both bench relays (tls-relay.mjs, h1-head-relay.mjs) share: a TLS
// server on loopback whose every connection gets a verified TLS connection
// to the upstream (one upstream session resumed by all, as a proxy would),
// both closed together; `pair(client, upstream, close)` moves the bytes.
//
// Arguments: PORT CERT KEY UPSTREAM_HOST UPSTREAM_PORT SERVERNAME CA, then
// the relay's own (`extra` names them for the usage line).
import { readFileSync } from 'node:fs';
import tls from 'node:tls';

export function startRelay(script, extra, pair) {
  const args = process.argv.slice(2);
  const [port, cert, key, upstreamHost, upstreamPort, servername, ca, ...rest] = args;
  if (!ca || rest.length < extra.length) {
    process.stderr.write(`usage: node ${script} PORT CERT KEY UPSTREAM_HOST UPSTREAM_PORT SERVERNAME CA${extra.map((e) => ` ${e}`).join('')}\n`);
    process.exit(2);
  }
  const upstreamCa = readFileSync(ca);
  let session;
  const server = tls.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (client) => {
    client.setNoDelay(true);
    const upstream = tls.connect({ host: upstreamHost, port: Number(upstreamPort), servername, ca: upstreamCa, session });
    upstream.setNoDelay(true);
    upstream.once('session', (s) => (session = s));
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    pair(client, upstream, close);
  });
  server.listen(Number(port), '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
  return rest;
}
