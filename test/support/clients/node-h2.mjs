// Node's http2 client as a workload: one session to ORIGIN (resolved by
// /etc/hosts, trusting NODE_EXTRA_CA_CERTS), driven by lines on stdin:
//   req ID METHOD PATH [BODY_BYTES]   start a request (a body of that many bytes)
//   cancel ID                         reset the request's stream (CANCEL)
//   end                               close the session once every request is done, and exit
// Each request's outcome is one JSON line on stdout: {id, status, headers,
// body, bodySha256, trailers} or {id, rstCode} or {id, error}; a request
// whose headers arrived is also announced as {id, headers: true} at once.
//
// usage: node node-h2.mjs ORIGIN
import http2 from 'node:http2';
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';

const origin = process.argv[2];
const session = http2.connect(origin);
session.on('error', (err) => out({ sessionError: err.message }));
session.on('goaway', (code, last) => out({ goaway: code, lastStreamID: last }));
const streams = new Map();
const pending = new Set();
let ending = false;
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

function start(id, method, path, size) {
  const body = size ? Buffer.alloc(Number(size), 'wirekey-') : undefined;
  const req = session.request({ ':method': method, ':path': path, 'x-custom': `node-${id}`, authorization: 'Bearer workload-own' }, { endStream: !body });
  streams.set(id, req);
  pending.add(id);
  const chunks = [];
  let res;
  let trailers;
  const done = (o) => {
    if (!pending.has(id)) return;
    pending.delete(id);
    out({ id, ...o });
    if (ending && !pending.size) session.close();
  };
  req.on('response', (h) => {
    res = h;
    out({ id, headers: true });
  });
  req.on('trailers', (t) => (trailers = t));
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const b = Buffer.concat(chunks);
    done({ status: res?.[':status'], headers: res, body: b.length <= 4096 ? b.toString() : undefined, bodyLength: b.length, bodySha256: createHash('sha256').update(b).digest('hex'), trailers });
  });
  req.on('error', (err) => done({ error: err.message, rstCode: req.rstCode }));
  req.on('close', () => done({ rstCode: req.rstCode, status: res?.[':status'] }));
  if (body) req.end(body);
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, id, ...rest] = line.trim().split(/\s+/);
  if (cmd === 'req') start(id, rest[0], rest[1], rest[2]);
  else if (cmd === 'cancel') streams.get(id)?.close(http2.constants.NGHTTP2_CANCEL);
  else if (cmd === 'end') {
    ending = true;
    if (!pending.size) session.close();
  }
});
