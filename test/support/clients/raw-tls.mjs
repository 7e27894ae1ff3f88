// A raw TLS client for tests: sends each request given (JSON array of
// strings on stdin) on its own TLS connection, exactly as written, and
// prints the status line of each response (or the connection error).
// usage: node raw-tls.mjs HOST IP PORT CA_FILE < requests.json
import tls from 'node:tls';
import { readFileSync } from 'node:fs';

const [host, ip, port, caFile] = process.argv.slice(2);
const requests = JSON.parse(readFileSync(0, 'utf8'));
const ca = readFileSync(caFile);

for (const raw of requests) {
  let timer;
  const line = await new Promise((resolve) => {
    const sock = tls.connect({ host: ip, port: Number(port), servername: host, ca }, () => sock.write(raw));
    let data = '';
    sock.on('data', (d) => (data += d.toString('latin1')));
    sock.on('end', () => resolve(data.split('\r\n')[0] || 'closed'));
    sock.on('error', (e) => resolve(`error ${e.code ?? e.message}`));
    timer = setTimeout(() => {
      sock.destroy();
      resolve(data.split('\r\n')[0] || 'timeout');
    }, 3000);
  });
  clearTimeout(timer);
  process.stdout.write(`${line}\n`);
}
