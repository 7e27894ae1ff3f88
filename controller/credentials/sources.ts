/**
 * The credential sources of a plan, and the Vault connections they use:
 * built when a policy is applied, reused across reloads when their
 * definition did not change (so caches, Vault logins and leases carry
 * over), and closed when they are dropped (leases revoked).
 */
import type { Plan, PlanCredential, PlanVaultConnection } from '../policy/types.js';
import type { Logger } from '../log.js';
import type { CredentialSource } from './credential.js';
import { FileCredentialSource } from './file-source.js';
import { VaultConnection, type VaultRequestObserver } from './vault/vault-connection.js';
import { VaultKvSource } from './vault/vault-kv-source.js';
import { VaultLeaseSource } from './vault/vault-lease-source.js';
import { WirekeyError } from '../errors.js';

/**
 * Vault connections that log in together, and sources read together, while
 * a policy is applied: each waits on its own server, so several slow ones
 * take about as long as the slowest, not their sum.
 */
export const APPLY_CONCURRENCY = 8;

/** How the sources of a plan are built, beyond what the plan says. */
export interface SourceOptions {
  /** File sources' minimum time between two stat() calls, ms. Default: FileCredentialSource's (1 s). */
  fileRecheckIntervalMs?: number;
  /** Told about every HTTP call new Vault connections make (metrics). */
  onRequest?: VaultRequestObserver;
}

interface Held<T> {
  key: string;
  value: T;
}

export class CredentialSources {
  readonly #sources: Map<string, Held<CredentialSource>>;
  readonly #connections: Map<string, Held<VaultConnection>>;

  private constructor(sources: Map<string, Held<CredentialSource>>, connections: Map<string, Held<VaultConnection>>) {
    this.#sources = sources;
    this.#connections = connections;
  }

  static empty(): CredentialSources {
    return new CredentialSources(new Map(), new Map());
  }

  /**
   * Sources for `plan`, taking over those of `previous` whose definition is
   * unchanged (a source taken over keeps the options it was built with).
   * New Vault connections log in here, together (APPLY_CONCURRENCY at a
   * time). Nothing of `previous` is closed: call retire() once the new set
   * is in force.
   * @throws WirekeyError WK_VAULT when new connections cannot log in: one
   *   line per connection, "file:line:column: " and its VaultError's message
   *   (the VaultError itself for one connection the plan does not place);
   *   what this call started is closed again first.
   */
  static async build(plan: Plan, previous: CredentialSources, log: Logger, options: SourceOptions = {}): Promise<CredentialSources> {
    const connections = new Map<string, Held<VaultConnection>>();
    const next = new CredentialSources(new Map(), connections);
    try {
      const specs = [...plan.vaultConnections.values()];
      const started = await settleBounded(specs, APPLY_CONCURRENCY, async (spec) => {
        // Where the policy defines it is not part of what it is: moving it keeps its login.
        const key = JSON.stringify({ ...spec, source: undefined });
        const old = previous.#connections.get(spec.name);
        return old && old.key === key ? old : { key, value: await startConnection(spec, log, options.onRequest) };
      });
      // Every login has ended: those that succeeded are held here, so that a failure closes them again.
      const failed: { spec: PlanVaultConnection; err: Error }[] = [];
      started.forEach((r, i) => {
        const spec = specs[i] as PlanVaultConnection;
        if (r.status === 'fulfilled') connections.set(spec.name, r.value);
        else failed.push({ spec, err: r.reason as Error });
      });
      if (failed.length) throw loginError(failed);
      for (const c of plan.credentials.values()) {
        const conn = c.vault ? connections.get(c.vault.connection) : undefined;
        // A source is reused only with its definition and its very connection.
        const key = JSON.stringify([c.file, c.vault, conn?.key]);
        const old = previous.#sources.get(c.name);
        const reuse = old && old.key === key && (!c.vault || previous.#connections.get(c.vault.connection)?.value === conn?.value);
        next.#sources.set(c.name, reuse ? old : { key, value: create(c, conn?.value, log, options) });
      }
    } catch (err) {
      await next.retire(previous);
      throw err;
    }
    return next;
  }

  get(name: string): CredentialSource | undefined {
    return this.#sources.get(name)?.value;
  }

  values(): CredentialSource[] {
    return [...this.#sources.values()].map((s) => s.value);
  }

  /**
   * Reads every source once, APPLY_CONCURRENCY at a time, and says why
   * each that cannot be read now failed, by name (none: every one was read).
   */
  async readAll(): Promise<Map<string, Error>> {
    const sources = this.values();
    const read = await settleBounded(sources, APPLY_CONCURRENCY, (s) => s.get());
    const failed = new Map<string, Error>();
    read.forEach((r, i) => {
      if (r.status === 'rejected') failed.set((sources[i] as CredentialSource).name, r.reason as Error);
    });
    return failed;
  }

  /** The Vault connections the sources use. */
  connections(): VaultConnection[] {
    return [...this.#connections.values()].map((c) => c.value);
  }

  /** Closes what this set holds that `next` does not use: sources first (their leases are revoked), then connections. */
  async retire(next: CredentialSources): Promise<void> {
    const keptSources = new Set(next.values());
    const keptConnections = new Set([...next.#connections.values()].map((c) => c.value));
    await Promise.all(this.values().filter((s) => !keptSources.has(s)).map((s) => s.close()));
    await Promise.all([...this.#connections.values()].map((c) => c.value).filter((c) => !keptConnections.has(c)).map((c) => c.close()));
  }

  async close(): Promise<void> {
    await this.retire(CredentialSources.empty());
  }
}

async function startConnection(spec: PlanVaultConnection, log: Logger, onRequest: VaultRequestObserver | undefined): Promise<VaultConnection> {
  const conn = new VaultConnection(spec, { log, ...(onRequest ? { onRequest } : {}) });
  await conn.start();
  return conn;
}

function create(c: PlanCredential, connection: VaultConnection | undefined, log: Logger, options: SourceOptions): CredentialSource {
  if (c.file) {
    return new FileCredentialSource({ name: c.name, path: c.file.path, field: c.file.field, recheckIntervalMs: options.fileRecheckIntervalMs });
  }
  const v = c.vault;
  // compile() and check() guarantee a Vault read and its connection.
  if (!v || !connection) throw new Error(`credential ${c.name} has neither a file nor a Vault connection`);
  switch (v.kind) {
    case 'kv':
      return new VaultKvSource({ name: c.name, connection, kv: `${v.mount}/${v.path}`, field: v.field, version: v.version, refreshMs: v.refreshMs, log });
    case 'aws':
      return new VaultLeaseSource({ name: c.name, connection, aws: v.path, log });
    case 'leased':
      return new VaultLeaseSource({ name: c.name, connection, path: v.path, field: v.field, log });
  }
}

/** `fn` of every item, at most `limit` at a time; resolves once every one has ended, with each outcome in `items`' order. */
async function settleBounded<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const results: PromiseSettledResult<R>[] = new Array<PromiseSettledResult<R>>(items.length);
  let next = 0;
  const run = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      try {
        results[i] = { status: 'fulfilled', value: await fn(items[i] as T) };
      } catch (reason) {
        results[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return results;
}

/**
 * Why connections could not log in: the error itself for one connection
 * the policy does not place, else one line per connection, in the policy's
 * order, each "file:line:column: message" where the policy defines it.
 */
function loginError(failed: { spec: PlanVaultConnection; err: Error }[]): Error {
  const only = failed[0];
  if (failed.length === 1 && only && !only.spec.source) return only.err;
  const lines = failed.map(({ spec, err }) => {
    const message = err.message.split('\n')[0] as string;
    return spec.source ? `${spec.source.file}:${spec.source.line}:${spec.source.column}: ${message}` : message;
  });
  return new WirekeyError('WK_VAULT', lines.join('\n'), { cause: failed.length === 1 ? only?.err : new AggregateError(failed.map((f) => f.err)) });
}
