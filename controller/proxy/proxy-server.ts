/**
 * The proxy: accepts connections the kernel redirected, asks the kernel who
 * made them and where they were going, and either terminates TLS and
 * injects the bound credential, or relays the bytes untouched.
 */
import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import https from 'node:https';
import type { Logger } from '../log.js';
import type { AuditEvent, AuditLog } from '../audit/audit-log.js';
import type { OrigDst } from '../datapath/datapath.js';
import type { Route, RouteTable } from '../agent/routes.js';
import type { Credential } from '../credentials/credential.js';
import { parseClientHello, MAX_CLIENT_HELLO_BYTES } from '../tls/client-hello.js';
import { InjectionRefusal, prepareUpstreamRequest, type UpstreamRequest } from '../inject/inject.js';
import { forwardableHeaders } from './headers.js';
import { checkRequest, type Refusal } from './request-checks.js';
import { relay } from './relay.js';
import { WirekeyError } from '../errors.js';

export interface ProxyDeps {
  /** The kernel's record of a redirected connection, consumed on first use. */
  identify(address: string, port: number): OrigDst | null;
  /** The routes of the plan in force. */
  routes(): RouteTable;
  /** A TLS context presenting a leaf certificate for `host`, minted by the local CA. */
  secureContextFor(host: string): Promise<tls.SecureContext>;
  credential(name: string): Promise<Credential>;
  upstreamAgent: https.Agent;
  /** Largest request body read into memory to compute a SigV4 payload hash. */
  sigv4BodyLimit: number;
  audit: AuditLog;
  log: Logger;
}

/** A terminated connection: who it is, and the route its SNI selected. */
interface Session {
  orig: OrigDst;
  route: Route;
  sni: string;
}

const CLIENT_HELLO_TIMEOUT_MS = 10_000;

export class ProxyServer {
  readonly #deps: ProxyDeps;
  readonly #servers: net.Server[] = [];
  readonly #http: http.Server;
  readonly #sessions = new WeakMap<net.Socket, Session>();
  readonly #sockets = new Set<net.Socket>();

  constructor(deps: ProxyDeps) {
    this.#deps = deps;
    this.#http = http.createServer({ requireHostHeader: true, insecureHTTPParser: false }, (req, res) => {
      void this.#forward(req, res);
    });
    this.#http.on('clientError', (err: NodeJS.ErrnoException, socket) => this.#onClientError(err, socket));
    this.#http.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
      const session = this.#sessions.get(socket);
      this.#refuseRaw(socket, { status: 501, code: 'upgrade-unsupported', message: 'protocol upgrades are not supported' });
      if (session) this.#audit(session, req, { decision: 'deny', status: 501, reason: 'upgrade-unsupported' });
    });
  }

  /**
   * Listens on 127.0.0.1:port and [::1]:port, where connect4/connect6 send
   * redirected connections.
   * @throws the listen error (EADDRINUSE, ...) after closing what was opened.
   */
  async listen(port: number): Promise<void> {
    for (const host of ['127.0.0.1', '::1']) {
      const server = net.createServer({ pauseOnConnect: true }, (socket) => this.#onConnection(socket));
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ host, port, ipv6Only: host === '::1' }, resolve);
        });
      } catch (err) {
        await this.close();
        throw new WirekeyError('WK_PROXY_LISTEN', `proxy cannot listen on ${host} port ${port}: ${(err as Error).message}`, { cause: err });
      }
      this.#servers.push(server);
    }
  }

  async close(): Promise<void> {
    const closing = this.#servers.splice(0).map((s) => new Promise<void>((r) => s.close(() => r())));
    for (const s of this.#sockets) s.destroy();
    this.#http.closeAllConnections();
    await Promise.all(closing);
  }

  #onConnection(socket: net.Socket): void {
    // Request/response traffic: Nagle plus delayed ACKs would add tens of ms per exchange.
    socket.setNoDelay(true);
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', (err) => this.#deps.log.debug('client connection error: %s', err.message));

    const orig = this.#deps.identify(socket.remoteAddress ?? '', socket.remotePort ?? 0);
    if (!orig) {
      // Not redirected by the kernel: nobody we can vouch for. No credential, no relay.
      this.#deps.log.warn('refused a connection from %s:%d that the kernel did not redirect', socket.remoteAddress, socket.remotePort);
      socket.destroy();
      return;
    }
    this.#sniff(socket, orig);
  }

  /** Reads the ClientHello (without consuming it for good) and picks terminate or relay. */
  #sniff(socket: net.Socket, orig: OrigDst): void {
    let head = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(), CLIENT_HELLO_TIMEOUT_MS);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const hello = parseClientHello(head);
      if (hello.status === 'incomplete' && head.length <= MAX_CLIENT_HELLO_BYTES) return;
      socket.off('data', onData);
      socket.pause();
      clearTimeout(timer);
      const route = hello.status === 'ok' && hello.serverName ? this.#deps.routes().match(orig.workloadId, orig.port, hello.serverName) : undefined;
      if (route && hello.status === 'ok' && hello.serverName) {
        void this.#terminate(socket, head, { orig, route, sni: route.service.hosts.find((h) => h === hello.serverName) ?? hello.serverName });
      } else {
        this.#relay(socket, head, orig, hello.status === 'ok' ? hello.serverName : undefined);
      }
    };
    socket.on('data', onData);
    socket.resume();
  }

  #relay(socket: net.Socket, head: Buffer, orig: OrigDst, sni: string | undefined): void {
    const workload = this.#deps.routes().workload(orig.workloadId)?.name ?? `#${orig.workloadId}`;
    this.#deps.audit.record({
      decision: 'pass',
      workload,
      pid: orig.pid,
      uid: orig.uid,
      host: sni,
      reason: sni ? 'server name not bound' : 'no TLS server name',
    });
    relay(socket, head, orig.address, orig.port, (err) => {
      if (err) this.#deps.log.debug('relay to %s:%d ended: %s', orig.address, orig.port, err.message);
    });
  }

  async #terminate(socket: net.Socket, head: Buffer, session: Session): Promise<void> {
    let secureContext: tls.SecureContext;
    try {
      secureContext = await this.#deps.secureContextFor(session.sni);
    } catch (err) {
      this.#deps.log.error('cannot mint a certificate for %s: %s', session.sni, (err as Error).message);
      socket.destroy();
      return;
    }
    // TLSSocket feeds bytes already buffered on `socket` to the handshake first.
    socket.unshift(head);
    const tlsSocket = new tls.TLSSocket(socket, { isServer: true, secureContext, ALPNProtocols: ['http/1.1'] });
    tlsSocket.on('error', (err) => this.#deps.log.debug('TLS with workload %s failed: %s', session.route.workload.name, err.message));
    this.#sessions.set(tlsSocket, session);
    this.#http.emit('connection', tlsSocket);
  }

  async #forward(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const session = this.#sessions.get(req.socket);
    if (!session) {
      // Unreachable: only terminated sessions are handed to the HTTP server.
      res.destroy();
      return;
    }
    const { orig, route, sni } = session;
    const refusal = checkRequest(req, sni, orig.port);
    if (refusal) return this.#refuse(req, res, session, refusal);

    let upstream: UpstreamRequest;
    try {
      const credential = await this.#deps.credential(route.binding.inject.credential);
      upstream = await prepareUpstreamRequest(req, route.binding.inject, credential, { host: sni, sigv4BodyLimit: this.#deps.sigv4BodyLimit });
    } catch (err) {
      if (err instanceof InjectionRefusal) return this.#refuse(req, res, session, { status: err.status, code: err.reason, message: err.message });
      const message = err instanceof WirekeyError ? err.message : `credential "${route.binding.inject.credential}" is unavailable`;
      this.#deps.log.error('%s', message);
      return this.#refuse(req, res, session, { status: 503, code: 'credential-unavailable', message });
    }

    const upstreamReq = https.request({
      agent: this.#deps.upstreamAgent,
      host: orig.address,
      port: orig.port,
      servername: sni,
      method: req.method,
      path: upstream.path,
      headers: upstream.headers as unknown as http.OutgoingHttpHeaders,
      setHost: false,
    });
    upstreamReq.on('response', (upstreamRes) => {
      const status = upstreamRes.statusCode ?? 502;
      res.writeHead(status, upstreamRes.statusMessage, forwardableHeaders(upstreamRes.rawHeaders));
      // pipe(), not pipeline(): this is the per-request hot path, and
      // pipeline's abort-signal plumbing costs more than the forwarding.
      upstreamRes.pipe(res);
      upstreamRes.once('error', (err) => {
        this.#deps.log.debug('response stream from %s ended early: %s', sni, err.message);
        res.destroy(err);
      });
      res.once('finish', () =>
        this.#audit(session, req, {
          decision: 'inject',
          status,
          credential: route.binding.inject.credential,
          credentialVersion: upstream.credentialVersion,
          leaseId: upstream.leaseId,
          accessKeyId: upstream.accessKeyId,
        }),
      );
    });
    upstreamReq.on('error', (err) => {
      if (res.headersSent) {
        res.destroy(err);
        return;
      }
      this.#refuse(req, res, session, { status: 502, code: 'upstream-failed', message: `upstream ${sni} failed: ${err.message}` });
    });
    if (upstream.body) upstreamReq.end(upstream.body);
    else req.pipe(upstreamReq);
    // A workload that goes away mid-request must not leave a half-sent request upstream.
    req.once('error', (err) => upstreamReq.destroy(err));
    res.once('close', () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
  }

  #refuse(req: http.IncomingMessage, res: http.ServerResponse, session: Session, refusal: Refusal): void {
    this.#audit(session, req, { decision: 'deny', status: refusal.status, reason: refusal.code });
    const body = `wirekey: ${refusal.message}\n`;
    res.shouldKeepAlive = false;
    res.writeHead(refusal.status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-wirekey-error': refusal.code,
      connection: 'close',
    });
    res.end(body);
    // The request body, if any, is never read: nothing was sent upstream.
  }

  #onClientError(err: NodeJS.ErrnoException, socket: net.Socket | import('node:stream').Duplex): void {
    const session = this.#sessions.get(socket as net.Socket);
    if (session) {
      this.#deps.audit.record({
        decision: 'deny',
        workload: session.route.workload.name,
        pid: session.orig.pid,
        uid: session.orig.uid,
        service: session.route.service.name,
        host: session.sni,
        status: 400,
        reason: `malformed-request: ${err.code ?? 'parse error'}`,
      });
    }
    this.#refuseRaw(socket as net.Socket, { status: 400, code: 'malformed-request', message: `malformed request refused (${err.code ?? 'parse error'})` });
  }

  #refuseRaw(socket: net.Socket, refusal: Refusal): void {
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

  #audit(session: Session, req: http.IncomingMessage, extra: Pick<AuditEvent, 'decision' | 'status' | 'credential' | 'credentialVersion' | 'leaseId' | 'reason' | 'accessKeyId'>): void {
    this.#deps.audit.record({
      workload: session.route.workload.name,
      pid: session.orig.pid,
      uid: session.orig.uid,
      service: session.route.service.name,
      host: session.sni,
      method: req.method,
      path: req.url,
      ...extra,
    });
  }
}
