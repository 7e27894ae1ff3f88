// A TLS front for a plain-HTTP test server (moto): terminates TLS with the
// test upstream's certificate and relays the bytes to a local port.
// usage: node tls-front.mjs --cert FILE --key FILE --port 443 --to 5000
import tls from 'node:tls';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { cert: { type: 'string' }, key: { type: 'string' }, port: { type: 'string', default: '443' }, to: { type: 'string' } },
});
const server = tls.createServer({ cert: readFileSync(values.cert), key: readFileSync(values.key) }, (client) => {
  const backend = net.connect({ host: '127.0.0.1', port: Number(values.to) });
  client.pipe(backend).pipe(client);
  const close = () => {
    client.destroy();
    backend.destroy();
  };
  client.on('error', close);
  backend.on('error', close);
});
server.listen(Number(values.port), '::', () => process.stdout.write('listening\n'));
process.on('SIGTERM', () => process.exit(0));
