// Load client for bench/h2-rate.ts: small HTTP/2 GETs on `sessions` sessions
// with `streams` requests in flight on each, for `seconds`, then prints
// {requests, seconds, rps, p50Ms, p99Ms}. It never sends an authorization
// header itself.
// usage: node h2-load.mjs HOST IP PORT CA_FILE SECONDS SESSIONS STREAMS
import http2 from 'node:http2';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';

const [host, ip, port, caFile, ...nums] = process.argv.slice(2);
const [seconds, sessions, streams] = nums.map(Number);
if (!host || !ip || !port || !caFile || !seconds || !sessions || !streams) {
  process.stderr.write('usage: node h2-load.mjs HOST IP PORT CA_FILE SECONDS SESSIONS STREAMS\n');
  process.exit(2);
}
const ca = readFileSync(caFile);
const latencies = [];
const deadline = performance.now() + seconds * 1000;

function connect() {
  return new Promise((resolve, reject) => {
    const s = http2.connect(`https://${host}:${port}`, {
      createConnection: () => tls.connect({ host: ip, port: Number(port), servername: host, ca, ALPNProtocols: ['h2'] }),
    });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

function request(session) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = session.request({ ':path': '/bench' });
    let status = 0;
    req.on('response', (h) => (status = h[':status']));
    req.resume();
    req.on('end', () => {
      if (status !== 200) return reject(new Error(`status ${status}`));
      latencies.push(performance.now() - t0);
      resolve();
    });
    req.on('error', reject);
  });
}

async function worker(session) {
  while (performance.now() < deadline) await request(session);
}

const all = await Promise.all(Array.from({ length: sessions }, connect));
const start = performance.now();
await Promise.all(all.flatMap((s) => Array.from({ length: streams }, () => worker(s))));
const elapsed = (performance.now() - start) / 1000;
for (const s of all) s.close();
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? 0;
process.stdout.write(`${JSON.stringify({ requests: latencies.length, seconds: elapsed, rps: latencies.length / elapsed, p50Ms: pct(0.5), p99Ms: pct(0.99) })}\n`);
