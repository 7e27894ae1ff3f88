// The least any Node TLS proxy does: terminate TLS, open a verified TLS
// connection upstream, and copy bytes both ways. No HTTP parsing, no
// header, no policy. bench/wire.ts runs it as the `node-tls-relay` arm, the
// floor under which no data path on Node's TLS can go.
//
// usage: node tls-relay.mjs PORT CERT KEY UPSTREAM_HOST UPSTREAM_PORT SERVERNAME CA
import { startRelay } from './relay-pair.mjs';

startRelay('tls-relay.mjs', [], (client, upstream) => {
  client.pipe(upstream);
  upstream.pipe(client);
});
