/**
 * The proxy: accepts connections the kernel redirected, asks the kernel who
 * made them and where they were going, and either terminates TLS and
 * injects the bound credential, or relays the bytes untouched.
 *
 * Every request is judged against the plan in force when it arrives; every
 * upstream connection belongs to one workload, binding, credential version
 * and destination; work per connection and per workload is bounded
 * (ProxyLimits); and nothing a workload sends can throw out of a handler.
 */
import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import https from 'node:https';
import type { Logger } from '../log.js';
import { AUDIT_SUBJECT, auditSubject, type AuditSink, type RequestAuditEvent } from '../audit/audit-log.js';
import type { OrigDst } from '../datapath/datapath.js';
import type { Route, RouteTable } from './routes.js';
import type { Credential } from '../credentials/credential.js';
import { ClientHelloReader } from '../tls/client-hello-reader.js';
import { asStreamedRequest, injectHeader, InjectionRefusal, prepareUpstreamRequest, type StreamedRequest, type UpstreamRequest } from '../inject/inject.js';
import type { ByteBudget } from '../inject/byte-budget.js';
import { MaskingStream } from '../inject/reflection.js';
import { closingHeaders, downstreamResponseHeaderList, downstreamResponseHeaders } from '../http/headers.js';
import { checkRequest, type RequestHead } from './request-checks.js';
import { relay } from './relay.js';
import { openUpgrade, webSocketUpgradeProblem } from './upgrade.js';
import { neverReuseUnfinished, type PartitionedAgent, type PartitionedHttpAgent, type PartitionedRequestOptions } from './upstream.js';
import { UpstreamH2Pool } from './upstream-h2.js';
import { STREAM_HIGH_WATER_MARK, UpstreamPools, type UpstreamPool } from './upstream-pool.js';
import type { Dispatcher } from 'undici';
import { H2Front, responseMask, type Admission, type H2Connection, type H2Host, type H2Limits, type InjectOutcome } from './h2.js';
import { FastUpstreams, serveFast, type FastHost } from './h1-fast.js';
import { canonicalAddress, decideConnection, pickAddress, type EgressDecision } from './egress-decision.js';
import { boundedResolver, systemResolver, type NameResolver } from './name-resolver.js';
import { PlainEgress } from './plain-egress.js';
import { answerRefusal, refuseRaw, upstreamFailed } from './refusal-response.js';
import type { PlanEgress, PlanEgressRule } from '../policy/types.js';
import { CredentialError, WirekeyError } from '../errors.js';
import type { Refusal, RefusalCode } from '../refusals.js';

export type { NameResolver } from './name-resolver.js';

/** Bounds on what one connection and one workload can make the proxy hold. All are `wirekey run` flags. */
export interface ProxyLimits {
  /** From accept to TLS established (ClientHello included), per connection (ms). */
  handshakeTimeoutMs: number;
  /** Connections between accept and TLS established (or relay), all workloads together. */
  maxHandshakes: number;
  /** Open proxied connections (terminated or relayed) per workload. */
  maxConnectionsPerWorkload: number;
  /** A terminated or relayed connection with no bytes either way for this long is closed (ms). */
  idleTimeoutMs: number;
  /**
   * Of maxHandshakes, how many one workload may hold in this thread (not a
   * flag: half of maxHandshakes when one thread serves, shared out among
   * proxy workers by the agent), so that no workload can take every slot
   * and stop every other workload's new connections.
   */
  maxHandshakesPerWorkload?: number;
}

/** What one workload may hold of `maxHandshakes` among `threads` proxy threads: at most half, together. */
export function handshakesPerWorkload(maxHandshakes: number, threads = 1): number {
  return Math.max(1, Math.floor(maxHandshakes / (2 * threads)));
}

export const DEFAULT_PROXY_LIMITS: ProxyLimits = {
  handshakeTimeoutMs: 10_000,
  maxHandshakes: 512,
  maxConnectionsPerWorkload: 1024,
  idleTimeoutMs: 300_000,
};

/**
 * Told what the proxy decides, for metrics. Called on the hot path with
 * the policy's names only (never a host or path the workload chose): an
 * implementation must only count.
 */
export interface ProxyObserver {
  /** A request went upstream with its credential and its response was forwarded whole (as audited). */
  injected(workload: string, service: string): void;
  refused(workload: string, service: string, code: RefusalCode): void;
  /** From sending the request upstream to its response headers. */
  upstreamLatency(workload: string, service: string, seconds: number): void;
  /** The response carried the request's credential values back: `occurrences` masked (see inject/reflection.ts). */
  reflected(workload: string, service: string, occurrences: number): void;
  /** A connection closed before TLS (too-many-connections, too-many-handshakes, handshake-timeout). */
  connectionRefused(workload: string, code: RefusalCode): void;
  /** A connection the kernel did not redirect: closed, no identity. */
  unidentified(): void;
  /** An HTTP/1.1 connection of `workload` the fast path handed to Node's HTTP server (a request outside its subset). */
  h1HandedOff(workload: string): void;
  /**
   * An egress decision for a restricted workload's connection (TLS, or an
   * address rule) or plaintext request: `rule` is the allowing rule's
   * label, undefined for a refusal.
   */
  egress(workload: string, rule: string | undefined, decision: EgressDecision): void;
}

/**
 * The kernel's record of a redirected connection; `workloadName` is the
 * workload its id names under the table the record was read with (a proxy
 * worker is told it by the agent's thread, whose table may be newer than
 * the worker's for a moment), else the proxy's own table names it.
 */
export type IdentifiedConnection = OrigDst & {
  workloadName?: string;
  /**
   * Whoever identified it also bounds connections per workload (the
   * agent's thread, for all proxy workers): counted against the limit (the
   * proxy then tells ProxyShared.connectionClosed), or over it.
   */
  admission?: 'counted' | 'too-many-connections';
};

/**
 * What proxy worker threads bound together rather than each on its own:
 * handshakes in progress (a counter all threads share), and connections per
 * workload (counted where connections are identified: see IdentifiedConnection).
 */
export interface ProxyShared {
  /** Takes one of `max` handshake slots of all threads together; false when none is free. */
  beginHandshake(max: number): boolean;
  endHandshake(): void;
  /** A connection identified with admission 'counted' closed (or was refused after all). */
  connectionClosed(workload: string): void;
}

export interface ProxyDeps {
  /**
   * The kernel's record of a redirected connection, consumed on first use;
   * a promise when it is asked of another thread. Throws (or rejects) when
   * no record can vouch for it now: the connection is closed before TLS.
   */
  identify(address: string, port: number): IdentifiedConnection | null | Promise<IdentifiedConnection | null>;
  /** The routes of the plan in force. */
  routes(): RouteTable;
  /** A TLS context presenting a leaf certificate for `host`, minted by the local CA. */
  secureContextFor(host: string): Promise<tls.SecureContext>;
  credential(name: string): Promise<Credential>;
  /** The credential `credential(name)` would answer now without waiting, if it is at hand (CredentialSource.peek). */
  heldCredential?(name: string): Credential | undefined;
  /** HTTP/1.1 upstream requests that undici cannot send (Expect: 100-continue, chunked uploads), HTTP/2 streams to HTTP/1.1 upstreams. */
  upstreamAgent: PartitionedAgent;
  /** Every other HTTP/1.1 upstream request (default: pools made here with upstreamAgent's trust store). */
  upstreamPools?: UpstreamPools;
  /** Largest request body read into memory to compute a SigV4 payload hash. */
  sigv4BodyLimit: number;
  /** Memory all SigV4 bodies being hashed may hold together. */
  sigv4BodyBudget: ByteBudget;
  limits?: Partial<ProxyLimits>;
  /** Offer h2 in ALPN and serve HTTP/2 (default on); its bounds (h2.ts DEFAULT_H2_LIMITS). */
  http2?: boolean;
  /**
   * Serve HTTP/1.1 requests with a header injection on the fast path
   * (h1-fast.ts) until one falls outside its subset (default on); off:
   * every request goes through Node's HTTP server and undici.
   */
  h1FastPath?: boolean;
  h2Limits?: Partial<H2Limits>;
  /** HTTP/2 sessions upstream (default: one with Node's trust store only). */
  upstreamH2?: UpstreamH2Pool;
  audit: AuditSink;
  log: Logger;
  observer?: ProxyObserver;
  /** Bounds shared with other proxy threads (default: this proxy's own). */
  shared?: ProxyShared;
  /**
   * Resolves a name an egress rule allowed (an SNI relayed untouched, a
   * plaintext request's Host), or a bound name a restricted workload
   * connected to, to the addresses the proxy may connect to.
   * Default: systemResolver. Either way the proxy bounds it
   * (boundedResolver: lookups in flight, one per name).
   */
  resolve?: NameResolver;
  /** Whether an address is this host (loopback, unspecified, an interface's); default: isLocalAddress. */
  isLocalAddress?: (address: string) => boolean;
  /** The agent for plaintext egress requests; default: one made here (createPlainUpstreamAgent). */
  plainUpstreamAgent?: PartitionedHttpAgent;
}

export interface ProxyStats {
  /** Refusals by code since start (requests and connections). */
  refused: Partial<Record<RefusalCode, number>>;
  /** Connections between accept and TLS established (or relay). */
  handshakes: number;
  /** Open connections per workload name. */
  connections: Record<string, number>;
  /** Connections accepted since start. */
  accepted: number;
}

/** A terminated connection: who it is, and the route its SNI selected under the plan `table`. */
interface Session {
  orig: OrigDst;
  route: Route;
  table: RouteTable;
  sni: string;
  /** The upstream pool of the last request, for the route and credential object it was for. */
  upstream?: { route: Route; credential: Credential; pool: UpstreamPool };
  /** auditSubject() of the connection under `route`. */
  audit?: { route: Route; subject: string };
}

/** Per connection: requests received and not yet answered, and who waits for there to be none. */
interface InFlight {
  n: number;
  waiters: (() => void)[];
}

/** Bytes of a response delimited by its connection's close that may wait for a slow workload (see #forwardByPool). */
const CLOSE_DELIMITED_BUFFER_MAX = 16 * 1024 * 1024;

/** Methods undici frames with a Content-Length even when it is 0. */
const PAYLOAD_METHODS = new Set(['PUT', 'POST', 'PATCH', 'QUERY', 'PROPFIND', 'PROPPATCH']);

/** What admission gives a request: the route it went by, the credential and the upstream request. */
interface Admitted extends Admission {
  route: Route;
  credential: Credential;
}

function expectsContinue(req: http.IncomingMessage): boolean {
  return (req.headers.expect ?? '').trim().toLowerCase() === '100-continue';
}

export class ProxyServer {
  readonly #deps: ProxyDeps;
  readonly #limits: ProxyLimits;
  readonly #servers: net.Server[] = [];
  readonly #http: http.Server;
  readonly #sessions = new WeakMap<net.Socket, Session>();
  /**
   * Per connection, its requests numbered as they arrive and the number of
   * the first one refused (a refusal closes the connection): what was
   * pipelined behind it is never sent upstream; what came before it is
   * answered first.
   */
  readonly #order = new WeakMap<net.Socket, { next: number; refused: number }>();
  readonly #arrival = new WeakMap<http.IncomingMessage, number>();
  /** Per connection: settles once every request received so far has been answered. */
  readonly #inFlight = new WeakMap<net.Socket, InFlight>();
  /** Restricted workloads' plaintext connections on ports where names are allowed. */
  readonly #plain: PlainEgress;
  readonly #resolve: NameResolver;
  #proxyPort: number | undefined;
  readonly #sockets = new Set<net.Socket>();
  /** Open connections per workload name. */
  readonly #perWorkload = new Map<string, number>();
  #handshakes = 0;
  /** Handshakes in progress in this thread, per workload. */
  readonly #handshaking = new Map<string, number>();
  /** Connections accepted since start. */
  #accepted = 0;
  /** Refusals by code since start (requests and connections). */
  readonly #refused = new Map<RefusalCode, number>();
  /** Credential objects -> a number, and the partitions named with it: a new value (rotation) is a new upstream partition. */
  readonly #credentialSeq = new WeakMap<Credential, { seq: number; partitions: WeakMap<Route, string> }>();
  #nextCredentialSeq = 1;
  readonly #h2: H2Front<Session & H2Connection> | undefined;
  readonly #upstreamH2: UpstreamH2Pool | undefined;
  readonly #pools: UpstreamPools;
  /** The HTTP/1.1 fast path's host and upstream connections; undefined when it is off. */
  readonly #fast: FastHost<Session> | undefined;

  constructor(deps: ProxyDeps) {
    this.#deps = deps;
    this.#limits = { ...DEFAULT_PROXY_LIMITS, ...deps.limits };
    this.#pools = deps.upstreamPools ?? new UpstreamPools({ secureContext: deps.upstreamAgent.options.secureContext });
    if (deps.http2 !== false) {
      this.#upstreamH2 = deps.upstreamH2 ?? new UpstreamH2Pool();
      this.#h2 = new H2Front(this.#h2Host(this.#upstreamH2), deps.h2Limits);
    }
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.#pending(req.socket as net.Socket, res);
      this.#forward(req, res).catch((err: unknown) => this.#internalError(req, res, err));
    };
    this.#http = http.createServer({ requireHostHeader: true, insecureHTTPParser: false }, onRequest);
    // A workload that closes its side after its requests (TLS close_notify,
    // then FIN) still gets their responses; the connection closes after the
    // last. Its TLS sockets allow half-open once established (#terminate,
    // the fast path); HTTP/2's do not.
    (this.#http as http.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    // Expect: 100-continue is the upstream's to answer (#forward relays its
    // 100); a request the proxy refuses is answered before the body is sent.
    this.#http.on('checkContinue', onRequest);
    // Idle terminated connections (no bytes either way) are closed.
    this.#http.timeout = this.#limits.idleTimeoutMs;
    this.#http.on('clientError', (err: NodeJS.ErrnoException, socket) => this.#onClientError(err, socket));
    this.#http.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      this.#upgrade(req, socket, head).catch((err: unknown) => {
        this.#deps.log.error('upgrade to %s failed inside the proxy: %s', req.headers.host ?? '?', (err as Error)?.stack ?? String(err));
        socket.destroy();
      });
    });

    if (deps.h1FastPath !== false) this.#fast = this.#fastHost();

    this.#resolve = boundedResolver(deps.resolve ?? systemResolver);
    this.#plain = new PlainEgress({
      routes: deps.routes,
      audit: deps.audit,
      log: deps.log,
      observer: deps.observer,
      addressFor: (name, orig, egress) => this.#addressFor(name, orig, egress),
      count: (code) => this.#count(code),
      idleTimeoutMs: this.#limits.idleTimeoutMs,
      agent: deps.plainUpstreamAgent,
    });
  }

  /** What the HTTP/2 front borrows: the same admission, refusal accounting and audit as an HTTP/1.1 request. */
  #h2Host(upstreamH2: UpstreamH2Pool): H2Host<Session & H2Connection> {
    return {
      admit: (session, head, source) => this.#admit(session, head, source),
      refused: (session, head, refusal, sent) => this.#recordRefusal(session, head, refusal, sent),
      connectionRefused: (session, code) => {
        this.#count(code, session);
        this.#audit(session, {}, { decision: 'deny', reason: code });
      },
      completed: (session, head, admission, status, reset) => {
        this.#auditSent(session, head, admission, status ?? 0, reset ? `stream reset (HTTP/2 error ${reset})` : undefined);
        if (!reset) this.#deps.observer?.injected(admission.workload, admission.service);
      },
      upstreamLatency: (session, seconds) => this.#deps.observer?.upstreamLatency(session.route.workload.name, session.route.service.name, seconds),
      releaseBody: (owner) => this.#deps.sigv4BodyBudget.releaseAll(owner),
      upstreamAgent: this.#deps.upstreamAgent,
      upstreamH2,
      idleTimeoutMs: this.#limits.idleTimeoutMs,
      log: this.#deps.log,
    };
  }

  /** What the HTTP/1.1 fast path borrows: the same admission, refusal accounting and audit as Node's server path. */
  #fastHost(): FastHost<Session> {
    return {
      // SigV4 reads bodies to sign them: Node's server path does that.
      eligible: (session) => this.#currentRoute(session)?.binding.inject.kind !== 'sigv4',
      admit: (session, head) => this.#admit(session, head, { method: head.method, url: head.url, rawHeaders: head.rawHeaders, body: undefined, unknownLength: false }),
      refused: (session, head, refusal, sent) => this.#recordRefusal(session, head, refusal, sent),
      completed: (session, head, admission, status, reason) => {
        this.#auditSent(session, head, admission, status, reason);
        if (!reason) this.#deps.observer?.injected(admission.workload, admission.service);
      },
      upstreamLatency: (session, seconds) => this.#deps.observer?.upstreamLatency(session.route.workload.name, session.route.service.name, seconds),
      handOff: (socket, session) => {
        this.#deps.observer?.h1HandedOff(session.route.workload.name);
        this.#http.emit('connection', socket);
        // Bytes unshifted before the hand-off reach the server's parser once the socket flows.
        socket.resume();
      },
      upstreams: new FastUpstreams({ secureContext: this.#deps.upstreamAgent.options.secureContext }),
      idleTimeoutMs: this.#limits.idleTimeoutMs,
      headersTimeoutMs: this.#http.headersTimeout,
      log: this.#deps.log,
    };
  }

  /**
   * Listens on 127.0.0.1:port and [::1]:port, where connect4/connect6 send
   * redirected connections. `fds`: sockets already bound and listening
   * there (a worker thread's own SO_REUSEPORT ones) to serve instead.
   * @throws the listen error (EADDRINUSE, ...) after closing what was opened.
   */
  async listen(port: number, fds?: Partial<Record<'127.0.0.1' | '::1', number>>): Promise<void> {
    for (const host of ['127.0.0.1', '::1'] as const) {
      const server = net.createServer({ pauseOnConnect: true }, (socket) => this.#onConnection(socket));
      const fd = fds?.[host];
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          // A socket made listening elsewhere (a worker's SO_REUSEPORT one), or one made here.
          if (fd !== undefined) server.listen({ fd }, resolve);
          else server.listen({ host, port, ipv6Only: host === '::1' }, resolve);
        });
      } catch (err) {
        await this.close();
        throw new WirekeyError('WK_PROXY_LISTEN', `proxy cannot listen on ${host} port ${port}: ${(err as Error).message}`, { cause: err });
      }
      server.on('error', (err) => this.#deps.log.error('proxy listener on %s: %s', host, err.message));
      this.#servers.push(server);
    }
    this.#proxyPort = port || (this.#servers[0]?.address() as net.AddressInfo | null)?.port;
  }

  /** The port listened on (the one asked for, or the one the system chose for 0). */
  get port(): number | undefined {
    return this.#proxyPort;
  }

  async close(): Promise<void> {
    const closing = this.#servers.splice(0).map((s) => new Promise<void>((r) => s.close(() => r())));
    for (const s of this.#sockets) s.destroy();
    this.#http.closeAllConnections();
    this.#h2?.close();
    this.#upstreamH2?.close();
    this.#pools.close();
    this.#fast?.upstreams.close();
    this.#plain.close();
    await Promise.all(closing);
  }

  /** Refusals by code since start, what is open now, and connections accepted since start. */
  stats(): ProxyStats {
    return { refused: Object.fromEntries(this.#refused), handshakes: this.#handshakes, connections: Object.fromEntries(this.#perWorkload), accepted: this.#accepted };
  }

  #onConnection(socket: net.Socket): void {
    // Request/response traffic: Nagle plus delayed ACKs would add tens of ms per exchange.
    socket.setNoDelay(true);
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', (err) => this.#deps.log.debug('client connection error: %s', err.message));

    this.#accepted++;
    let identified: IdentifiedConnection | null | Promise<IdentifiedConnection | null>;
    try {
      // A peer that reset before accept has no address: the kernel has no record to match either.
      identified = socket.remoteAddress ? this.#deps.identify(socket.remoteAddress, socket.remotePort ?? 0) : null;
    } catch (err) {
      this.#unidentifiable(socket, err);
      return;
    }
    if (identified instanceof Promise) {
      // Asked of the agent's thread (a worker): the socket stays paused meanwhile.
      identified.then((orig) => this.#identified(socket, orig), (err: unknown) => this.#unidentifiable(socket, err));
      return;
    }
    this.#identified(socket, identified);
  }

  /** No record to vouch for it (a map error, or a reload renumbering the workloads): closed before TLS. */
  #unidentifiable(socket: net.Socket, err: unknown): void {
    this.#deps.log.warn('refused a connection from %s:%d: %s', socket.remoteAddress, socket.remotePort, (err as Error).message);
    this.#deps.observer?.unidentified();
    socket.destroy();
  }

  #identified(socket: net.Socket, orig: IdentifiedConnection | null): void {
    if (socket.destroyed) {
      // Gone while it was identified elsewhere: whoever counted it is told.
      if (orig?.admission === 'counted' && orig.workloadName !== undefined) this.#deps.shared?.connectionClosed(orig.workloadName);
      return;
    }
    if (!orig) {
      // Not redirected by the kernel: nobody we can vouch for. No credential, no relay.
      this.#deps.log.warn('refused a connection from %s:%d that the kernel did not redirect', socket.remoteAddress, socket.remotePort);
      this.#deps.observer?.unidentified();
      socket.destroy();
      return;
    }
    const workload = orig.workloadName ?? this.#deps.routes().workload(orig.workloadId)?.name ?? `#${orig.workloadId}`;
    const shared = this.#deps.shared;
    // Counted by whoever identified it (the agent's thread, for every worker together), or here.
    const counted = orig.admission === 'counted';
    const open = this.#perWorkload.get(workload) ?? 0;
    const perWorkload = this.#limits.maxHandshakesPerWorkload ?? handshakesPerWorkload(this.#limits.maxHandshakes);
    const refusal = orig.admission === 'too-many-connections' || (!counted && open >= this.#limits.maxConnectionsPerWorkload)
      ? 'too-many-connections'
      // The workload's own share first: a slot of all threads is taken only for a connection that goes on.
      : (this.#handshaking.get(workload) ?? 0) >= perWorkload ? 'too-many-handshakes'
      : !(shared ? shared.beginHandshake(this.#limits.maxHandshakes) : this.#handshakes < this.#limits.maxHandshakes) ? 'too-many-handshakes' : undefined;
    if (refusal) {
      if (counted) shared?.connectionClosed(workload);
      this.#refuseConnection(socket, orig, workload, refusal);
      return;
    }
    this.#perWorkload.set(workload, open + 1);
    socket.once('close', () => {
      const n = (this.#perWorkload.get(workload) ?? 1) - 1;
      if (n > 0) this.#perWorkload.set(workload, n);
      else this.#perWorkload.delete(workload);
      if (counted) shared?.connectionClosed(workload);
    });
    this.#handshake(socket, orig, workload);
  }

  /**
   * Counts the connection as a handshake until TLS is established or it is
   * relayed; past the deadline it is closed.
   */
  #handshake(socket: net.Socket, orig: OrigDst, workload: string): void {
    this.#handshakes++;
    this.#handshaking.set(workload, (this.#handshaking.get(workload) ?? 0) + 1);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      this.#handshakes--;
      const n = (this.#handshaking.get(workload) ?? 1) - 1;
      if (n > 0) this.#handshaking.set(workload, n);
      else this.#handshaking.delete(workload);
      this.#deps.shared?.endHandshake();
      clearTimeout(timer);
    };
    const timer = setTimeout(() => {
      if (done) return;
      finish();
      this.#refuseConnection(socket, orig, workload, 'handshake-timeout');
    }, this.#limits.handshakeTimeoutMs);
    socket.once('close', finish);
    this.#sniff(socket, orig, workload, finish);
  }

  /**
   * Reads the ClientHello (without consuming it for good: every byte is
   * replayed to the TLS stack or the relay) and picks terminate or relay.
   * The reader does work linear in the bytes, however they are cut into
   * records and segments, and bounds records and bytes.
   */
  #sniff(socket: net.Socket, orig: OrigDst, workload: string, handshakeDone: () => void): void {
    const reader = new ClientHelloReader();
    const onData = (chunk: Buffer) => {
      const hello = reader.push(chunk);
      if (hello.status === 'incomplete') return;
      socket.off('data', onData);
      socket.pause();
      const head = reader.received;
      const table = this.#deps.routes();
      const serverName = hello.status === 'ok' ? hello.serverName : undefined;
      // By name: the kernel's id was read under the plan in force at accept,
      // and a reload since may have numbered the workloads differently.
      const route = serverName ? table.matchByName(workload, orig.port, serverName) : undefined;
      if (route && serverName) {
        const sni = route.service.hosts.find((h) => h === serverName) ?? serverName;
        const session: Session = { orig, route, table, sni };
        const egress = route.workload.egress;
        const terminating = egress ? this.#terminateRestricted(socket, head, session, egress, handshakeDone) : this.#terminate(socket, head, session, handshakeDone);
        terminating.catch((err: unknown) => {
          this.#deps.log.error('cannot terminate TLS for %s: %s', sni, (err as Error).message);
          socket.destroy();
        });
        return;
      }
      const egress = table.workloadByName(workload)?.egress;
      if (egress) {
        this.#egress(socket, head, orig, workload, egress, { tls: hello.status !== 'not-tls', serverName }, handshakeDone).catch((err: unknown) => {
          this.#deps.log.error('egress decision for workload %s failed inside the proxy: %s', workload, (err as Error)?.stack ?? String(err));
          socket.destroy();
        });
        return;
      }
      handshakeDone();
      this.#relay(socket, head, orig, workload, serverName);
    };
    socket.on('data', onData);
    socket.resume();
  }

  #relay(socket: net.Socket, head: Buffer, orig: OrigDst, workload: string, sni: string | undefined): void {
    this.#deps.audit.record({
      decision: 'pass',
      workload,
      pid: orig.pid,
      uid: orig.uid,
      host: sni,
      reason: sni ? 'server name not bound' : 'no TLS server name',
    });
    relay(socket, head, orig.address, orig.port, this.#limits.idleTimeoutMs, (err) => {
      if (err) this.#deps.log.debug('relay to %s:%d ended: %s', orig.address, orig.port, err.message);
    });
  }

  /**
   * A restricted workload's connection that no binding claimed: relayed to
   * an address its allowed name resolves to, relayed to its original
   * address (an address rule allows it), handed to the HTTP parser
   * (plaintext on a port where names are allowed), or refused (see
   * egress-decision.ts). The connection counts as a handshake until then,
   * so the handshake deadline bounds name resolution too.
   *
   * Decided once, under the plan in force now: a relay that is open when a
   * reload removes the rule that allowed it carries on until it closes
   * (its bytes are TLS the proxy cannot read); plaintext requests are each
   * judged under the plan in force when they arrive.
   */
  async #egress(
    socket: net.Socket, head: Buffer, orig: OrigDst, workload: string, egress: PlanEgress,
    hello: { tls: boolean; serverName: string | undefined }, handshakeDone: () => void,
  ): Promise<void> {
    const verdict = decideConnection(egress, { address: orig.address, port: orig.port, ...hello });
    const sni = hello.serverName;
    switch (verdict.action) {
      case 'relay-address':
        handshakeDone();
        this.#egressRecord('allow', workload, orig, { rule: verdict.rule, host: sni, address: orig.address });
        this.#relayTo(socket, head, orig.address, orig.port);
        return;
      case 'plaintext': {
        handshakeDone();
        if (socket.destroyed) return;
        this.#plain.accept(socket, head, orig, workload);
        return;
      }
      case 'refuse':
        this.#egressRefusal(socket, head, orig, workload, egress, verdict.code, sni, handshakeDone);
        return;
      case 'relay-name': {
        const address = await this.#addressFor(verdict.name, orig, egress);
        if (socket.destroyed) return;
        if (!address) {
          this.#egressRefusal(socket, head, orig, workload, egress, 'egress-name-unresolved', sni, handshakeDone);
          return;
        }
        handshakeDone();
        this.#egressRecord('allow', workload, orig, { rule: verdict.rule, host: sni, address });
        this.#relayTo(socket, head, address, orig.port);
        return;
      }
    }
  }

  /**
   * A restricted workload's connection that a binding's route claimed. Its
   * requests go upstream to the address it was dialled to only if the bound
   * name resolves to it or an address rule allows it; else to an address
   * the name resolves to (pickAddress, as a relayed name), so that the
   * agent, whose own connections no egress rule limits, never opens a
   * connection (and sends a ClientHello) wherever the workload pointed a
   * bound name. Judged once, before the TLS handshake and within its
   * deadline. Refused as egress refuses a connection when the name
   * resolves to nothing usable. `audit`: terminated to the dialled address
   * as before, logged would-refuse when enforce would not go there.
   */
  async #terminateRestricted(socket: net.Socket, head: Buffer, session: Session, egress: PlanEgress, handshakeDone: () => void): Promise<void> {
    const { orig, sni } = session;
    const o = { egress, dialled: orig.address, port: orig.port, proxyPort: this.#proxyPort, isLocal: this.#deps.isLocalAddress };
    // An address rule that allows the dialled address needs no lookup.
    let address = pickAddress([], o);
    if (address === undefined) {
      address = pickAddress(await this.#answers(sni), o);
      if (socket.destroyed) return;
    }
    const dialled = canonicalAddress(orig.address);
    if (address !== dialled) {
      const workload = session.route.workload.name;
      if (egress.mode === 'audit') {
        this.#count('egress-not-allowed');
        this.#egressRecord('would-refuse', workload, orig, { host: sni, address: orig.address, reason: 'egress-not-allowed' });
      } else if (address === undefined) {
        this.#egressRefusal(socket, head, orig, workload, egress, 'egress-not-allowed', sni, handshakeDone);
        return;
      } else {
        this.#deps.log.debug('%s connected to %s for %s, which does not resolve to it: its requests go to %s', workload, orig.address, sni, address);
        session.orig = { ...orig, address };
      }
    }
    await this.#terminate(socket, head, session, handshakeDone);
  }

  /** What `name` resolves to; none when the lookup fails (logged, never shown to the workload). */
  async #answers(name: string): Promise<string[]> {
    try {
      return (await this.#resolve(name)).map((a) => a.address);
    } catch (err) {
      this.#deps.log.debug('cannot resolve %s: %s', name, (err as Error).message);
      return [];
    }
  }

  /**
   * Where a connection or request for `name` (allowed) goes: see
   * pickAddress. Undefined when it resolves to nothing usable.
   */
  async #addressFor(name: string, orig: OrigDst, egress: PlanEgress): Promise<string | undefined> {
    return pickAddress(await this.#answers(name), {
      egress, dialled: orig.address, port: orig.port, proxyPort: this.#proxyPort, isLocal: this.#deps.isLocalAddress,
    });
  }

  /**
   * `enforce`: the connection is closed before a byte is relayed, and the
   * refusal audited. `audit`: relayed to where the workload was going, as
   * for an unrestricted workload, and logged as would-refuse.
   */
  #egressRefusal(
    socket: net.Socket, head: Buffer, orig: OrigDst, workload: string, egress: PlanEgress,
    code: RefusalCode, sni: string | undefined, handshakeDone: () => void,
  ): void {
    handshakeDone();
    this.#count(code);
    if (egress.mode === 'enforce') {
      this.#egressRecord('deny', workload, orig, { host: sni, address: orig.address, reason: code });
      socket.destroy();
      return;
    }
    this.#egressRecord('would-refuse', workload, orig, { host: sni, address: orig.address, reason: code });
    this.#relayTo(socket, head, orig.address, orig.port);
  }

  /** One connection-level egress line and its count. */
  #egressRecord(
    decision: EgressDecision, workload: string, orig: OrigDst,
    o: { rule?: PlanEgressRule; host?: string; address: string; reason?: RefusalCode },
  ): void {
    this.#deps.audit.record({
      decision, workload, pid: orig.pid, uid: orig.uid, host: o.host, address: o.address, port: orig.port,
      dialled: o.address !== orig.address ? orig.address : undefined, rule: o.rule?.label, reason: o.reason,
    });
    this.#deps.observer?.egress(workload, o.rule?.label, decision);
  }

  #relayTo(socket: net.Socket, head: Buffer, address: string, port: number): void {
    relay(socket, head, address, port, this.#limits.idleTimeoutMs, (err) => {
      if (err) this.#deps.log.debug('relay to %s:%d ended: %s', address, port, err.message);
    });
  }

  async #terminate(socket: net.Socket, head: Buffer, session: Session, handshakeDone: () => void): Promise<void> {
    let secureContext: tls.SecureContext;
    try {
      secureContext = await this.#deps.secureContextFor(session.sni);
    } catch (err) {
      this.#deps.log.error('cannot mint a certificate for %s: %s', session.sni, (err as Error).message);
      socket.destroy();
      return;
    }
    if (socket.destroyed) return;
    // TLSSocket feeds bytes already buffered on `socket` to the handshake first.
    socket.unshift(head);
    const h2 = this.#h2;
    // See STREAM_HIGH_WATER_MARK; Node's TLSSocket passes highWaterMark on to net.Socket, though @types/node does not list it.
    const tlsOptions: tls.TLSSocketOptions & { highWaterMark: number } = {
      isServer: true, secureContext, ALPNProtocols: h2 ? ['h2', 'http/1.1'] : ['http/1.1'], highWaterMark: STREAM_HIGH_WATER_MARK,
    };
    const tlsSocket = new tls.TLSSocket(socket, tlsOptions);
    tlsSocket.on('error', (err) => this.#deps.log.debug('TLS with workload %s failed: %s', session.route.workload.name, err.message));
    this.#sessions.set(tlsSocket, session);
    const fast = this.#fast;
    if (!h2 && !fast) {
      tlsSocket.once('secure', () => {
        handshakeDone();
        tlsSocket.allowHalfOpen = true;
      });
      this.#http.emit('connection', tlsSocket);
      return;
    }
    // The protocol is known once the handshake is done (ALPN): HTTP/2 or HTTP/1.1 from there.
    tlsSocket.once('secure', () => {
      handshakeDone();
      if (h2 && tlsSocket.alpnProtocol === 'h2') h2.serve(tlsSocket, Object.assign(session, { address: session.orig.address, port: session.orig.port }));
      else if (fast) serveFast(tlsSocket, session, fast);
      else {
        tlsSocket.allowHalfOpen = true;
        this.#http.emit('connection', tlsSocket);
      }
    });
  }

  /**
   * The route a request on `session` may use now: the connection's own
   * while the plan is the one it was accepted under, else the same
   * workload's route to the same host in the plan in force, if nothing that
   * decides what is sent where changed. Undefined: refuse.
   */
  #currentRoute(session: Session): Route | undefined {
    const table = this.#deps.routes();
    if (table === session.table) return session.route;
    const now = table.matchByName(session.route.workload.name, session.orig.port, session.sni);
    if (!now || now.fingerprint !== session.route.fingerprint) return undefined;
    session.table = table;
    session.route = now;
    return now;
  }

  async #forward(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.#arrived(req);
    const session = this.#sessions.get(req.socket);
    if (!session) {
      // Unreachable: only terminated sessions are handed to the HTTP server.
      res.destroy();
      return;
    }
    // Expect: 100-continue: the client sends its body once it sees a 100,
    // relayed from the upstream's; a body the proxy must read first (SigV4)
    // is asked for by the proxy itself. A refusal comes before any 100.
    let continued = !expectsContinue(req);
    const sendContinue = () => {
      if (continued || res.headersSent || res.destroyed) return;
      continued = true;
      res.writeContinue();
    };
    const admitted = await this.#admit(session, req, req, { beforeBodyRead: sendContinue });
    if (!('route' in admitted)) return this.#refuse(req, res, session, admitted);
    if (this.#behindRefusal(req)) {
      // Pipelined behind a request refused on this connection, which closes it: never answered, so never sent.
      this.#deps.sigv4BodyBudget.releaseAll(req);
      res.destroy();
      return;
    }
    if (admitted.upstream.body) res.once('close', () => this.#deps.sigv4BodyBudget.releaseAll(req));
    // undici sends neither Expect (the 100 is the upstream's to give) nor a
    // chunked head before the first chunk, and drops a Content-Length: 0 a
    // signature may cover: those go by https.request.
    const byAgent = !continued || (!admitted.upstream.body && (req.headers['transfer-encoding'] !== undefined
      || (req.headers['content-length'] === '0' && !PAYLOAD_METHODS.has(req.method ?? ''))));
    if (byAgent) this.#forwardByAgent(req, res, session, admitted, sendContinue);
    else this.#forwardByPool(req, res, session, admitted);
  }

  /** The upstream pool for `admitted` on `session`: the last request's, while its route and credential are the same objects. */
  #poolFor(session: Session, admitted: Admitted): UpstreamPool {
    const last = session.upstream;
    if (last && last.route === admitted.route && last.credential === admitted.credential && !last.pool.closed) return last.pool;
    const pool = this.#pools.pool(admitted.partition, session.orig.address, session.orig.port, session.sni);
    session.upstream = { route: admitted.route, credential: admitted.credential, pool };
    return pool;
  }

  /** Sends an admitted request upstream on its partition's undici pool and forwards the response. */
  #forwardByPool(req: http.IncomingMessage, res: http.ServerResponse, session: Session, admitted: Admitted): void {
    const { route, upstream } = admitted;
    const { sni } = session;
    const entry = this.#poolFor(session, admitted);
    const pools = this.#pools;
    const length = req.headers['content-length'];
    const body = upstream.body ?? (length !== undefined && length !== '0' ? req : null);
    let controller: Dispatcher.DispatchController | undefined;
    /** Response body bytes still to come: Infinity chunked, negative delimited by the close. */
    let remaining = -1;
    let settled = false;
    let gone = false;
    let corked = false;
    /** The upstream's status, once its head came. */
    let status = 0;
    /** undici is writing the request on a verified connection: it goes out with its credential. */
    let sent = false;
    let audited = false;
    const mask = responseMask(admitted);
    const audit = (reason?: InjectOutcome) => {
      if (audited) return;
      audited = true;
      this.#auditSent(session, req, admitted, status, reason);
      if (!reason) this.#deps.observer?.injected(route.workload.name, route.service.name);
    };
    const uncork = () => {
      corked = false;
      res.uncork();
    };
    const settle = () => {
      if (settled) return false;
      settled = true;
      pools.end(entry);
      return true;
    };
    const sentAt = performance.now();
    const handler: Dispatcher.DispatchHandler = {
      // Called as the request head is about to be written to a connected, verified socket.
      onRequestStart: (c) => {
        controller = c;
        if (gone) c.abort(new Error('the workload closed its connection'));
        else sent = true;
      },
      onResponseStart: (c, upstreamStatus, headers, statusMessage) => {
        this.#deps.observer?.upstreamLatency(route.workload.name, route.service.name, (performance.now() - sentAt) / 1000);
        status = upstreamStatus;
        const list = downstreamResponseHeaderList(headers);
        if (mask) {
          mask.pairs(list);
          if (statusMessage !== undefined) statusMessage = mask.text(statusMessage);
        }
        try {
          res.writeHead(status, statusMessage, list);
        } catch (err) {
          this.#deps.log.debug('response from %s not forwardable: %s', sni, (err as Error).message);
          audit('response-cut');
          c.abort(err as Error);
          res.destroy();
          return;
        }
        // As #forwardByAgent: a streamed response shows its head now.
        const length = headers['content-length'];
        if (length === undefined) res.flushHeaders();
        // undici cannot be paused on the last bytes before the upstream
        // closes (it asserts, and the process would exit): a body of known
        // length is never paused on its last chunk; a chunked one always has
        // its last chunk's bytes to come; one delimited by the close is never
        // paused, and is cut past CLOSE_DELIMITED_BUFFER_MAX waiting for the
        // workload.
        remaining = typeof length === 'string' ? Number(length) : headers['transfer-encoding'] !== undefined ? Infinity : -1;
        res.once('finish', () => audit());
      },
      onResponseData: (c, chunk) => {
        if (remaining >= 0) remaining -= chunk.length;
        // What arrives in one turn (a read's worth of TLS records, the last
        // chunk and the end) goes to the workload in one write.
        if (!corked) {
          corked = true;
          res.cork();
          process.nextTick(uncork);
        }
        const out = mask ? mask.push(chunk) : chunk;
        if (!out.length || res.write(out)) return;
        if (remaining > 0) {
          c.pause();
          res.once('drain', () => c.resume());
        } else if (remaining < 0 && res.writableLength > CLOSE_DELIMITED_BUFFER_MAX) {
          c.abort(new Error(`a response delimited by the connection's close waits past ${CLOSE_DELIMITED_BUFFER_MAX} bytes for the workload`));
        }
      },
      onResponseEnd: () => {
        settle();
        const held = mask?.end();
        if (held?.length) res.write(held);
        res.end();
      },
      onResponseError: (_c, err) => {
        if (!settle() || gone) return;
        if (res.headersSent) {
          this.#deps.log.debug('response stream from %s ended early: %s', sni, err.message);
          audit('response-cut');
          res.destroy(err);
          return;
        }
        audited = true;
        this.#deps.log.debug('upstream %s (%s:%d) failed: %s', sni, session.orig.address, session.orig.port, err.message);
        this.#refuse(req, res, session, upstreamFailed(sni, err, sent), sent ? admitted : undefined);
      },
    };
    // A workload that goes away mid-request must not leave a half-sent
    // request upstream: aborting destroys the upstream connection, which is
    // then never reused.
    res.once('close', () => {
      // Gone after the request went out with its credential, and before its response was whole.
      if (sent && !res.writableFinished) audit('workload-closed');
      if (res.writableFinished || settled) return;
      gone = true;
      controller?.abort(new Error('the workload closed its connection'));
    });
    pools.begin(entry);
    try {
      entry.pool.dispatch({
        path: upstream.path, method: (req.method ?? 'GET') as Dispatcher.HttpMethod, headers: upstream.headers, body,
        ...(upstream.closeAfter ? { reset: true } : {}),
      }, handler);
    } catch (err) {
      // Headers are checked before this; whatever still throws is refused, not fatal.
      settle();
      this.#deps.log.error('cannot build the upstream request for %s: %s', sni, (err as Error).message);
      this.#refuse(req, res, session, { status: 502, code: 'upstream-failed', message: `upstream ${sni}: the request could not be built` });
    }
  }

  /** Sends an admitted request upstream with https.request (upstreamAgent) and forwards the response. */
  #forwardByAgent(req: http.IncomingMessage, res: http.ServerResponse, session: Session, admitted: Admitted, sendContinue: () => void): void {
    const { route, upstream } = admitted;
    const { orig, sni } = session;

    const options: PartitionedRequestOptions = {
      agent: this.#deps.upstreamAgent,
      partition: admitted.partition,
      host: orig.address,
      port: orig.port,
      servername: sni,
      method: req.method,
      path: upstream.path,
      headers: closingHeaders(upstream.headers, upstream.closeAfter) as unknown as http.OutgoingHttpHeaders,
      setHost: false,
    };
    let upstreamReq: http.ClientRequest;
    const sentAt = performance.now();
    /** The upstream's status, once its head came. */
    let status = 0;
    /** The request went out with its credential: written on a verified TLS connection (or answered). */
    const sent = () => status > 0 || (upstreamReq?.socket as tls.TLSSocket | null | undefined)?.authorized === true;
    let audited = false;
    const mask = responseMask(admitted);
    const audit = (reason?: InjectOutcome) => {
      if (audited) return;
      audited = true;
      this.#auditSent(session, req, admitted, status, reason);
      if (!reason) this.#deps.observer?.injected(route.workload.name, route.service.name);
    };
    try {
      upstreamReq = https.request(options);
    } catch (err) {
      // Headers are checked before this; whatever still throws is refused, not fatal.
      this.#deps.log.error('cannot build the upstream request for %s: %s', sni, (err as Error).message);
      return this.#refuse(req, res, session, { status: 502, code: 'upstream-failed', message: `upstream ${sni}: the request could not be built` });
    }
    upstreamReq.on('response', (upstreamRes) => {
      this.#deps.observer?.upstreamLatency(route.workload.name, route.service.name, (performance.now() - sentAt) / 1000);
      status = upstreamRes.statusCode ?? 502;
      neverReuseUnfinished(upstreamReq, upstreamRes, upstream.body ? undefined : req);
      const list = downstreamResponseHeaders(upstreamRes.rawHeaders);
      let statusMessage = upstreamRes.statusMessage;
      if (mask) {
        mask.pairs(list);
        if (statusMessage !== undefined) statusMessage = mask.text(statusMessage);
      }
      try {
        res.writeHead(status, statusMessage, list);
      } catch (err) {
        this.#deps.log.debug('response from %s not forwardable: %s', sni, (err as Error).message);
        audit('response-cut');
        upstreamReq.destroy();
        res.destroy();
        return;
      }
      // A streamed response (server-sent events, chunked) shows its status
      // and headers now, not with its first event: Node would hold them
      // until the first body write. Each chunk is then written as it comes.
      if (upstreamRes.headers['content-length'] === undefined) res.flushHeaders();
      // pipe(), not pipeline(): this is the per-request hot path, and
      // pipeline's abort-signal plumbing costs more than the forwarding.
      if (mask) upstreamRes.pipe(new MaskingStream(mask)).pipe(res);
      else upstreamRes.pipe(res);
      upstreamRes.once('error', (err) => {
        this.#deps.log.debug('response stream from %s ended early: %s', sni, err.message);
        audit('response-cut');
        res.destroy(err);
      });
      res.once('finish', () => audit());
    });
    upstreamReq.on('continue', sendContinue);
    upstreamReq.on('error', (err) => {
      if (res.headersSent) {
        audit('response-cut');
        res.destroy(err);
        return;
      }
      audited = true;
      this.#deps.log.debug('upstream %s (%s:%d) failed: %s', sni, orig.address, orig.port, err.message);
      this.#refuse(req, res, session, upstreamFailed(sni, err, sent()), sent() ? admitted : undefined);
    });
    if (upstream.body) upstreamReq.end(upstream.body);
    else {
      // A chunked upload may be a stream the upstream answers as it goes: its head goes now, not with the first chunk.
      if (req.headers['transfer-encoding'] !== undefined) upstreamReq.flushHeaders();
      req.pipe(upstreamReq);
    }
    // A workload that goes away mid-request must not leave a half-sent
    // request upstream: destroying the request closes its connection, which
    // is then never reused.
    req.once('error', (err) => upstreamReq.destroy(err));
    res.once('close', () => {
      if (res.writableFinished) return;
      if (sent()) audit('workload-closed');
      upstreamReq.destroy();
    });
  }

  /**
   * A WebSocket upgrade: refused like any request (and anything that is not
   * a WebSocket upgrade, 501), else sent upstream on a connection of its
   * own and, on 101, relayed both ways (controller/proxy/upgrade.ts).
   */
  async #upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
    this.#arrived(req);
    const session = this.#sessions.get(socket);
    if (!session) {
      socket.destroy();
      return;
    }
    // Pipelined after other requests: their responses go first, in order.
    // Behind a refused one (whose refusal closes the connection), never sent.
    await this.#idle(socket);
    if (socket.destroyed || this.#behindRefusal(req)) {
      socket.destroy();
      return;
    }
    const refuse = (refusal: Refusal) => {
      this.#count(refusal.code, session);
      this.#audit(session, req, { decision: 'deny', status: refusal.status, reason: refusal.code });
      this.#refuseRaw(socket, refusal);
      // As Node's server does after a last response: closed once the refusal is flushed, not left half-open.
      socket.once('finish', () => socket.destroy());
    };
    const problem = webSocketUpgradeProblem(req);
    if (problem) return refuse(problem);
    const admitted = await this.#admit(session, req, req, { upgrade: true });
    if (!('route' in admitted)) return refuse(admitted);
    if (socket.destroyed || this.#behindRefusal(req)) {
      socket.destroy();
      return;
    }
    const { route, upstream } = admitted;
    const inject = route.binding.inject;
    const audited = {
      credential: inject.credential,
      credentialVersion: upstream.credentialVersion,
      leaseId: upstream.leaseId,
      accessKeyId: upstream.accessKeyId,
    };
    openUpgrade(socket, head, {
      address: session.orig.address,
      port: session.orig.port,
      servername: session.sni,
      secureContext: this.#deps.upstreamAgent.options.secureContext,
      path: upstream.path,
      headers: upstream.headers,
      ...(upstream.masked ? { masked: upstream.masked } : {}),
      idleMs: this.#limits.idleTimeoutMs,
    }, {
      answered: (status, masked) => {
        this.#audit(session, req, { decision: 'inject', status, ...audited, ...(status === 101 ? { reason: 'websocket' } : {}), ...(masked ? { masked } : {}) });
        this.#deps.observer?.injected(route.workload.name, route.service.name);
        if (masked) this.#deps.observer?.reflected(route.workload.name, route.service.name, masked);
      },
      failed: (err, connected) => {
        this.#deps.log.debug('upstream %s (%s:%d) failed: %s', session.sni, session.orig.address, session.orig.port, err.message);
        refuse(upstreamFailed(session.sni, err, connected));
      },
      closed: (bytesUp, bytesDown, durationMs, why) => {
        this.#audit(session, req, { decision: 'close', status: 101, credential: inject.credential, reason: why, bytesUp, bytesDown, durationMs });
      },
      // A reload that removes or changes the binding closes the tunnel at its next chunk either way.
      stillBound: () => this.#currentRoute(session) !== undefined,
    });
  }

  /** Tracks `res` as unanswered on `socket` until it closes. */
  #pending(socket: net.Socket, res: http.ServerResponse): void {
    let inFlight = this.#inFlight.get(socket);
    if (!inFlight) {
      inFlight = { n: 0, waiters: [] };
      this.#inFlight.set(socket, inFlight);
    }
    const counted = inFlight;
    counted.n++;
    res.once('close', () => {
      if (--counted.n > 0) return;
      for (const wake of counted.waiters.splice(0)) wake();
    });
  }

  /** Resolves once every request on `socket` so far has been answered. */
  async #idle(socket: net.Socket): Promise<void> {
    const inFlight = this.#inFlight.get(socket);
    if (!inFlight || inFlight.n === 0) return;
    await new Promise<void>((resolve) => inFlight.waiters.push(resolve));
  }

  /**
   * Whether a request may go upstream, and with what: the route in force
   * now, checkRequest(), the audit log's health, the credential and its
   * injection. The same for HTTP/1.1 requests, WebSocket upgrades (`upgrade`)
   * and HTTP/2 streams. `beforeBodyRead` runs if the body must be read first
   * (SigV4 hashing it): #forward answers Expect: 100-continue there.
   *
   * Answers at once (no promise) when the injection is a header and the
   * credential is at hand (CredentialSource.peek): most requests of a
   * kept-alive connection; otherwise once the credential is fetched and,
   * for SigV4, the body read and signed.
   */
  #admit(
    session: Session,
    head: RequestHead,
    source: http.IncomingMessage | StreamedRequest,
    opts: { beforeBodyRead?: () => void; upgrade?: boolean } = {},
  ): Admitted | Refusal | Promise<Admitted | Refusal> {
    const route = this.#currentRoute(session);
    if (!route) {
      return {
        status: 403, code: 'binding-changed',
        message: 'the binding this connection was made under was removed or changed by a policy reload; open a new connection',
      };
    }
    const { orig, sni } = session;
    const inject = route.binding.inject;
    const injected = inject.kind === 'header' ? inject.name.toLowerCase() : inject.kind === 'sigv4' ? undefined : 'authorization';
    const refusal = checkRequest(head, sni, orig.port, injected, opts.upgrade);
    if (refusal) return refusal;

    // No audit, no injection: a request that could not be recorded is not sent.
    if (!this.#deps.audit.writable) {
      return { status: 503, code: 'audit-unavailable', message: 'the audit log cannot be written now; retry later' };
    }
    if (inject.kind !== 'sigv4') {
      const held = this.#deps.heldCredential?.(inject.credential);
      if (held) {
        try {
          return this.#admission(route, held, injectHeader(asStreamedRequest(source), inject, held, { host: sni, port: orig.port }));
        } catch (err) {
          return this.#credentialRefusal(inject.credential, err);
        }
      }
    }
    return this.#admitLater(session, route, source, opts.beforeBodyRead);
  }

  /** #admit's end when the credential must be fetched, or the body read and signed. */
  async #admitLater(session: Session, route: Route, source: http.IncomingMessage | StreamedRequest, beforeBodyRead: (() => void) | undefined): Promise<Admitted | Refusal> {
    const inject = route.binding.inject;
    try {
      const credential = await this.#deps.credential(inject.credential);
      const upstream = await prepareUpstreamRequest(source, inject, credential, {
        host: session.sni, port: session.orig.port, sigv4BodyLimit: this.#deps.sigv4BodyLimit, sigv4BodyBudget: this.#deps.sigv4BodyBudget,
        beforeBodyRead,
      });
      return this.#admission(route, credential, upstream);
    } catch (err) {
      return this.#credentialRefusal(inject.credential, err);
    }
  }

  #admission(route: Route, credential: Credential, upstream: UpstreamRequest): Admitted {
    const inject = route.binding.inject;
    return {
      route, credential, upstream,
      workload: route.workload.name, service: route.service.name, injectKind: inject.kind, credentialName: inject.credential,
      partition: this.#partition(route, credential),
    };
  }

  /** A request the injection refused, or whose credential (`name`) could not be had. */
  #credentialRefusal(name: string, err: unknown): Refusal {
    if (err instanceof InjectionRefusal) return { status: err.status, code: err.reason, message: err.message };
    // The log gets the whole reason (it may name a file); the workload only which credential.
    this.#deps.log.error('%s', err instanceof WirekeyError ? err.message : `credential "${name}": ${String(err)}`);
    const why = err instanceof CredentialError ? 'cannot be used now' : 'is unavailable';
    return { status: 503, code: 'credential-unavailable', message: `credential "${name}" ${why}` };
  }

  /**
   * The upstream partition of `route`'s requests with `credential`:
   * workload, binding, credential version. Made once per route and
   * credential, not per request.
   */
  #partition(route: Route, credential: Credential): string {
    let c = this.#credentialSeq.get(credential);
    if (!c) {
      c = { seq: this.#nextCredentialSeq++, partitions: new WeakMap() };
      this.#credentialSeq.set(credential, c);
    }
    let name = c.partitions.get(route);
    if (name === undefined) {
      name = `${route.workload.name}\0${route.binding.name}\0${c.seq}`;
      c.partitions.set(route, name);
    }
    return name;
  }

  /**
   * Answers `refusal` and closes the connection; the request body, if any,
   * is never read. `sent`: the request had gone upstream with its
   * credential (an upstream that failed before answering): its audit line
   * is an inject line with the refusal's status and code.
   */
  #refuse(req: http.IncomingMessage, res: http.ServerResponse, session: Session, refusal: Refusal, sent?: Admission): void {
    const order = this.#order.get(req.socket as net.Socket);
    if (order) order.refused = Math.min(order.refused, this.#arrival.get(req) ?? -1);
    this.#recordRefusal(session, req, refusal, sent);
    answerRefusal(res, refusal);
  }

  /** Numbers `req` on its connection, in the order requests arrive there. */
  #arrived(req: http.IncomingMessage): void {
    const socket = req.socket as net.Socket;
    let order = this.#order.get(socket);
    if (!order) {
      order = { next: 0, refused: Infinity };
      this.#order.set(socket, order);
    }
    this.#arrival.set(req, order.next++);
  }

  /** Whether a request refused on `req`'s connection came before it (`req` is never to be sent). */
  #behindRefusal(req: http.IncomingMessage): boolean {
    const order = this.#order.get(req.socket as net.Socket);
    return order !== undefined && (this.#arrival.get(req) ?? Infinity) > order.refused;
  }

  /** Counts and audits a refused request: a deny line, or with `sent` (it had gone upstream with its credential) an inject line. */
  #recordRefusal(session: Session, req: { method?: string; url?: string }, refusal: Refusal, sent?: Admission): void {
    this.#count(refusal.code, session);
    if (sent) this.#auditSent(session, req, sent, refusal.status, refusal.code);
    else this.#audit(session, req, { decision: 'deny', status: refusal.status, reason: refusal.code });
  }

  /** A connection refused before TLS: nothing can be said to the workload but the close; the audit log says why. */
  #refuseConnection(socket: net.Socket, orig: OrigDst, workload: string, code: RefusalCode): void {
    this.#count(code);
    this.#deps.observer?.connectionRefused(workload, code);
    this.#deps.audit.record({ decision: 'deny', workload, pid: orig.pid, uid: orig.uid, reason: code });
    socket.destroy();
  }

  #internalError(req: http.IncomingMessage, res: http.ServerResponse, err: unknown): void {
    this.#deps.log.error('request to %s failed inside the proxy: %s', req.headers.host ?? '?', (err as Error)?.stack ?? String(err));
    res.destroy();
  }

  #onClientError(err: NodeJS.ErrnoException, socket: net.Socket | import('node:stream').Duplex): void {
    const session = this.#sessions.get(socket as net.Socket);
    this.#count('malformed-request', session);
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
    refuseRaw(socket, refusal);
  }

  /** Counts a refusal; with `session`, a refused request of its route (connection refusals are told to the observer apart). */
  #count(code: RefusalCode, session?: Session): void {
    this.#refused.set(code, (this.#refused.get(code) ?? 0) + 1);
    if (session) this.#deps.observer?.refused(session.route.workload.name, session.route.service.name, code);
  }

  /**
   * The inject line of a request that went upstream with its credential:
   * its response forwarded whole (no `reason`), or not (`reason`: the
   * refusal code answered instead, response-cut or workload-closed;
   * `status` 0 when no head came back).
   */
  #auditSent(session: Session, req: { method?: string; url?: string }, a: Admission, status: number, reason?: string): void {
    const masked = a.mask?.masked || undefined;
    if (masked) this.#deps.observer?.reflected(a.workload, a.service, masked);
    this.#audit(session, req, {
      decision: 'inject', status: status || undefined, credential: a.credentialName, credentialVersion: a.upstream.credentialVersion,
      leaseId: a.upstream.leaseId, accessKeyId: a.upstream.accessKeyId, reason, masked,
    }, !reason);
  }

  /**
   * The audit line of a request on `session`: who sent it and where (the
   * connection's subject), its method and target (the writer leaves the
   * query out), and `fields`; undefined fields are left out of the line.
   * `done`: of a response already forwarded whole (AuditLog.recordDone).
   */
  #audit(session: Session, req: { method?: string; url?: string }, fields: Omit<RequestAuditEvent, typeof AUDIT_SUBJECT | 'method' | 'path'>, done = false): void {
    const event: RequestAuditEvent = { [AUDIT_SUBJECT]: this.#auditSubject(session), method: req.method, path: req.url, ...fields };
    if (done) this.#deps.audit.recordDone(event);
    else this.#deps.audit.record(event);
  }

  /** The first fields of the audit lines of `session`'s requests, serialised once per connection (and route: a reload may give it another). */
  #auditSubject(session: Session): string {
    const route = session.route;
    if (session.audit?.route !== route) {
      session.audit = {
        route,
        subject: auditSubject({ workload: route.workload.name, pid: session.orig.pid, uid: session.orig.uid, service: route.service.name, host: session.sni }),
      };
    }
    return session.audit.subject;
  }
}
