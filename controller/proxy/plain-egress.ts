/**
 * The plaintext half of egress by name: a restricted workload's
 * connection on a port where a `tls: false` name rule allows names is
 * handed to Node's HTTP parser, and each request on it is judged by its
 * own Host under the plan in force when it arrives (a workload can
 * pipeline a second request naming another host on a keep-alive
 * connection). An allowed request is checked like a terminated one and
 * forwarded, with the proxy's own Host and framing, to an address its
 * Host resolves to; any other is refused (403 egress-name-not-allowed,
 * with `x-wirekey-error`) and the connection closed, and nothing
 * pipelined after it is forwarded. No credential is ever added here:
 * plaintext bindings are the kernel datapath's.
 */
import net from 'node:net';
import http from 'node:http';
import type { Logger } from '../log.js';
import type { AuditEvent, AuditSink } from '../audit/audit-log.js';
import type { OrigDst } from '../datapath/datapath.js';
import type { RouteTable } from './routes.js';
import type { PlanEgress, PlanEgressRule } from '../policy/types.js';
import { answerRefusal, refuseRaw, upstreamFailed } from './refusal-response.js';
import type { Refusal, RefusalCode } from '../refusals.js';
import { egressAllowsName } from '../policy/egress.js';
import { downstreamResponseHeaders, framingHeaders, upstreamRequestHeaders } from '../http/headers.js';
import { checkPlainRequest } from './request-checks.js';
import { createPlainUpstreamAgent, type PartitionedHttpAgent, type PartitionedRequestOptions } from './upstream.js';
import type { EgressDecision } from './egress-decision.js';

export interface PlainEgressDeps {
  /** The routes of the plan in force (asked on every request). */
  routes(): RouteTable;
  audit: AuditSink;
  log: Logger;
  observer?: { egress(workload: string, rule: string | undefined, decision: EgressDecision): void };
  /** Where a request for an allowed `name` goes (pickAddress over the proxy's bounded resolver); undefined: nowhere. */
  addressFor(name: string, orig: OrigDst, egress: PlanEgress): Promise<string | undefined>;
  /** Counts a refusal by code (the proxy's totals, as `wirekey status` shows them). */
  count(code: RefusalCode): void;
  /** A connection with no bytes either way for this long is closed (ms). */
  idleTimeoutMs: number;
  /** The agent for the proxy's upstream requests; default: createPlainUpstreamAgent(). */
  agent?: PartitionedHttpAgent;
}

/** A restricted workload's plaintext connection, handed to the HTTP parser so each request's Host is judged. */
interface PlainSession {
  orig: OrigDst;
  /** The workload's name (ids may be renumbered by a reload; names are how the plan in force is asked). */
  workload: string;
  /** Requests seen on the connection, in order. */
  requests: number;
  /**
   * The number of the request that was refused: whatever was pipelined
   * after it is never forwarded (the requests before it are answered).
   */
  refusedAt: number | undefined;
}

/** Whether request `n` of `session` came after a refused one. */
function pipelinedAfterRefusal(session: PlainSession, n: number): boolean {
  return session.refusedAt !== undefined && n > session.refusedAt;
}

/** Plaintext egress requests carry no credential: nothing extra to drop (hop-by-hop, framing and routing hints still go). */
const NO_DROP: ReadonlySet<string> = new Set();

export class PlainEgress {
  readonly #deps: PlainEgressDeps;
  readonly #http: http.Server;
  readonly #sessions = new WeakMap<net.Socket, PlainSession>();
  readonly #agent: PartitionedHttpAgent;

  constructor(deps: PlainEgressDeps) {
    this.#deps = deps;
    this.#agent = deps.agent ?? createPlainUpstreamAgent();
    this.#http = http.createServer({ requireHostHeader: true, insecureHTTPParser: false }, (req, res) => {
      this.#forward(req, res).catch((err: unknown) => {
        this.#deps.log.error('plaintext request to %s failed inside the proxy: %s', req.headers.host ?? '?', (err as Error)?.stack ?? String(err));
        res.destroy();
      });
    });
    this.#http.timeout = deps.idleTimeoutMs;
    this.#http.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
      const session = this.#sessions.get(socket);
      this.#deps.count('malformed-request');
      if (session) {
        session.refusedAt ??= session.requests + 1;
        this.#deps.audit.record({
          decision: 'deny', workload: session.workload, pid: session.orig.pid, uid: session.orig.uid,
          address: session.orig.address, port: session.orig.port, status: 400, reason: `malformed-request: ${err.code ?? 'parse error'}`,
        });
      }
      refuseRaw(socket, { status: 400, code: 'malformed-request', message: `malformed request refused (${err.code ?? 'parse error'})` });
    });
    this.#http.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
      const session = this.#sessions.get(socket);
      this.#deps.count('upgrade-unsupported');
      if (session) {
        session.refusedAt ??= ++session.requests;
        this.#audit(session, req, { decision: 'deny', status: 501, reason: 'upgrade-unsupported' });
      }
      refuseRaw(socket, { status: 501, code: 'upgrade-unsupported', message: 'protocol upgrades are not supported' });
    });
  }

  /**
   * Takes over `socket` (paused, the kernel's record `orig`, of workload
   * `workload`), whose first bytes `head` were already read: they are
   * parsed first.
   */
  accept(socket: net.Socket, head: Buffer, orig: OrigDst, workload: string): void {
    if (socket.destroyed) return;
    this.#sessions.set(socket, { orig, workload, requests: 0, refusedAt: undefined });
    socket.unshift(head);
    this.#http.emit('connection', socket);
    socket.resume();
  }

  close(): void {
    this.#http.closeAllConnections();
    this.#agent.destroy();
  }

  /**
   * A plaintext request of a restricted workload: checked like a
   * terminated one (method, header names, framing, Host), judged under the
   * plan in force now, and forwarded to an address its Host resolves to,
   * with the proxy's own Host and framing, or refused (403
   * egress-name-not-allowed) and the connection closed. Never a credential:
   * plaintext bindings are the kernel datapath's.
   */
  async #forward(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const session = this.#sessions.get(req.socket);
    const n = session ? ++session.requests : 0;
    if (!session || pipelinedAfterRefusal(session, n)) {
      // Pipelined behind a refused request: the connection is closing.
      res.destroy();
      return;
    }
    const { orig } = session;
    const checked = checkPlainRequest(req, orig.port);
    if ('code' in checked) return this.#refuse(req, res, session, n, checked);
    const egress = this.#deps.routes().workloadByName(session.workload)?.egress;
    let target: string;
    let rule: PlanEgressRule | undefined;
    if (!egress) {
      // A reload lifted the workload's restrictions (or the workload is
      // gone): like any unrestricted connection, it goes where it was going.
      target = orig.address;
    } else {
      rule = checked.name !== undefined ? egressAllowsName(egress, { name: checked.name, port: orig.port, tls: false }) : undefined;
      const address = rule && checked.name !== undefined ? await this.#deps.addressFor(checked.name, orig, egress) : undefined;
      if (req.socket.destroyed || pipelinedAfterRefusal(session, n)) return void res.destroy();
      const code: RefusalCode | undefined = !rule ? 'egress-name-not-allowed' : !address ? 'egress-name-unresolved' : undefined;
      if (code && egress.mode === 'enforce') {
        this.#deps.observer?.egress(session.workload, undefined, 'deny');
        const refusal: Refusal = code === 'egress-name-not-allowed'
          ? { status: 403, code, message: `the egress policy of this workload does not allow ${checked.name ?? 'this host'} on port ${orig.port}` }
          : { status: 502, code, message: `${checked.name} resolves to no address wirekey may connect to` };
        return this.#refuse(req, res, session, n, refusal);
      }
      if (code) {
        this.#deps.count(code);
        this.#deps.observer?.egress(session.workload, undefined, 'would-refuse');
        this.#audit(session, req, { decision: 'would-refuse', reason: code, address: orig.address });
        rule = undefined;
        target = orig.address;
      } else {
        target = address as string;
      }
    }
    const options: PartitionedRequestOptions = {
      agent: this.#agent,
      partition: `${session.workload}\0${checked.authority}`,
      host: target,
      port: orig.port,
      method: req.method,
      path: req.url,
      headers: ['Host', checked.authority, ...upstreamRequestHeaders(req.rawHeaders, NO_DROP), ...framingHeaders(req)] as unknown as http.OutgoingHttpHeaders,
      setHost: false,
    };
    let upstreamReq: http.ClientRequest;
    try {
      upstreamReq = http.request(options);
    } catch (err) {
      this.#deps.log.error('cannot build the upstream request for %s: %s', checked.authority, (err as Error).message);
      return this.#refuse(req, res, session, n, { status: 502, code: 'upstream-failed', message: `upstream ${checked.authority}: the request could not be built` });
    }
    upstreamReq.on('response', (upstreamRes) => {
      const status = upstreamRes.statusCode ?? 502;
      try {
        res.writeHead(status, upstreamRes.statusMessage, downstreamResponseHeaders(upstreamRes.rawHeaders));
      } catch (err) {
        this.#deps.log.debug('response from %s not forwardable: %s', checked.authority, (err as Error).message);
        upstreamReq.destroy();
        res.destroy();
        return;
      }
      upstreamRes.pipe(res);
      upstreamRes.once('error', (err) => res.destroy(err));
      if (rule || !egress) {
        const allowedBy = rule;
        res.once('finish', () => {
          this.#audit(session, req, { decision: allowedBy ? 'allow' : 'pass', status, rule: allowedBy?.label, address: target });
          if (allowedBy) this.#deps.observer?.egress(session.workload, allowedBy.label, 'allow');
        });
      }
    });
    // Whether the upstream connection was made: a failure after it is no longer one of reaching it.
    let connected = false;
    upstreamReq.once('socket', (s) => {
      if (s.connecting) s.once('connect', () => (connected = true));
      else connected = true;
    });
    upstreamReq.on('error', (err) => {
      if (res.headersSent) {
        res.destroy(err);
        return;
      }
      this.#deps.log.debug('upstream %s (%s:%d) failed: %s', checked.authority, target, orig.port, err.message);
      this.#refuse(req, res, session, n, upstreamFailed(checked.authority, err, connected));
    });
    req.pipe(upstreamReq);
    req.once('error', (err) => upstreamReq.destroy(err));
    res.once('close', () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
  }

  /** Answers `refusal` on a plaintext connection, audits it, and closes the connection: nothing pipelined behind it is forwarded. */
  #refuse(req: http.IncomingMessage, res: http.ServerResponse, session: PlainSession, n: number, refusal: Refusal): void {
    session.refusedAt = Math.min(session.refusedAt ?? n, n);
    this.#deps.count(refusal.code);
    this.#audit(session, req, { decision: 'deny', status: refusal.status, reason: refusal.code, address: session.orig.address });
    answerRefusal(res, refusal);
  }

  #audit(
    session: PlainSession, req: http.IncomingMessage,
    extra: Pick<AuditEvent, 'decision' | 'status' | 'reason' | 'rule' | 'address'>,
  ): void {
    const host = typeof req.headers.host === 'string' ? req.headers.host.slice(0, 255) : undefined;
    this.#deps.audit.record({
      workload: session.workload,
      pid: session.orig.pid,
      uid: session.orig.uid,
      host,
      method: req.method,
      path: req.url,
      port: session.orig.port,
      ...extra,
      dialled: extra.address !== undefined && extra.address !== session.orig.address ? session.orig.address : undefined,
    });
  }
}
