// Load client for bench/: small keep-alive HTTP/1.1 GETs over `connections`
// connections for `seconds`, then prints
// {requests, seconds, rps, p50Ms, p99Ms, localPorts}. localPorts are the
// local ports of the sockets it used, so the caller can match them with
// what the upstream saw. It never sends an Authorization header itself.
// usage: node load.mjs http IP PORT SECONDS CONNECTIONS
//        node load.mjs https HOST IP CA_FILE SECONDS CONNECTIONS   (port 443, SNI and Host = HOST)
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';

const USAGE = 'usage: node load.mjs http IP PORT SECONDS CONNECTIONS | node load.mjs https HOST IP CA_FILE SECONDS CONNECTIONS\n';
const [scheme, ...args] = process.argv.slice(2);
let get;
let seconds;
let connections;
let agent;
if (scheme === 'http' && args.length === 4) {
  const [ip, port] = args;
  [seconds, connections] = args.slice(2).map(Number);
  agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  get = (cb) => http.get({ agent, host: ip, port: Number(port), path: '/bench' }, cb);
} else if (scheme === 'https' && args.length === 5) {
  const [host, ip, caFile] = args;
  [seconds, connections] = args.slice(3).map(Number);
  agent = new https.Agent({ keepAlive: true, maxSockets: connections, ca: readFileSync(caFile) });
  get = (cb) => https.get({ agent, host: ip, servername: host, headers: { host }, path: '/bench' }, cb);
} else {
  process.stderr.write(USAGE);
  process.exit(2);
}

const latencies = [];
const localPorts = new Set();
const deadline = performance.now() + seconds * 1000;

function request() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = get((res) => {
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
  while (performance.now() < deadline) await request();
}

const start = performance.now();
await Promise.all(Array.from({ length: connections }, worker));
const elapsed = (performance.now() - start) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
process.stdout.write(
  JSON.stringify({ requests: latencies.length, seconds: elapsed, rps: latencies.length / elapsed, p50Ms: pct(50), p99Ms: pct(99), localPorts: [...localPorts] }) + '\n',
);
agent.destroy();
