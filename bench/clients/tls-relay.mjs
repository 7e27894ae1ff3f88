// The least any Node TLS proxy does: terminate TLS, open a verified TLS
// connection upstream, and copy bytes both ways. No HTTP parsing, no
// header, no policy. bench/wire.ts runs it as the `node-tls-relay` arm, the
// floor under which no data path on Node's TLS can go.
//
// usage: node tls-relay.mjs PORT CERT KEY UPSTREAM_HOST UPSTREAM_PORT SERVERNAME CA
import { readFileSync } from 'node:fs';
import tls from 'node:tls';

const [port, cert, key, upstreamHost, upstreamPort, servername, ca] = process.argv.slice(2);
if (!ca) {
  process.stderr.write('usage: node tls-relay.mjs PORT CERT KEY UPSTREAM_HOST UPSTREAM_PORT SERVERNAME CA\n');
  process.exit(2);
}
const upstreamCa = readFileSync(ca);
// One upstream TLS session is resumed by every new upstream connection, as a proxy would.
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
  client.pipe(upstream);
  upstream.pipe(client);
});
server.listen(Number(port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
