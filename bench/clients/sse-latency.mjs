// SSE latency client for bench/: reads STREAMS event streams one after the
// other (each on a new connection, GET /sse-timed/EVENTS/GAP_MS), and prints
// {ttfbMs: [...], eventMs: [...]}: per stream, from sending the request to
// the first event's bytes; per event, from the upstream's stamp to its
// arrival here (same host, same clock). It never sends an Authorization.
// usage: node sse-latency.mjs HOST IP CA_FILE STREAMS EVENTS GAP_MS
import https from 'node:https';
import { readFileSync } from 'node:fs';

const [host, ip, caFile, streams, events, gap] = process.argv.slice(2);
const ca = readFileSync(caFile);
const now = () => performance.timeOrigin + performance.now();
const ttfbMs = [];
const eventMs = [];

const readStream = () =>
  new Promise((resolve, reject) => {
    const started = performance.now();
    let first = true;
    let buffered = '';
    https
      .get({ agent: false, host: ip, servername: host, ca, headers: { host, accept: 'text/event-stream' }, path: `/sse-timed/${events}/${gap}` }, (res) => {
        res.setEncoding('utf8');
        res.on('data', (chunk) => {
          const at = now();
          if (first) {
            ttfbMs.push(performance.now() - started);
            first = false;
          }
          buffered += chunk;
          let end;
          while ((end = buffered.indexOf('\n\n')) >= 0) {
            const event = buffered.slice(0, end);
            buffered = buffered.slice(end + 2);
            const m = /^data: (.*)$/m.exec(event);
            if (m) eventMs.push(at - JSON.parse(m[1]).t);
          }
        });
        res.once('end', resolve);
        res.once('error', reject);
      })
      .once('error', reject);
  });

for (let i = 0; i < Number(streams); i++) await readStream();
process.stdout.write(`${JSON.stringify({ ttfbMs, eventMs })}\n`);
