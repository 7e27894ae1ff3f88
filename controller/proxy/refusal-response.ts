/**
 * How an HTTP/1.1 refusal reaches the workload, on every proxy path: the
 * status, the refusal code in `x-wirekey-error`, a one-line message that
 * never says where a secret lives, and the connection closed.
 */
import type net from 'node:net';
import http from 'node:http';
import type { Refusal } from '../refusals.js';

/** Answers `refusal` on a response not yet begun, then closes the connection; a response already begun is cut instead. */
export function answerRefusal(res: http.ServerResponse, refusal: Refusal): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = `wirekey: ${refusal.message}\n`;
  res.shouldKeepAlive = false;
  res.writeHead(refusal.status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-wirekey-error': refusal.code,
    connection: 'close',
  });
  res.end(body);
}

/** Answers `refusal` on a raw socket (before or outside a response object) and closes it. */
export function refuseRaw(socket: net.Socket, refusal: Refusal): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = `wirekey: ${refusal.message}\n`;
  socket.end(
    `HTTP/1.1 ${refusal.status} ${http.STATUS_CODES[refusal.status] ?? ''}\r\n` +
      `content-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-wirekey-error: ${refusal.code}\r\nconnection: close\r\n\r\n${body}`,
  );
}
