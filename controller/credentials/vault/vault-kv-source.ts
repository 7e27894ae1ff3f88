import util from 'node:util';
import { CredentialError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Credential, CredentialSource, CredentialState } from '../credential.js';
import { backoffDelay, DEFAULT_BACKOFF, jittered, type BackoffOptions } from './backoff.js';
import { setLongTimeout } from '../long-timeout.js';
import type { VaultConnection } from './vault-connection.js';
import { VaultError } from './vault-error.js';

export interface VaultKvSourceOptions {
  /** The CredentialSource's name in the policy; used in every message. */
  name: string;
  /** A started connection. */
  connection: VaultConnection;
  /** `MOUNT/PATH` of a KV v2 secret; the first segment is the mount (`secret/openai` reads `secret/data/openai`). */
  kv: string;
  /** The field of the secret's data that is the credential. */
  field: string;
  /** Pin a KV version; default the latest. */
  version?: number;
  /** How often the secret is read again, ms (10% jitter). Default 5 min. */
  refreshMs?: number;
  /**
   * How long a cached value may be served after the last successful read
   * while Vault cannot be reached, ms. Default: no limit (see class doc).
   */
  maxStaleMs?: number;
  /**
   * The first read waits a random delay up to this, ms, so that many agents
   * started together do not all read at once. Default min(1 s, refresh / 10).
   */
  firstFetchJitterMs?: number;
  /** Retry delays after a failed read. Default 1 s doubling to 60 s (never more than `refreshMs`). */
  backoff?: Partial<BackoffOptions>;
  log: Logger;
  /** The clock refreshes, backoff and staleness are measured on, epoch ms. Default `Date.now`. */
  now?: () => number;
}

export interface VaultKvSourceStatus {
  name: string;
  /** The KV version being served, if any. */
  version: string | undefined;
  /** Epoch ms of the last successful read. */
  fetchedAt: number | undefined;
  /** Serving a cached value because Vault could not be read. */
  degraded: boolean;
  lastError: string | undefined;
}

const DEFAULT_REFRESH_MS = 5 * 60_000;

interface Cached {
  credential: Credential;
  version: string | undefined;
  fetchedAt: number;
  /** The version's created_time (epoch ms), when Vault gave one. */
  createdAt: number | undefined;
}

/**
 * A static secret from a KV v2 engine.
 *
 * Reads are lazy and never per request: the first get() reads (after a
 * small random delay); later get()s are answered from memory, and the first
 * get() after `refreshMs` (minus up to 10% jitter) starts one background
 * read and is itself answered from memory, so a request never waits for
 * Vault once a value is known. A new version is served from the first get()
 * after the read that saw it; credentials are immutable, so requests holding
 * the old one finish with it. One read is in flight at most.
 *
 * Vault unreachable (network error, timeout, 5xx, sealed, 429): the cached
 * value keeps being served and the failure is logged once per outage (and
 * once on recovery); `status().degraded` says so. Static secrets have no
 * expiry, so by default they are served for as long as the outage lasts:
 * failing every request because Vault is down would take the fleet down
 * with it. `maxStaleMs` bounds that: once the last successful read is older
 * than that, get() throws. Vault answering authoritatively that the secret
 * is gone or not ours (403 with a valid token, 404, a missing field) drops
 * the cached value and get() throws until a read succeeds again.
 */
export class VaultKvSource implements CredentialSource {
  readonly name: string;
  readonly kv: string;
  readonly field: string;
  readonly #connection: VaultConnection;
  readonly #log: Logger;
  readonly #apiPath: string;
  readonly #refreshMs: number;
  readonly #maxStaleMs: number | undefined;
  readonly #firstJitterMs: number;
  readonly #backoff: BackoffOptions;
  readonly #now: () => number;

  #cached: Cached | undefined;
  #nextReadAt = 0;
  #inFlight: Promise<Cached> | undefined;
  #failure: CredentialError | undefined;
  #outageSince: number | undefined;
  #attempt = 0;
  #firstRead = true;
  #closed = false;

  constructor(options: VaultKvSourceOptions) {
    this.name = options.name;
    this.kv = options.kv;
    this.field = options.field;
    this.#connection = options.connection;
    this.#log = options.log;
    this.#refreshMs = options.refreshMs ?? DEFAULT_REFRESH_MS;
    this.#maxStaleMs = options.maxStaleMs;
    this.#firstJitterMs = options.firstFetchJitterMs ?? Math.min(1_000, this.#refreshMs / 10);
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#now = options.now ?? Date.now;
    this.#backoff.maxMs = Math.min(this.#backoff.maxMs, this.#refreshMs);
    const parts = options.kv.split('/').filter((p) => p !== '');
    if (parts.length < 2) {
      throw new CredentialError(this.name, `kv "${options.kv}" must be MOUNT/PATH (for example secret/openai)`);
    }
    const [mount, ...rest] = parts.map(encodeURIComponent);
    this.#apiPath = `${mount}/data/${rest.join('/')}${options.version !== undefined ? `?version=${options.version}` : ''}`;
  }

  /**
   * The current credential, from memory except for the first call.
   * @throws CredentialError naming the credential when no value can be served.
   */
  async get(): Promise<Credential> {
    if (this.#closed) throw new CredentialError(this.name, 'source is closed');
    const now = this.#now();
    const cached = this.#cached;
    if (cached) {
      if (now >= this.#nextReadAt) this.#read().catch(() => undefined);
      if (this.#maxStaleMs !== undefined && this.#outageSince !== undefined && now - cached.fetchedAt > this.#maxStaleMs) {
        throw new CredentialError(
          this.name,
          `Vault has not been readable for ${Math.round((now - this.#outageSince) / 1000)}s and the cached ` +
            `version ${cached.version ?? '?'} is older than maxStale (${this.#failure?.message ?? 'Vault unreachable'})`,
        );
      }
      return cached.credential;
    }
    if (this.#failure && now < this.#nextReadAt) throw this.#failure;
    return (await this.#read()).credential;
  }

  peek(): Credential | undefined {
    const cached = this.#cached;
    if (this.#closed || !cached) return undefined;
    const now = this.#now();
    // A read is due (get() starts it), or the value is too stale to serve (get() says why).
    if (now >= this.#nextReadAt) return undefined;
    if (this.#maxStaleMs !== undefined && this.#outageSince !== undefined && now - cached.fetchedAt > this.#maxStaleMs) return undefined;
    return cached.credential;
  }

  status(): VaultKvSourceStatus {
    return {
      name: this.name,
      version: this.#cached?.version,
      fetchedAt: this.#cached?.fetchedAt,
      degraded: this.#outageSince !== undefined,
      lastError: this.#failure?.message,
    };
  }

  state(): CredentialState {
    const cached = this.#cached;
    const version = cached?.version !== undefined ? Number(cached.version) : NaN;
    return {
      available: cached !== undefined,
      ...(cached ? { createdAt: cached.createdAt ?? cached.fetchedAt } : {}),
      ...(Number.isFinite(version) ? { version } : {}),
      degraded: this.#outageSince !== undefined || (cached === undefined && this.#failure !== undefined),
    };
  }

  /** Drops the cached value. Nothing to revoke: KV secrets have no lease. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#cached = undefined;
  }

  toJSON(): unknown {
    return { kind: 'VaultKvSource', name: this.name, kv: this.kv, field: this.field, version: this.#cached?.version };
  }

  [util.inspect.custom](): string {
    return `VaultKvSource(${this.name} ${this.kv}#${this.field} version=${this.#cached?.version ?? 'none'})`;
  }

  /** Single flight: every caller during a read shares it. */
  #read(): Promise<Cached> {
    this.#inFlight ??= this.#fetch().finally(() => {
      this.#inFlight = undefined;
    });
    return this.#inFlight;
  }

  async #fetch(): Promise<Cached> {
    if (this.#firstRead) {
      this.#firstRead = false;
      const delay = Math.random() * this.#firstJitterMs;
      // A caller waits on this one: it keeps the process alive (not unref'd).
      if (delay >= 1) await new Promise<void>((r) => setLongTimeout(r, delay, { setTimeout, clearTimeout }));
    }
    try {
      const res = await this.#connection.read(this.#apiPath);
      const value = res.data.secret('data', this.field);
      if (value === undefined) {
        throw new CredentialError(this.name, `${this.kv} has no field "${this.field}"`);
      }
      if (value === null) {
        throw new CredentialError(this.name, `field "${this.field}" of ${this.kv} is not a non-empty string`);
      }
      const v = res.data.metadata('metadata', 'version');
      const version = typeof v === 'number' || typeof v === 'string' ? String(v) : undefined;
      const credential: Credential = {
        name: this.name,
        secret: value,
        fields: res.data.secrets('data'),
        ...(version !== undefined ? { version } : {}),
      };
      const created = res.data.metadata('metadata', 'created_time');
      const createdAt = typeof created === 'string' ? Date.parse(created) : NaN;
      const previous = this.#cached;
      const fresh: Cached = { credential, version, fetchedAt: this.#now(), createdAt: Number.isFinite(createdAt) ? createdAt : undefined };
      if (this.#closed) return fresh;
      this.#cached = fresh;
      this.#failure = undefined;
      this.#attempt = 0;
      this.#nextReadAt = this.#now() + jittered(this.#refreshMs, 0.1);
      if (this.#outageSince !== undefined) {
        this.#log.info(
          'credential %s: Vault readable again after %ss (version %s)',
          this.name,
          Math.round((this.#now() - this.#outageSince) / 1000),
          version ?? '?',
        );
        this.#outageSince = undefined;
      }
      if (!previous) this.#log.info('credential %s: read %s version %s', this.name, this.kv, version ?? '?');
      else if (previous.version !== version) {
        this.#log.info('credential %s: %s is now version %s (was %s)', this.name, this.kv, version ?? '?', previous.version ?? '?');
      } else this.#log.debug('credential %s: %s unchanged (version %s)', this.name, this.kv, version ?? '?');
      return fresh;
    } catch (err) {
      throw this.#failed(err);
    }
  }

  #failed(err: unknown): CredentialError {
    const now = this.#now();
    this.#nextReadAt = now + backoffDelay(this.#attempt++, this.#backoff);
    const transient = err instanceof VaultError ? err.transient : !(err instanceof CredentialError);
    const reason = err instanceof Error ? err.message : String(err);
    const error =
      err instanceof CredentialError ? err : new CredentialError(this.name, `cannot read ${this.kv} from Vault: ${reason}`);
    const first = this.#outageSince === undefined && this.#failure?.message !== error.message;
    this.#failure = error;
    if (transient) {
      if (this.#outageSince === undefined) this.#outageSince = now;
      if (first) {
        this.#log.warn(
          this.#cached
            ? `credential %s: %s; serving cached version ${this.#cached.version ?? '?'} until Vault answers`
            : 'credential %s: %s',
          this.name,
          reason,
        );
      } else this.#log.debug('credential %s: still failing: %s', this.name, reason);
    } else {
      // Vault said no: the secret is gone or no longer ours. Stop serving it.
      if (this.#cached) this.#log.warn('credential %s: %s; dropping the cached value', this.name, reason);
      else if (first) this.#log.warn('credential %s: %s', this.name, reason);
      this.#cached = undefined;
      this.#outageSince = undefined;
    }
    return error;
  }
}
