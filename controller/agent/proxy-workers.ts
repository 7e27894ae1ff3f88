/**
 * The proxy on several cores: N worker threads, each a ProxyServer on its
 * own SO_REUSEPORT sockets on the proxy port (the kernel spreads
 * connections across them), while this thread keeps the kernel maps, the
 * policy, credentials, the local CA, the audit log and metrics, and answers
 * the workers (controller/proxy/worker-protocol.ts).
 *
 * - Every worker listens before listen() returns (and the datapath attaches);
 *   one that cannot fails the start.
 * - applyPlan() returns once every worker serves the new routes.
 * - Credentials a worker holds are checked here every second, and a worker
 *   is told to ask again for any that changed (rotation) or went away.
 * - A worker that dies is logged and started again on fresh sockets; its
 *   open connections are lost, the other workers serve meanwhile.
 * - --max-handshakes and --max-connections-per-workload bound all workers
 *   together: handshakes with a counter they share, connections per
 *   workload here, when a worker asks who a connection is. Each worker has
 *   1/N of --sigv4-body-memory (rounded up).
 */
import { Worker } from 'node:worker_threads';
import { closeSync } from 'node:fs';
import type { AuditLog } from '../audit/audit-log.js';
import type { Credential } from '../credentials/credential.js';
import { CredentialError, WirekeyError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Plan } from '../policy/types.js';
import { handshakesPerWorkload, type IdentifiedConnection, type ProxyObserver, type ProxyStats } from '../proxy/proxy-server.js';
import {
  SHARED_AUDIT_WRITABLE, SHARED_HANDSHAKES, SHARED_WORKER_HANDSHAKES,
  type AskAnswer, type FromWorker, type ToWorker, type WireCredential, type WireError, type WorkerInit, type WorkerSettings,
} from '../proxy/worker-protocol.js';

export interface ProxyWorkersOptions extends WorkerSettings {
  workers: number;
  plan: Plan;
  /** The kernel's record of a connection, with the workload name under the table in force here. @throws when none can vouch for it now. */
  identify(address: string, port: number): IdentifiedConnection | null;
  credential(name: string): Promise<Credential>;
  /** When the source of `name` stops serving its value (epoch ms), if it does. */
  credentialExpiry(name: string): number | undefined;
  leaf(host: string): Promise<{ certPem: string; keyPem: string; renewAt: number }>;
  /** A TCP socket bound to address:port with SO_REUSEPORT and listening: its fd. */
  listener(address: string, port: number): number;
  audit: AuditLog;
  log: Logger;
  observer: ProxyObserver;
}

/** Stats of the workers together, and connections accepted by each. */
export type WorkersStats = ProxyStats & { acceptedByWorker: number[] };

interface Slot {
  index: number;
  worker: Worker;
  stats: ProxyStats;
  /** Counted by workers this slot held before (restarts). */
  acceptedBefore: number;
  /** Who waits for this worker's answer to a routes or flush message, by sequence number. */
  waiting: Map<number, () => void>;
  exited: Promise<void>;
  /** Its open connections counted in ProxyWorkers#open, by workload: taken back if it dies. */
  open: Map<string, number>;
  /** The plan it was started with or last sent. */
  plan: Plan;
  /** Until its thread has exited. */
  alive: boolean;
}

const CREDENTIAL_CHECK_MS = 1000;
const AUDIT_HEALTH_MS = 250;

function wireError(err: unknown): WireError {
  const e = err as Error;
  if (err instanceof CredentialError) return { message: e.message, credential: err.credential };
  if (err instanceof WirekeyError) return { message: e.message, code: err.code };
  return { message: e?.message ?? String(err) };
}

export class ProxyWorkers {
  readonly #o: ProxyWorkersOptions;
  readonly #slots: Slot[] = [];
  readonly #shared: Int32Array;
  /** Open connections per workload, all workers together. */
  readonly #open = new Map<string, number>();
  #plan: Plan;
  #port = 0;
  #seq = 0;
  #closing = false;
  #timer: NodeJS.Timeout | undefined;
  #ticks = 0;
  /** Credential objects -> the id workers know them by. */
  readonly #ids = new WeakMap<Credential, number>();
  #nextId = 1;
  /** What workers were last sent, by credential name: the id of the agent's object. */
  readonly #sent = new Map<string, number>();

  constructor(opts: ProxyWorkersOptions) {
    this.#o = opts;
    this.#plan = opts.plan;
    this.#shared = new Int32Array(new SharedArrayBuffer(4 * (SHARED_WORKER_HANDSHAKES + opts.workers)));
  }

  get port(): number {
    return this.#port;
  }

  /**
   * Starts the workers, each listening on its own sockets on `port`.
   * @throws WirekeyError WK_PROXY_LISTEN when one cannot listen (all are stopped first).
   */
  async listen(port: number): Promise<void> {
    this.#port = port;
    this.#publishAuditHealth();
    try {
      for (let i = 0; i < this.#o.workers; i++) this.#slots.push(await this.#startWorker(i, 0));
    } catch (err) {
      await this.close();
      throw err;
    }
    this.#timer = setInterval(() => this.#tick(), AUDIT_HEALTH_MS);
    this.#timer.unref();
  }

  async #startWorker(index: number, acceptedBefore: number): Promise<Slot> {
    const fds: number[] = [];
    try {
      for (const address of ['127.0.0.1', '::1']) fds.push(this.#o.listener(address, this.#port));
    } catch (err) {
      for (const fd of fds) closeSync(fd);
      throw new WirekeyError('WK_PROXY_LISTEN', `proxy worker ${index} cannot listen on port ${this.#port}: ${(err as Error).message}`, { cause: err });
    }
    const share = (n: number) => Math.ceil(n / this.#o.workers);
    const init: WorkerInit = {
      index,
      port: this.#port,
      fds: { '127.0.0.1': fds[0] as number, '::1': fds[1] as number },
      plan: this.#plan,
      shared: this.#shared.buffer as SharedArrayBuffer,
      // Each thread bounds a workload's share of the handshakes on its own: together, at most half of all.
      limits: { ...this.#o.limits, maxHandshakesPerWorkload: handshakesPerWorkload(this.#o.limits.maxHandshakes, this.#o.workers) },
      http2: this.#o.http2,
      h1FastPath: this.#o.h1FastPath,
      ...(this.#o.h2Limits ? { h2Limits: this.#o.h2Limits } : {}),
      ...(this.#o.upstreamCaFile ? { upstreamCaFile: this.#o.upstreamCaFile } : {}),
      sigv4BodyLimit: this.#o.sigv4BodyLimit,
      sigv4BodyMemory: share(this.#o.sigv4BodyMemory),
    };
    const worker = new Worker(new URL('../proxy/proxy-worker.js', import.meta.url), {
      workerData: { wirekeyProxyWorker: init },
      // The worker's own stdout and stderr are not used: lines come as messages.
      stdout: false,
      stderr: false,
    });
    let exit!: () => void;
    const slot: Slot = {
      index, worker, acceptedBefore, waiting: new Map(), open: new Map(), plan: init.plan, alive: true,
      stats: { refused: {}, handshakes: 0, connections: {}, accepted: 0 },
      exited: new Promise<void>((r) => (exit = r)),
    };
    let listening = false;
    const started = new Promise<void>((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'listening') {
          listening = true;
          resolve();
        } else if (m.t === 'listen-failed') {
          reject(new WirekeyError('WK_PROXY_LISTEN', `proxy worker ${index}: ${m.message}`));
        } else {
          this.#onMessage(slot, m);
        }
      });
      worker.on('error', (err) => {
        this.#o.log.error('proxy worker %d failed: %s', index, err.stack ?? err.message);
        if (!listening) reject(new WirekeyError('WK_PROXY_LISTEN', `proxy worker ${index} failed to start: ${err.message}`, { cause: err }));
      });
      worker.on('exit', (code) => {
        slot.alive = false;
        exit();
        // Whoever waited on it: its replacement starts with the plan in force.
        for (const wake of slot.waiting.values()) wake();
        slot.waiting.clear();
        if (!listening) {
          // Its sockets are not closed here: the worker may have closed them
          // already, and their numbers may be another file's by now. At most
          // two per failed start stay open.
          reject(new WirekeyError('WK_PROXY_LISTEN', `proxy worker ${index} exited (code ${code}) before listening`));
          return;
        }
        this.#forget(slot);
        if (!this.#closing) this.#restart(slot, code);
      });
    });
    try {
      await started;
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    return slot;
  }

  /** A worker that died: said so, and started again on fresh sockets (the others serve meanwhile). */
  #restart(slot: Slot, code: number): void {
    this.#o.log.error('proxy worker %d exited (code %d): its open connections were lost; starting it again', slot.index, code);
    const at = this.#slots.indexOf(slot);
    this.#startWorker(slot.index, slot.acceptedBefore + slot.stats.accepted).then((next) => {
      if (this.#closing) {
        void this.#closeSlot(next);
        return;
      }
      if (at >= 0) this.#slots[at] = next;
      this.#o.log.info('proxy worker %d started again', slot.index);
      // A reload while it started: it gets the plan in force now.
      if (next.plan !== this.#plan) {
        next.plan = this.#plan;
        this.#post(next, { t: 'routes', seq: ++this.#seq, plan: this.#plan });
      }
    }, (err: unknown) => {
      this.#o.log.error('proxy worker %d cannot be started again: %s; the port is served by the other workers', slot.index, (err as Error).message);
    });
  }

  /** What a worker that died held: its handshakes and its open connections. */
  #forget(slot: Slot): void {
    const held = Atomics.exchange(this.#shared, SHARED_WORKER_HANDSHAKES + slot.index, 0);
    Atomics.sub(this.#shared, SHARED_HANDSHAKES, held);
    for (const [workload, n] of slot.open) this.#count(this.#open, workload, -n);
    slot.open.clear();
  }

  #count(map: Map<string, number>, workload: string, by: number): void {
    const n = (map.get(workload) ?? 0) + by;
    if (n > 0) map.set(workload, n);
    else map.delete(workload);
  }

  /** The kernel's record of a connection a worker accepted, counted against its workload's connection limit. */
  #identify(slot: Slot, address: string, port: number): IdentifiedConnection | null {
    const orig = this.#o.identify(address, port);
    if (!orig) return null;
    const workload = orig.workloadName ?? `#${orig.workloadId}`;
    if ((this.#open.get(workload) ?? 0) >= this.#o.limits.maxConnectionsPerWorkload) return { ...orig, workloadName: workload, admission: 'too-many-connections' };
    this.#count(this.#open, workload, 1);
    this.#count(slot.open, workload, 1);
    return { ...orig, workloadName: workload, admission: 'counted' };
  }

  #onMessage(slot: Slot, m: FromWorker): void {
    switch (m.t) {
      case 'ask':
        void this.#answer(slot, m.id, m);
        return;
      case 'batch': {
        this.#o.audit.recordBatch(m.audit);
        for (const workload of m.closed) {
          if (!slot.open.has(workload)) continue;
          this.#count(slot.open, workload, -1);
          this.#count(this.#open, workload, -1);
        }
        for (const [method, ...args] of m.observed) (this.#o.observer[method] as (...a: unknown[]) => void)(...args);
        for (const [level, line] of m.logs) this.#o.log[level]('%s', line);
        slot.stats = m.stats;
        this.#publishAuditHealth();
        return;
      }
      case 'routes-applied':
      case 'flushed': {
        const wake = slot.waiting.get(m.seq);
        slot.waiting.delete(m.seq);
        wake?.();
        return;
      }
      default:
        return;
    }
  }

  async #answer(slot: Slot, id: number, m: FromWorker & { t: 'ask' }): Promise<void> {
    let value: AskAnswer | undefined;
    let error: WireError | undefined;
    try {
      if (m.op === 'identify') value = this.#identify(slot, m.address, m.port);
      else if (m.op === 'leaf') value = await this.#o.leaf(m.host);
      else value = this.#wire(m.name, await this.#o.credential(m.name));
    } catch (err) {
      error = wireError(err);
    }
    this.#post(slot, error ? { t: 'answer', id, error } : { t: 'answer', id, value });
  }

  #wire(name: string, credential: Credential): WireCredential {
    let id = this.#ids.get(credential);
    if (id === undefined) {
      id = this.#nextId++;
      this.#ids.set(credential, id);
    }
    this.#sent.set(name, id);
    const expiresAt = this.#o.credentialExpiry(name);
    return {
      id, name: credential.name,
      ...(credential.secret ? { secret: credential.secret.reveal() } : {}),
      fields: [...credential.fields].map(([k, v]) => [k, v.reveal()]),
      ...(credential.version !== undefined ? { version: credential.version } : {}),
      ...(credential.leaseId !== undefined ? { leaseId: credential.leaseId } : {}),
      ...(expiresAt !== undefined ? { expiresAt } : {}),
    };
  }

  #post(slot: Slot, m: ToWorker): void {
    try {
      slot.worker.postMessage(m);
    } catch {
      // Exited meanwhile: its replacement asks again.
    }
  }

  #publishAuditHealth(): void {
    Atomics.store(this.#shared, SHARED_AUDIT_WRITABLE, this.#o.audit.writable ? 1 : 0);
  }

  #tick(): void {
    this.#publishAuditHealth();
    if (++this.#ticks % (CREDENTIAL_CHECK_MS / AUDIT_HEALTH_MS) === 0) void this.#checkCredentials();
  }

  /** Tells the workers which credentials they hold changed (rotated, expired, gone). */
  async #checkCredentials(): Promise<void> {
    const changed: string[] = [];
    for (const [name, id] of this.#sent) {
      let now: number | undefined;
      try {
        now = this.#ids.get(await this.#o.credential(name));
      } catch {
        now = undefined;
      }
      if (now !== id) {
        changed.push(name);
        this.#sent.delete(name);
      }
    }
    if (changed.length) for (const slot of this.#slots) this.#post(slot, { t: 'credentials', names: changed });
  }

  /** Sends `m` (with a fresh sequence number) to every worker and waits for each to answer it, or to exit. */
  async #everyWorker(make: (seq: number) => ToWorker): Promise<void> {
    const seq = ++this.#seq;
    await Promise.all(this.#slots.filter((slot) => slot.alive).map((slot) => new Promise<void>((resolve) => {
      slot.waiting.set(seq, resolve);
      this.#post(slot, make(seq));
    })));
  }

  /**
   * The routes of `plan` in force on every worker when this resolves (a
   * worker that exits meanwhile is started again with it). Credentials they
   * hold are asked for again, as the sources may have changed with the plan.
   */
  async applyPlan(plan: Plan): Promise<void> {
    this.#plan = plan;
    this.#sent.clear();
    for (const slot of this.#slots) slot.plan = plan;
    await this.#everyWorker((seq) => ({ t: 'routes', seq, plan }));
  }

  /** Once every worker has sent what it recorded and counted so far (audit lines, metrics, stats). */
  async settle(): Promise<void> {
    await this.#everyWorker((seq) => ({ t: 'flush', seq }));
  }

  stats(): WorkersStats {
    const total: WorkersStats = {
      refused: {}, handshakes: Atomics.load(this.#shared, SHARED_HANDSHAKES), connections: Object.fromEntries(this.#open), accepted: 0, acceptedByWorker: [],
    };
    for (const slot of this.#slots) {
      const s = slot.stats;
      for (const [code, n] of Object.entries(s.refused)) total.refused[code as keyof ProxyStats['refused']] = (total.refused[code as keyof ProxyStats['refused']] ?? 0) + (n ?? 0);
      const accepted = slot.acceptedBefore + s.accepted;
      total.accepted += accepted;
      total.acceptedByWorker[slot.index] = accepted;
    }
    return total;
  }

  /** Closes every worker's sockets and connections; what they recorded is written before this resolves. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await Promise.all(this.#slots.splice(0).map((slot) => this.#closeSlot(slot)));
  }

  async #closeSlot(slot: Slot): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      slot.worker.on('message', (m: FromWorker) => m.t === 'closed' && resolve());
      void slot.exited.then(resolve);
    });
    this.#post(slot, { t: 'close' });
    await closed;
    await slot.worker.terminate();
  }
}
