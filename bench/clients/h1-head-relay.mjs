// What a lean HTTP/1.1 path on Node's TLS would cost: the relay of
// tls-relay.mjs, plus what an injecting proxy must do per request at the
// least: find each request head, set one header, and find where each
// response ends (Content-Length or chunked) before the next request may
// go. Not a proxy: it handles only requests without a body and keeps one
// upstream connection per client connection. bench/wire.ts runs it as the
// `node-head-relay` arm, against the same access-log checks as the proxy
// (the bearer on every request).
//
// usage: node h1-head-relay.mjs PORT CERT KEY UPSTREAM_HOST UPSTREAM_PORT SERVERNAME CA AUTHORIZATION
import { startRelay } from './relay-pair.mjs';

const END = Buffer.from('\r\n\r\n');
const [authorization] = startRelay('h1-head-relay.mjs', ['AUTHORIZATION'], (client, upstream, close) => {
  let req = Buffer.alloc(0);
  client.on('data', (chunk) => {
    req = req.length ? Buffer.concat([req, chunk]) : chunk;
    for (;;) {
      const end = req.indexOf(END);
      if (end < 0) break;
      const head = req.subarray(0, end + 2);
      // A request with a body, or a workload's own Authorization: not this prototype's.
      const text = head.toString('latin1').toLowerCase();
      if (text.includes('\r\ncontent-length:') || text.includes('\r\ntransfer-encoding:') || text.includes('\r\nauthorization:')) return close();
      upstream.write(Buffer.concat([head, line, END.subarray(2)]));
      req = req.subarray(end + 4);
    }
  });

  // Responses: status line and headers, then a Content-Length body or chunks.
  let res = Buffer.alloc(0);
  let bodyLeft = -1;
  let chunked = false;
  upstream.on('data', (chunk) => {
    client.write(chunk);
    res = res.length ? Buffer.concat([res, chunk]) : chunk;
    for (;;) {
      if (bodyLeft < 0 && !chunked) {
        const end = res.indexOf(END);
        if (end < 0) return;
        const text = res.subarray(0, end).toString('latin1').toLowerCase();
        const m = /\r\ncontent-length:\s*(\d+)/.exec(text);
        chunked = !m && text.includes('\r\ntransfer-encoding: chunked');
        bodyLeft = m ? Number(m[1]) : 0;
        res = res.subarray(end + 4);
      }
      if (chunked) {
        const eol = res.indexOf('\r\n');
        if (eol < 0) return;
        const size = parseInt(res.subarray(0, eol).toString('latin1'), 16);
        if (res.length < eol + 2 + size + 2) return;
        res = res.subarray(eol + 2 + size + 2);
        if (size === 0) chunked = false, bodyLeft = -1;
        continue;
      }
      if (res.length < bodyLeft) {
        bodyLeft -= res.length;
        res = Buffer.alloc(0);
        return;
      }
      res = res.subarray(bodyLeft);
      bodyLeft = -1;
      if (!res.length) return;
    }
  });
});
// Read by the connection handlers, which run only once the server listens.
const line = Buffer.from(`authorization: ${authorization}\r\n`);
