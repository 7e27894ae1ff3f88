/**
 * What the agent's thread and a proxy worker thread say to each other
 * (structured clone over the worker's port; nothing leaves the process).
 * The agent keeps the policy, credentials, kernel maps, audit log and
 * metrics; a worker serves connections with a ProxyServer of its own and
 * asks for what it does not hold.
 */
import type { LogLevel } from '../log.js';
import type { Plan } from '../policy/types.js';
import type { H2Limits } from './h2.js';
import type { IdentifiedConnection, ProxyLimits, ProxyObserver, ProxyStats } from './proxy-server.js';

/** How every worker's ProxyServer is set up (the agent's proxy options). */
export interface WorkerSettings {
  limits: ProxyLimits;
  http2: boolean;
  h1FastPath: boolean;
  h2Limits?: Partial<H2Limits>;
  upstreamCaFile?: string;
  sigv4BodyLimit: number;
  /** The memory SigV4 bodies may hold: all workers' together in the agent's options, one worker's share in WorkerInit. */
  sigv4BodyMemory: number;
}

/** The worker's start: workerData. */
export interface WorkerInit extends WorkerSettings {
  /** 0-based, for metrics and the log. */
  index: number;
  port: number;
  /** This worker's listening sockets (SO_REUSEPORT), by address. */
  fds: { '127.0.0.1': number; '::1': number };
  /** The plan whose routes are in force now. */
  plan: Plan;
  /** Int32 words shared by the agent and every worker (SHARED_*). */
  shared: SharedArrayBuffer;
}

/** Int32 word: 1 while the agent's audit log can be written (requests are refused otherwise). */
export const SHARED_AUDIT_WRITABLE = 0;
/** Int32 word: handshakes in progress in all workers together (bounded by --max-handshakes). */
export const SHARED_HANDSHAKES = 1;
/** Int32 word SHARED_WORKER_HANDSHAKES + index: those of one worker, taken back if it dies. */
export const SHARED_WORKER_HANDSHAKES = 2;

/** A credential as sent to a worker: `id` names the agent's object, so that one value stays one object in the worker. */
export interface WireCredential {
  id: number;
  name: string;
  secret?: string;
  fields: [string, string][];
  version?: string;
  leaseId?: string;
  /** When the source stops serving it (a lease's end), epoch ms. */
  expiresAt?: number;
}

export type AskOp =
  | { op: 'identify'; address: string; port: number }
  | { op: 'credential'; name: string }
  | { op: 'leaf'; host: string };

export type AskAnswer = IdentifiedConnection | null | WireCredential | { certPem: string; keyPem: string; renewAt: number };

/** An error sent back: `credential` names a CredentialError's credential. */
export interface WireError {
  message: string;
  code?: string;
  credential?: string;
}

export type ObserverCall = { [K in keyof ProxyObserver]: [K, ...Parameters<ProxyObserver[K]>] }[keyof ProxyObserver];

/** What a worker did in one turn of its event loop. */
export interface WorkerBatch {
  t: 'batch';
  /** Each event's auditFields(), written by the agent with its own lines of the same turn (AuditLog.recordBatch). */
  audit: string[];
  /** Workloads of connections counted by the agent (admission 'counted') that closed, one entry per connection. */
  closed: string[];
  observed: ObserverCall[];
  logs: [LogLevel, string][];
  stats: ProxyStats;
}

export type ToWorker =
  | { t: 'routes'; seq: number; plan: Plan }
  | { t: 'answer'; id: number; value?: AskAnswer; error?: WireError }
  /** These credentials changed or went away: ask again. */
  | { t: 'credentials'; names: string[] }
  | { t: 'flush'; seq: number }
  | { t: 'close' };

export type FromWorker =
  | { t: 'listening' }
  | { t: 'listen-failed'; message: string }
  | ({ t: 'ask'; id: number } & AskOp)
  | WorkerBatch
  | { t: 'routes-applied'; seq: number }
  | { t: 'flushed'; seq: number }
  | { t: 'closed' };
