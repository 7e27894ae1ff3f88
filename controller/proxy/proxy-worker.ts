/**
 * A proxy worker thread: a ProxyServer on this worker's own SO_REUSEPORT
 * sockets, whose dependencies are answered by the agent's thread
 * (worker-protocol.ts). What the worker keeps:
 *
 * - the routes of the plan the agent last sent (acknowledged once in force);
 * - credentials, per name while the agent's object is the same (one value,
 *   one object: upstream pools are partitioned by it), dropped when the agent
 *   says they changed and at the end of a lease;
 * - TLS contexts for the leaf certificates the agent's CA minted, until
 *   their renewal time.
 *
 * Audit lines, metrics and log lines go to the agent's thread once per turn
 * of the event loop; the audit log's health is read from a shared flag.
 */
import { parentPort, workerData } from 'node:worker_threads';
import tls from 'node:tls';
import { format } from 'node:util';
import { auditFields, type AuditRecord, type AuditSink } from '../audit/audit-log.js';
import type { Credential } from '../credentials/credential.js';
import { Secret } from '../credentials/secret.js';
import { CredentialError, WirekeyError } from '../errors.js';
import type { Logger, LogLevel } from '../log.js';
import { ByteBudget } from '../inject/byte-budget.js';
import { ProxyServer, type IdentifiedConnection, type ProxyObserver, type ProxyShared } from './proxy-server.js';
import { RouteTable } from './routes.js';
import { createUpstreamAgent, upstreamSecureContext } from './upstream.js';
import { UpstreamH2Pool } from './upstream-h2.js';
import {
  SHARED_AUDIT_WRITABLE, SHARED_HANDSHAKES, SHARED_WORKER_HANDSHAKES,
  type AskAnswer, type AskOp, type FromWorker, type ObserverCall, type ToWorker, type WireCredential, type WireError, type WorkerBatch, type WorkerInit,
} from './worker-protocol.js';

/** Runs the worker on its port; returns once it listens (or has said it cannot). */
export async function runProxyWorker(init: WorkerInit, port: import('node:worker_threads').MessagePort): Promise<void> {
  const post = (m: FromWorker) => port.postMessage(m);
  let routes = new RouteTable(init.plan);
  const shared = new Int32Array(init.shared);
  const mine = SHARED_WORKER_HANDSHAKES + init.index;

  // ---- asking the agent's thread ---------------------------------------------
  let nextAsk = 1;
  const asked = new Map<number, { resolve: (v: AskAnswer) => void; reject: (e: Error) => void }>();
  const ask = (op: AskOp): Promise<AskAnswer> => new Promise((resolve, reject) => {
    const id = nextAsk++;
    asked.set(id, { resolve, reject });
    post({ t: 'ask', id, ...op });
  });
  const wireError = (e: WireError): Error =>
    e.credential !== undefined ? new CredentialError(e.credential, e.message.replace(/^credential "[^"]*": /, ''))
      : e.code ? new WirekeyError(e.code, e.message) : new Error(e.message);

  // ---- what goes back, once per turn -------------------------------------------
  let batch: WorkerBatch | undefined;
  let proxy: ProxyServer | undefined;
  const flush = () => {
    const b = batch;
    batch = undefined;
    if (!b) return;
    if (proxy) b.stats = proxy.stats();
    post(b);
  };
  const pending = (): WorkerBatch => {
    if (!batch) {
      batch = { t: 'batch', audit: [], closed: [], observed: [], logs: [], stats: { refused: {}, handshakes: 0, connections: {}, accepted: 0 } };
      setImmediate(flush);
    }
    return batch;
  };
  const logAt = (level: LogLevel) => (msg: string, ...args: unknown[]) => void pending().logs.push([level, format(msg, ...args)]);
  const log: Logger = { debug: logAt('debug'), info: logAt('info'), warn: logAt('warn'), error: logAt('error') };
  const observe = (...call: ObserverCall) => void pending().observed.push(call);
  const observer: ProxyObserver = {
    injected: (...a) => observe('injected', ...a),
    refused: (...a) => observe('refused', ...a),
    upstreamLatency: (...a) => observe('upstreamLatency', ...a),
    reflected: (...a) => observe('reflected', ...a),
    connectionRefused: (...a) => observe('connectionRefused', ...a),
    unidentified: () => observe('unidentified'),
    h1HandedOff: (...a) => observe('h1HandedOff', ...a),
    egress: (...a) => observe('egress', ...a),
  };
  const audit: AuditSink = {
    get writable(): boolean {
      return Atomics.load(shared, SHARED_AUDIT_WRITABLE) === 1;
    },
    // Serialised here: the agent's thread only adds the time (and a structured clone would drop AUDIT_SUBJECT).
    record: (event: AuditRecord) => void pending().audit.push(auditFields(event)),
    recordDone: (event: AuditRecord) => void pending().audit.push(auditFields(event)),
  };

  const bounds: ProxyShared = {
    beginHandshake: (max) => {
      for (;;) {
        const n = Atomics.load(shared, SHARED_HANDSHAKES);
        if (n >= max) return false;
        if (Atomics.compareExchange(shared, SHARED_HANDSHAKES, n, n + 1) === n) break;
      }
      Atomics.add(shared, mine, 1);
      return true;
    },
    endHandshake: () => {
      Atomics.sub(shared, mine, 1);
      Atomics.sub(shared, SHARED_HANDSHAKES, 1);
    },
    connectionClosed: (workload) => void pending().closed.push(workload),
  };

  // ---- credentials and certificates -----------------------------------------------
  type Held = { id: number; credential: Credential; expiresAt?: number };
  const credentials = new Map<string, Held>();
  /** Dropped by a reload: asked again, and kept as the same object if the agent's is. */
  let stale = new Map<string, Held>();
  const heldCredential = (name: string): Credential | undefined => {
    const held = credentials.get(name);
    return held && (held.expiresAt === undefined || Date.now() < held.expiresAt) ? held.credential : undefined;
  };
  const credential = async (name: string): Promise<Credential> => {
    const now = heldCredential(name);
    if (now) return now;
    const wire = await ask({ op: 'credential', name }) as WireCredential;
    const again = credentials.get(name) ?? stale.get(name);
    // The same object of the agent's (asked twice meanwhile, or expired and served again): the same object here.
    if (again && again.id === wire.id) {
      again.expiresAt = wire.expiresAt;
      credentials.set(name, again);
      return again.credential;
    }
    const made: Credential = {
      name: wire.name,
      ...(wire.secret !== undefined ? { secret: new Secret(wire.secret) } : {}),
      fields: new Map(wire.fields.map(([k, v]) => [k, new Secret(v)])),
      ...(wire.version !== undefined ? { version: wire.version } : {}),
      ...(wire.leaseId !== undefined ? { leaseId: wire.leaseId } : {}),
    };
    credentials.set(name, { id: wire.id, credential: made, expiresAt: wire.expiresAt });
    return made;
  };
  const contexts = new Map<string, { context: Promise<tls.SecureContext>; renewAt?: number }>();
  const secureContextFor = (host: string): Promise<tls.SecureContext> => {
    const held = contexts.get(host);
    if (held && (held.renewAt === undefined || Date.now() < held.renewAt)) return held.context;
    const entry: { context: Promise<tls.SecureContext>; renewAt?: number } = {
      context: ask({ op: 'leaf', host }).then((leaf) => {
        const { certPem, keyPem, renewAt } = leaf as { certPem: string; keyPem: string; renewAt: number };
        entry.renewAt = renewAt;
        return tls.createSecureContext({ cert: certPem, key: keyPem });
      }),
    };
    // A failure is not kept: the next connection asks again.
    entry.context.catch(() => contexts.get(host) === entry && contexts.delete(host));
    contexts.set(host, entry);
    // Bounded as the CA's own cache is by the hosts bindings name (and names relayed are never minted).
    return entry.context;
  };

  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'answer': {
        const waiting = asked.get(m.id);
        asked.delete(m.id);
        if (!waiting) return;
        if (m.error) waiting.reject(wireError(m.error));
        else waiting.resolve(m.value ?? null);
        return;
      }
      case 'routes':
        routes = new RouteTable(m.plan);
        // The credential sources may have been replaced with the policy.
        stale = new Map(credentials);
        credentials.clear();
        post({ t: 'routes-applied', seq: m.seq });
        return;
      case 'credentials':
        for (const name of m.names) {
          credentials.delete(name);
          stale.delete(name);
        }
        return;
      case 'flush':
        flush();
        post({ t: 'flushed', seq: m.seq });
        return;
      case 'close':
        void (async () => {
          await proxy?.close();
          flush();
          post({ t: 'closed' });
          port.close();
        })();
        return;
    }
  });

  proxy = new ProxyServer({
    identify: (address, p) => ask({ op: 'identify', address, port: p }) as Promise<IdentifiedConnection | null>,
    routes: () => routes,
    secureContextFor,
    credential,
    heldCredential,
    upstreamAgent: createUpstreamAgent({ caFile: init.upstreamCaFile }),
    sigv4BodyLimit: init.sigv4BodyLimit,
    sigv4BodyBudget: new ByteBudget(init.sigv4BodyMemory),
    limits: init.limits,
    http2: init.http2,
    h1FastPath: init.h1FastPath,
    h2Limits: init.h2Limits,
    upstreamH2: new UpstreamH2Pool({ secureContext: upstreamSecureContext({ caFile: init.upstreamCaFile }) }),
    audit,
    log,
    observer,
    shared: bounds,
  });
  try {
    await proxy.listen(init.port, init.fds);
  } catch (err) {
    flush();
    post({ t: 'listen-failed', message: (err as Error).message });
    return;
  }
  post({ t: 'listening' });
}

if (parentPort && (workerData as { wirekeyProxyWorker?: WorkerInit } | undefined)?.wirekeyProxyWorker) {
  const init = (workerData as { wirekeyProxyWorker: WorkerInit }).wirekeyProxyWorker;
  void runProxyWorker(init, parentPort as unknown as import('node:worker_threads').MessagePort);
}
