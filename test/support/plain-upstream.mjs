// A plain-HTTP test upstream (run inside a test network namespace) that
// parses requests itself, strictly, from the raw TCP bytes: no lenient
// library between the wire and the assertions. One JSON line per event on
// stdout:
//   {listening: true, ports}                          once, when ready
//   {conn, opened: true, remotePort, localPort}       a connection accepted
//   {n, conn, method, target, version, headerNames, authorization, apiKey, ...}
//                                                     one per complete request; a chunked
//                                                     body is decoded (bodyLength, bodySha256
//                                                     are the decoded data's; chunks, trailerNames)
//   {conn, error}                                     a malformed request (400, then close)
//   {conn, closed: true, bytes, sha256, ...}          a connection's whole byte stream
//   {sync: N}                                         the answer to a line `sync N` on stdin,
//                                                     after the record of every request whose
//                                                     response has started (records come first)
// Authorization and X-Api-Key values are recorded as SHA-256 hashes only, so a token
// cannot reach the test's output through this process.
//
// usage: node plain-upstream.mjs [--port 80]... [--host ::]
import net from 'node:net';
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string', multiple: true, default: ['80'] },
    host: { type: 'string', default: '::' },
  },
});

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.([01])$/;
const MAX_HEAD = 64 * 1024;
let n = 0;
let connections = 0;

const emit = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

class Malformed extends Error {}

/** Parses one header (or trailer) line, without its CRLF, or throws Malformed. */
function parseField(line) {
  if (/^[ \t]/.test(line)) throw new Malformed('obs-fold');
  const colon = line.indexOf(':');
  if (colon <= 0) throw new Malformed('header line without a name and colon');
  const name = line.slice(0, colon);
  if (!TOKEN.test(name)) throw new Malformed(`bad header name ${JSON.stringify(name)}`);
  const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) throw new Malformed('control character in a header value');
  return [name.toLowerCase(), value];
}

/** Parses one request head (without its final CRLFCRLF), or throws Malformed. */
function parseHead(head) {
  const text = head.toString('latin1');
  // Every CR must start a CRLF and every LF end one.
  if (/\r(?!\n)|(?<!\r)\n/.test(text)) throw new Malformed('bare CR or LF');
  if (/[\x00]/.test(text)) throw new Malformed('NUL in head');
  const lines = text.split('\r\n');
  const m = REQUEST_LINE.exec(lines[0]);
  if (!m) throw new Malformed(`bad request line ${JSON.stringify(lines[0].slice(0, 80))}`);
  const headers = lines.slice(1).map(parseField);
  return { method: m[1], target: m[2], version: `1.${m[3]}`, headers };
}

// chunk-size [ ; extensions ] : hex digits (a chunk of at most 2^53 - 1
// bytes: more never arrives in a test), extensions of visible characters.
const CHUNK_SIZE_LINE = /^([0-9a-fA-F]+)((?:;[\x20-\x7e\t]*)?)$/;

function serve(socket, localPort) {
  const conn = ++connections;
  const { remoteAddress, remotePort } = socket;
  emit({ conn, opened: true, remotePort, localPort });
  const whole = createHash('sha256');
  let total = 0;
  let buf = Buffer.alloc(0);
  let req = null; // the request whose body is being read
  let closed = false;

  const fail = (error) => {
    if (closed) return;
    emit({ conn, error, remotePort, localPort });
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    closed = true;
  };

  const finish = () => {
    const r = req;
    req = null;
    n += 1;
    const record = {
      n,
      conn,
      method: r.method,
      target: r.target,
      version: r.version,
      headerNames: r.headers.map(([k]) => k),
      authorization: r.headers.filter(([k]) => k === 'authorization').map(([, v]) => sha256(v)),
      apiKey: r.headers.filter(([k]) => k === 'x-api-key').map(([, v]) => sha256(v)),
      host: r.headers.find(([k]) => k === 'host')?.[1],
      chunked: r.chunked,
      chunks: r.chunks,
      trailerNames: r.trailers.map(([k]) => k),
      bodyLength: r.bodyLength,
      bodySha256: r.body.digest('hex'),
      headSha256: sha256(r.rawHead),
      rawSha256: r.raw.digest('hex'),
      remoteAddress,
      remotePort,
      localPort,
    };
    emit(record);
    const body = JSON.stringify({ ok: true, n });
    const close = r.version === '1.0' || r.headers.some(([k, v]) => k === 'connection' && /close/i.test(v));
    socket.write(
      `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `${close ? 'Connection: close\r\n' : ''}\r\n${body}`,
    );
    if (close) {
      socket.end();
      closed = true;
    }
  };

  const bodyBytes = (chunk) => {
    req.body.update(chunk);
    req.raw.update(chunk);
    req.bodyLength += chunk.length;
  };

  // Consumes as much of `buf` as forms complete protocol elements.
  const step = () => {
    while (!closed) {
      if (!req) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buf.length > MAX_HEAD) fail('head too large');
          return;
        }
        const rawHead = buf.subarray(0, end + 4);
        buf = buf.subarray(end + 4);
        let head;
        try {
          head = parseHead(rawHead.subarray(0, end));
        } catch (err) {
          if (err instanceof Malformed) return fail(err.message);
          throw err;
        }
        const cl = head.headers.filter(([k]) => k === 'content-length');
        const te = head.headers.filter(([k]) => k === 'transfer-encoding');
        if (cl.length > 1) return fail('duplicate Content-Length');
        if (cl.length && te.length) return fail('Content-Length with Transfer-Encoding');
        if (cl.length && !/^\d+$/.test(cl[0][1])) return fail('bad Content-Length');
        if (te.length && (te.length > 1 || te[0][1].toLowerCase() !== 'chunked')) return fail('unsupported Transfer-Encoding');
        if (te.length && head.version !== '1.1') return fail('Transfer-Encoding on HTTP/1.0');
        req = {
          ...head,
          rawHead,
          raw: createHash('sha256').update(rawHead),
          body: createHash('sha256'),
          bodyLength: 0,
          chunked: te.length > 0,
          chunks: 0,
          trailers: [],
          remaining: cl.length ? Number(cl[0][1]) : 0,
          chunkState: 'size',
        };
        if (head.headers.some(([k, v]) => k === 'expect' && v.toLowerCase() === '100-continue')) {
          socket.write('HTTP/1.1 100 Continue\r\n\r\n');
        }
        if (!req.chunked && req.remaining === 0) finish();
        continue;
      }
      if (!req.chunked) {
        if (!buf.length) return;
        const take = buf.subarray(0, Math.min(buf.length, req.remaining));
        buf = buf.subarray(take.length);
        bodyBytes(take);
        req.remaining -= take.length;
        if (req.remaining === 0) finish();
        continue;
      }
      // chunked: size line, data, CRLF ... 0 CRLF trailers CRLF
      if (req.chunkState === 'size' || req.chunkState === 'trailer') {
        const eol = buf.indexOf('\r\n');
        if (eol < 0) {
          // A line can only end in CRLF: a bare LF (or CR) never ends it.
          if (buf.includes(0x0a) || (buf.includes(0x0d) && buf.indexOf(0x0d) < buf.length - 1)) return fail('bare CR or LF in chunked framing');
          if (buf.length > MAX_HEAD) fail('chunk framing line too long');
          return;
        }
        const raw = buf.subarray(0, eol);
        if (raw.includes(0x0a) || raw.includes(0x0d)) return fail('bare CR or LF in chunked framing');
        const line = raw.toString('latin1');
        req.raw.update(buf.subarray(0, eol + 2));
        buf = buf.subarray(eol + 2);
        if (req.chunkState === 'trailer') {
          if (line === '') {
            finish();
            continue;
          }
          try {
            req.trailers.push(parseField(line));
          } catch (err) {
            if (err instanceof Malformed) return fail(`trailer: ${err.message}`);
            throw err;
          }
          continue;
        }
        const m = CHUNK_SIZE_LINE.exec(line);
        if (!m) return fail(`bad chunk size line ${JSON.stringify(line.slice(0, 80))}`);
        const size = BigInt(`0x${m[1]}`);
        if (size > BigInt(Number.MAX_SAFE_INTEGER)) return fail('chunk too large');
        req.remaining = Number(size);
        if (req.remaining > 0) req.chunks += 1;
        req.chunkState = req.remaining === 0 ? 'trailer' : 'data';
        continue;
      }
      if (req.chunkState === 'data') {
        if (!buf.length) return;
        const take = buf.subarray(0, Math.min(buf.length, req.remaining));
        buf = buf.subarray(take.length);
        req.body.update(take);
        req.raw.update(take);
        req.bodyLength += take.length;
        req.remaining -= take.length;
        if (req.remaining === 0) req.chunkState = 'crlf';
        continue;
      }
      if (req.chunkState === 'crlf') {
        if (buf.length < 2) return;
        if (buf[0] !== 0x0d || buf[1] !== 0x0a) return fail('chunk data not followed by CRLF');
        req.raw.update(buf.subarray(0, 2));
        buf = buf.subarray(2);
        req.chunkState = 'size';
      }
    }
  };

  socket.on('data', (chunk) => {
    whole.update(chunk);
    total += chunk.length;
    if (closed) return;
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    step();
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    emit({
      conn,
      closed: true,
      bytes: total,
      sha256: whole.digest('hex'),
      pending: req ? { method: req.method, target: req.target, bodyLength: req.bodyLength } : null,
      leftover: buf.length,
      remotePort,
      localPort,
    });
  });
}

const ports = values.port.map(Number);
let listening = 0;
for (const port of ports) {
  const server = net.createServer({ noDelay: true }, (socket) => serve(socket, port));
  server.listen(port, values.host, () => {
    if (++listening === ports.length) emit({ listening: true, ports });
  });
}
createInterface({ input: process.stdin }).on('line', (line) => {
  const m = /^sync (\d+)$/.exec(line);
  if (m) emit({ sync: Number(m[1]) });
});
process.on('SIGTERM', () => process.exit(0));
