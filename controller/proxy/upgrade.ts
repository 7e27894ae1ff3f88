/**
 * WebSocket through the terminating proxy. The upgrade request is checked
 * and injected like any request (by the proxy server, before this module is
 * called); this module sends it upstream on a fresh TLS connection of its
 * own (never pooled, never returned to a pool), and on a 101 answer relays
 * both directions untouched until either side closes or neither sends
 * anything for the idle timeout. Any other answer is forwarded as an
 * ordinary response and the connection is closed: nothing the workload sent
 * after its upgrade request reaches the upstream unless the upstream
 * switched protocols.
 */
import https from 'node:https';
import type http from 'node:http';
import type net from 'node:net';
import type tls from 'node:tls';
import { countHeader, connectionTokens, downstreamResponseHeaders } from '../http/headers.js';
import { MaskingStream, ResponseMask, type MaskSet } from '../inject/reflection.js';
import type { Refusal } from '../refusals.js';

/**
 * Why `req` (which asks to upgrade) is not a WebSocket upgrade the proxy
 * accepts, or null. Only `GET`, `Upgrade: websocket` alone, `Connection`
 * naming upgrade, Sec-WebSocket-Key and -Version once each, and no body.
 */
export function webSocketUpgradeProblem(req: http.IncomingMessage): Refusal | null {
  const raw = req.rawHeaders;
  const refuse = (why: string): Refusal => ({ status: 501, code: 'upgrade-unsupported', message: `protocol upgrade refused: ${why}` });
  const upgrades: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === 'upgrade') upgrades.push((raw[i + 1] as string).trim().toLowerCase());
  if (upgrades.length !== 1 || upgrades[0] !== 'websocket') return refuse('only a single "Upgrade: websocket" is supported');
  if (req.method !== 'GET' || req.httpVersion !== '1.1') return refuse('a WebSocket upgrade must be an HTTP/1.1 GET');
  if (!connectionTokens(raw).includes('upgrade')) return refuse('Connection does not name upgrade');
  if (countHeader(raw, 'sec-websocket-key') !== 1 || countHeader(raw, 'sec-websocket-version') !== 1) {
    return refuse('a WebSocket upgrade needs one Sec-WebSocket-Key and one Sec-WebSocket-Version');
  }
  const length = req.headers['content-length'];
  if (countHeader(raw, 'transfer-encoding') > 0 || (length !== undefined && length !== '0')) {
    return refuse('an upgrade request carries no body');
  }
  return null;
}

export interface UpgradeTarget {
  /** The original destination (address and port) and the name its certificate must carry. */
  address: string;
  port: number;
  servername: string;
  /** The trust store upstream requests use (undefined: Node's default). */
  secureContext?: tls.SecureContext;
  path: string;
  /** The injected request's raw headers (hop-by-hop ones already removed). */
  headers: string[];
  /** The credential values the answer's head (and a refusal's body) must not carry back: masked (reflection.ts). */
  masked?: MaskSet;
  idleMs: number;
}

export interface UpgradeCallbacks {
  /**
   * The upstream answered; `status` 101 means the tunnel is open (called
   * once its head is written), any other an ordinary response (called once
   * it was relayed, whole or cut). `masked`: occurrences of the credential's
   * values masked in what was relayed of it (head and body).
   */
  answered(status: number, masked: number): void;
  /** The upstream failed before any answer (`connected`: after its TLS was established and verified): the caller refuses (502). */
  failed(err: Error, connected: boolean): void;
  /** The tunnel closed: bytes each way after the 101, and how long it was open. */
  closed(bytesUp: number, bytesDown: number, durationMs: number, why: string): void;
  /** Called on every chunk after the 101: false closes the tunnel (the binding is gone). */
  stillBound(): boolean;
}

/**
 * Sends the upgrade request upstream and, on 101, joins `client` (paused,
 * with `head` already read from it) to the upstream connection.
 */
export function openUpgrade(client: net.Socket, head: Buffer, target: UpgradeTarget, cb: UpgradeCallbacks): { abort(): void } {
  client.pause();
  const upstreamReq = https.request({
    // agent: false: a connection of its own, closed with the tunnel, never reused.
    agent: false,
    host: target.address,
    port: target.port,
    servername: target.servername,
    // Said here, never left to NODE_TLS_REJECT_UNAUTHORIZED in the agent's environment.
    rejectUnauthorized: true,
    ...(target.secureContext ? { secureContext: target.secureContext } : {}),
    method: 'GET',
    path: target.path,
    // Upgrade and Connection are hop-by-hop: the proxy sets its own, naming only the WebSocket upgrade.
    headers: [...target.headers, 'Connection', 'Upgrade', 'Upgrade', 'websocket'] as unknown as http.OutgoingHttpHeaders,
    setHost: false,
  });
  const mask = target.masked && new ResponseMask(target.masked);
  const masked = (text: string) => mask?.text(text) ?? text;
  const maskedPairs = (raw: string[]) => mask?.pairs(raw) ?? raw;
  let answered = false;
  /** A non-101 answer, forwarded as an ordinary response. */
  let ordinary: http.IncomingMessage | undefined;
  const abort = () => {
    upstreamReq.destroy();
    client.destroy();
  };
  // The workload going away before the answer takes the upstream request with it.
  const onEarlyClose = () => upstreamReq.destroy();
  client.once('close', onEarlyClose);

  upstreamReq.once('upgrade', (res: http.IncomingMessage, upstream: net.Socket, upstreamHead: Buffer) => {
    answered = true;
    client.off('close', onEarlyClose);
    if (res.statusCode !== 101 || client.destroyed) {
      upstream.destroy();
      client.destroy();
      return;
    }
    const status = `HTTP/1.1 101 ${masked(res.statusMessage || 'Switching Protocols')}\r\n`;
    // Filtered as any response's are (hop-by-hop headers and those its
    // Connection lists dropped), then the two this one hop needs.
    const kept = maskedPairs(downstreamResponseHeaders(res.rawHeaders));
    let lines = `Connection: Upgrade\r\nUpgrade: ${res.headers.upgrade ?? 'websocket'}\r\n`;
    for (let i = 0; i < kept.length; i += 2) lines += `${kept[i]}: ${kept[i + 1]}\r\n`;
    client.write(`${status}${lines}\r\n`);
    cb.answered(101, mask?.masked ?? 0);
    tunnel(client, head, upstream, upstreamHead, target.idleMs, cb);
  });

  upstreamReq.once('response', (res: http.IncomingMessage) => {
    // Not switching protocols: an ordinary response, then the connection closes.
    answered = true;
    ordinary = res;
    client.off('close', onEarlyClose);
    const status = res.statusCode ?? 502;
    // Audited once relayed (every byte flushed, or the workload's connection gone): with what was masked of it.
    let relayed = false;
    const onRelayed = () => {
      if (relayed) return;
      relayed = true;
      cb.answered(status, mask?.masked ?? 0);
    };
    if (client.destroyed) onRelayed();
    client.once('finish', onRelayed);
    client.once('close', onRelayed);
    let lines = `HTTP/1.1 ${status} ${masked(res.statusMessage ?? '')}\r\n`;
    const headers = maskedPairs(downstreamResponseHeaders(res.rawHeaders));
    for (let i = 0; i < headers.length; i += 2) lines += `${headers[i]}: ${headers[i + 1]}\r\n`;
    // Without Content-Length the body is delimited by the close.
    client.write(`${lines}connection: close\r\n\r\n`);
    if (mask) res.pipe(new MaskingStream(mask)).pipe(client);
    else res.pipe(client);
    res.once('error', () => client.destroy());
    client.once('close', () => upstreamReq.destroy());
  });

  upstreamReq.once('error', (err) => {
    if (answered) {
      // An ordinary response being relayed ends by its own events: whole (the
      // piped end flushes it to the workload) or cut (its 'error' destroys the
      // workload's socket). The upstream's close after it is no failure.
      if (!ordinary) client.destroy();
      return;
    }
    client.off('close', onEarlyClose);
    cb.failed(err, (upstreamReq.socket as tls.TLSSocket | null)?.authorized === true);
  });
  upstreamReq.end();
  return { abort };
}

/** Relays both ways, counting bytes, until either side closes or both are idle for `idleMs`. */
function tunnel(client: net.Socket, clientHead: Buffer, upstream: net.Socket, upstreamHead: Buffer, idleMs: number, cb: UpgradeCallbacks): void {
  const openedAt = performance.now();
  let up = 0;
  let down = 0;
  let done = false;
  const finish = (why: string) => {
    if (done) return;
    done = true;
    client.destroy();
    upstream.destroy();
    cb.closed(up, down, Math.round(performance.now() - openedAt), why);
  };
  const count = (dir: 'up' | 'down') => (chunk: Buffer) => {
    if (dir === 'up') up += chunk.length;
    else down += chunk.length;
    if (!cb.stillBound()) finish('binding-changed');
  };
  // Either side idle means both: a byte either way re-arms both timers.
  let idleTimer = setTimeout(() => finish('idle'), idleMs);
  const touch = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => finish('idle'), idleMs);
  };
  client.setTimeout(0);
  upstream.setNoDelay(true);
  client.on('data', count('up'));
  upstream.on('data', count('down'));
  client.on('data', touch);
  upstream.on('data', touch);
  client.on('error', () => finish('client error'));
  upstream.on('error', () => finish('upstream error'));
  client.once('close', () => finish('client closed'));
  upstream.once('close', () => finish('upstream closed'));
  client.once('close', () => clearTimeout(idleTimer));
  upstream.once('close', () => clearTimeout(idleTimer));
  if (upstreamHead.length) {
    down += upstreamHead.length;
    client.write(upstreamHead);
  }
  if (clientHead.length) {
    up += clientHead.length;
    upstream.write(clientHead);
  }
  // A half-close is passed on: a WebSocket close handshake ends with the TCP close.
  client.pipe(upstream);
  upstream.pipe(client);
  client.resume();
  upstream.resume();
}
