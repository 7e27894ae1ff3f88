// A raw TLS client for tests: sends each request given (JSON array of
// strings on stdin) on its own TLS connection, exactly as written, and
// prints the status line of each response (or the connection error); with
// `all`, every status line the connection got, joined by " | " (pipelining);
// `half`, the same, the client closing its side (TLS close_notify, then FIN)
// right after writing its requests and reading on until the server closes;
// `whole`, everything the connection got, as a JSON string.
// usage: node raw-tls.mjs HOST IP PORT CA_FILE [all|half|whole] < requests.json
import tls from 'node:tls';
import { readFileSync } from 'node:fs';

const [host, ip, port, caFile, mode] = process.argv.slice(2);
const half = mode === 'half';
const statusLines = (data) =>
  mode === 'whole' ? JSON.stringify(data)
  // A body without a final CRLF runs into the next status line: match anywhere (test bodies never hold one).
    : mode === 'all' || half ? (data.match(/HTTP\/1\.1 \d{3} [^\r\n]*/g) ?? []).join(' | ') : data.split('\r\n')[0];
const requests = JSON.parse(readFileSync(0, 'utf8'));
const ca = readFileSync(caFile);

for (const raw of requests) {
  let timer;
  const line = await new Promise((resolve) => {
    const sock = tls.connect({ host: ip, port: Number(port), servername: host, ca, allowHalfOpen: half }, () => (half ? sock.end(raw) : sock.write(raw)));
    let data = '';
    sock.on('data', (d) => (data += d.toString('latin1')));
    sock.on('end', () => resolve(statusLines(data) || 'closed'));
    sock.on('error', (e) => resolve(`error ${e.code ?? e.message}`));
    timer = setTimeout(() => {
      sock.destroy();
      resolve(statusLines(data) || 'timeout');
    }, 3000);
  });
  clearTimeout(timer);
  process.stdout.write(`${line}\n`);
}
