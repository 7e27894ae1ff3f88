// Load client for bench/: small keep-alive plain HTTP/1.1 GETs over
// `connections` connections for `seconds`, then prints
// {requests, seconds, rps, p50Ms, p99Ms, localPorts}. localPorts are the
// local ports of the sockets it used, so the caller can match them with
// what the upstream saw. It never sends an Authorization header itself.
// usage: node http-load.mjs IP PORT SECONDS CONNECTIONS
import http from 'node:http';

const [ip, port, seconds, connections] = process.argv.slice(2);
if (!ip || !port || !seconds || !connections) {
  process.stderr.write('usage: node http-load.mjs IP PORT SECONDS CONNECTIONS\n');
  process.exit(2);
}
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(connections) });
const options = { agent, host: ip, port: Number(port), path: '/bench' };
const latencies = [];
const localPorts = new Set();
const deadline = performance.now() + Number(seconds) * 1000;

function get() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.get(options, (res) => {
      localPorts.add(res.socket.localPort);
      res.resume();
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
        latencies.push(performance.now() - t0);
        resolve();
      });
    });
    req.on('error', reject);
  });
}

async function worker() {
  while (performance.now() < deadline) await get();
}

const start = performance.now();
await Promise.all(Array.from({ length: Number(connections) }, worker));
const elapsed = (performance.now() - start) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
process.stdout.write(
  JSON.stringify({ requests: latencies.length, seconds: elapsed, rps: latencies.length / elapsed, p50Ms: pct(50), p99Ms: pct(99), localPorts: [...localPorts] }) + '\n',
);
agent.destroy();
