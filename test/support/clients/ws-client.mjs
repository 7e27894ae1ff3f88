// A WebSocket workload on Node's `ws` client: connects to wss://HOST/PATH at
// address IP (trusting CA_FILE), sends each message of the plan in order,
// reads each echo before sending the next, closes, and prints one JSON line:
// {status, messages: [{binary, length, sha256}]}, or, when the server did not
// switch protocols, {status, error} with the x-wirekey-error header if any.
// Plan items: text:N (N bytes of text), bin:N (N bytes of binary), pause
// (print "paused", then wait for a line on stdin).
// With WS_AUTHORIZATION set, the upgrade request carries that Authorization.
// usage: node ws-client.mjs HOST IP CA_FILE PATH PLAN...
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';

const [host, ip, caFile, path, ...plan] = process.argv.slice(2);
const sha256 = (d) => createHash('sha256').update(d).digest('hex');
const payload = (kind, n) => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = kind === 'text' ? 0x61 + (i % 26) : (i * 31 + 7) & 0xff;
  return kind === 'text' ? b.toString('latin1') : b;
};
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

const ws = new WebSocket(`wss://${host}${path}`, {
  ca: readFileSync(caFile),
  lookup: (_name, opts, cb) => (opts?.all ? cb(null, [{ address: ip, family: 4 }]) : cb(null, ip, 4)),
  maxPayload: 64 * 1024 * 1024,
  ...(process.env.WS_AUTHORIZATION ? { headers: { authorization: process.env.WS_AUTHORIZATION } } : {}),
});
let status = 0;
ws.on('upgrade', (res) => { status = res.statusCode; });
ws.on('unexpected-response', (_req, res) => {
  out({ status: res.statusCode, error: res.headers['x-wirekey-error'] ?? null });
  res.resume();
  res.once('end', () => process.exit(0));
});
ws.on('error', (err) => {
  out({ status, error: err.message });
  process.exit(1);
});
const got = [];
// However it ends (our close, the server's, or a cut connection), say what was received.
ws.on('close', (code) => {
  out({ status, messages: got, closeCode: code });
  process.exit(0);
});
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));
ws.on('open', async () => {
  for (const item of plan) {
    if (item === 'pause') {
      // The test's turn (a policy reload, say): go on at its next stdin line.
      process.stdout.write('paused\n');
      await nextLine();
      continue;
    }
    const [kind, n] = item.split(':');
    const echoed = new Promise((resolve) => ws.once('message', (data, isBinary) => resolve({ data, isBinary })));
    ws.send(payload(kind, Number(n)), { binary: kind === 'bin' });
    const { data, isBinary } = await echoed;
    got.push({ binary: isBinary, length: data.length, sha256: sha256(data) });
  }
  ws.close(1000, 'done');
});
