// Load client for bench/: small keep-alive HTTPS GETs over `connections`
// connections for `seconds`, then prints {requests, seconds, rps, p50Ms, p99Ms}.
// usage: node https-load.mjs HOST IP CA_FILE SECONDS CONNECTIONS
import https from 'node:https';
import { readFileSync } from 'node:fs';

const [host, ip, caFile, seconds, connections] = process.argv.slice(2);
const agent = new https.Agent({ keepAlive: true, maxSockets: Number(connections), ca: readFileSync(caFile) });
const latencies = [];
const deadline = performance.now() + Number(seconds) * 1000;

function get() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = https.get({ agent, host: ip, servername: host, headers: { host }, path: '/bench' }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
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
process.stdout.write(JSON.stringify({ requests: latencies.length, seconds: elapsed, rps: latencies.length / elapsed, p50Ms: pct(50), p99Ms: pct(99) }) + '\n');
agent.destroy();
