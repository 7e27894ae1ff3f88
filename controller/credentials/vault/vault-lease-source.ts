import util from 'node:util';
import { CredentialError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Credential, CredentialSource, CredentialState } from '../credential.js';
import type { Secret } from '../secret.js';
import { NODE_TIMERS, setLongTimeout, type CancelTimeout, type Timers } from '../long-timeout.js';
import { backoffDelay, DEFAULT_BACKOFF, jittered, type BackoffOptions } from './backoff.js';
import type { VaultConnection, VaultReadResult } from './vault-connection.js';
import { VaultError } from './vault-error.js';

export interface VaultLeaseSourceOptions {
  /** The CredentialSource's name in the policy; used in every message. */
  name: string;
  /** A started connection. */
  connection: VaultConnection;
  /**
   * AWS secrets engine: `MOUNT/creds/ROLE` or `MOUNT/sts/ROLE`. The
   * credential's fields are `access_key`, `secret_key` and, for STS,
   * `security_token`.
   */
  aws?: string;
  /** Any other leased read (database, ...); `field` is then the credential's secret. */
  path?: string;
  field?: string;
  /** Leases are renewed after this fraction of their duration (up to 10% earlier, at random). Default 2/3. */
  renewFraction?: number;
  /**
   * A lease replaced by a fresh one is revoked this long afterwards (or at
   * its expiry if sooner), so requests already signed with it finish. Default 30 s.
   */
  retireGraceMs?: number;
  /** Retry delays for failed renewals and reads. Default 1 s doubling to 60 s, with jitter. */
  backoff?: Partial<BackoffOptions>;
  /**
   * How often Vault is asked whether the held lease still exists
   * (`sys/leases/lookup`), ms, with 10% jitter; a lease revoked in Vault is
   * noticed within this long rather than at its next renewal. Default 60 s.
   */
  leaseCheckMs?: number;
  log: Logger;
  /** The timers renewals, replacements and revocations are scheduled on. Default Node's. */
  timers?: Timers;
}

export interface VaultLeaseSourceStatus {
  name: string;
  leaseId: string | undefined;
  /** Epoch ms when the served credential's lease ends. */
  expiresAt: number | undefined;
  /** A renewal or fetch is failing and being retried. */
  degraded: boolean;
  lastError: string | undefined;
}

interface Held {
  credential: Credential;
  leaseId: string;
  /** Seconds Vault granted at issue; what renewals ask for again. */
  duration: number;
  renewable: boolean;
  /** Epoch ms; the local clock, taken before the request so it errs early. */
  expiresAt: number;
  /** Epoch ms the read that got it started (the lease's issue, near enough). */
  issuedAt: number;
  /** The connection's token generation that read it. */
  generation: number;
  /** When the token that read it ends (Vault revokes the lease then); Infinity if not known to. */
  tokenDeadline: number;
}

/**
 * A dynamic secret with a Vault lease (AWS keys, database users, ...).
 *
 * The first get() reads a credential; later ones are served from memory
 * until its lease ends. A timer renews the lease at about 2/3 of its
 * duration. When Vault grants less than was asked (the max TTL is near) or
 * the lease is not renewable (STS), a fresh credential is read at 2/3 of
 * what is left, i.e. well before the old one expires; the old lease is then
 * revoked after a grace period. A renewal Vault refuses (lease revoked or
 * unknown) leads to a fresh read at once; a renewal that cannot reach Vault
 * is retried with backoff. One read is in flight at most.
 *
 * Every `leaseCheckMs` (60 s) the lease is looked up in Vault; a lease
 * Vault no longer knows (revoked by an operator) is withheld at once and a
 * fresh credential read, rather than served until its next renewal.
 *
 * Vault down: the credential is served until its lease expires; after that
 * get() throws a CredentialError naming the credential (never its value)
 * and the lease, without asking Vault more than once per backoff delay; a
 * retry timer and later get()s read a fresh credential once Vault is back,
 * with no restart. close() revokes every lease the source holds.
 *
 * Vault revokes a lease when the token that read it ends. When the
 * connection logs in again (max TTL, revoked token), a lease read with the
 * old token is replaced at 2/3 of the old token's remaining life, or at
 * once if that token is already dead.
 */
export class VaultLeaseSource implements CredentialSource {
  readonly name: string;
  readonly path: string;
  readonly #isAws: boolean;
  readonly #field: string | undefined;
  readonly #connection: VaultConnection;
  readonly #log: Logger;
  readonly #renewFraction: number;
  readonly #retireGraceMs: number;
  readonly #backoff: BackoffOptions;
  readonly #timers: Timers;
  readonly #leaseCheckMs: number;

  #current: Held | undefined;
  #inFlight: Promise<Held> | undefined;
  #timer: CancelTimeout | undefined;
  #checkTimer: CancelTimeout | undefined;
  /** Replaced leases waiting to be revoked. */
  readonly #retiring = new Map<string, CancelTimeout>();
  #failure: CredentialError | undefined;
  #nextFetchAt = 0;
  #attempt = 0;
  #degraded = false;
  #closed = false;
  readonly #unsubscribe: () => void;

  constructor(options: VaultLeaseSourceOptions) {
    this.name = options.name;
    this.#connection = options.connection;
    this.#log = options.log;
    this.#renewFraction = options.renewFraction ?? 2 / 3;
    this.#retireGraceMs = options.retireGraceMs ?? 30_000;
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#timers = options.timers ?? NODE_TIMERS;
    this.#leaseCheckMs = options.leaseCheckMs ?? 60_000;
    if ((options.aws === undefined) === (options.path === undefined)) {
      throw new CredentialError(this.name, 'exactly one of aws or path must be given');
    }
    if (options.aws !== undefined) {
      if (!/^[^/]+(\/[^/]+)*\/(creds|sts)\/[^/]+$/.test(options.aws)) {
        throw new CredentialError(this.name, `aws "${options.aws}" must be MOUNT/creds/ROLE or MOUNT/sts/ROLE`);
      }
      this.path = options.aws;
      this.#isAws = true;
      this.#field = options.field;
    } else {
      if (!options.field) throw new CredentialError(this.name, 'a leased path needs a field');
      this.path = (options.path as string).replace(/^\/+|\/+$/g, '');
      this.#isAws = false;
      this.#field = options.field;
    }
    this.#unsubscribe = this.#connection.onTokenChange((c) => this.#onTokenChange(c.generation, c.deadline));
  }

  /**
   * The current credential: from memory while its lease lasts.
   * @throws CredentialError naming the credential when its lease has ended and no fresh one can be read.
   */
  async get(): Promise<Credential> {
    if (this.#closed) throw new CredentialError(this.name, 'source is closed');
    const cur = this.#current;
    if (cur && Date.now() < cur.expiresAt) return cur.credential;
    if (this.#failure && Date.now() < this.#nextFetchAt) throw this.#failure;
    return (await this.#fetch()).credential;
  }

  peek(): Credential | undefined {
    const cur = this.#current;
    return !this.#closed && cur && Date.now() < cur.expiresAt ? cur.credential : undefined;
  }

  status(): VaultLeaseSourceStatus {
    return {
      name: this.name,
      leaseId: this.#current?.leaseId,
      expiresAt: this.#current?.expiresAt,
      degraded: this.#degraded,
      lastError: this.#failure?.message,
    };
  }

  state(): CredentialState {
    const cur = this.#current;
    const live = cur !== undefined && Date.now() < cur.expiresAt;
    return {
      available: live,
      ...(cur ? { createdAt: cur.issuedAt, expiresAt: cur.expiresAt } : {}),
      degraded: this.#degraded || (!live && this.#failure !== undefined),
    };
  }

  /** Revokes the leases this source holds (current and retiring). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe();
    this.#clearTimer();
    this.#checkTimer?.();
    this.#checkTimer = undefined;
    await this.#inFlight?.catch(() => undefined);
    const leases = [...this.#retiring.keys()];
    for (const cancel of this.#retiring.values()) cancel();
    this.#retiring.clear();
    if (this.#current) leases.push(this.#current.leaseId);
    this.#current = undefined;
    await Promise.all(leases.map((id) => this.#revoke(id)));
  }

  toJSON(): unknown {
    return { kind: 'VaultLeaseSource', name: this.name, path: this.path, leaseId: this.#current?.leaseId };
  }

  [util.inspect.custom](): string {
    return `VaultLeaseSource(${this.name} ${this.path} lease=${this.#current?.leaseId ?? 'none'})`;
  }

  // ---- reading ---------------------------------------------------------------

  /** Single flight: one read, whoever asks meanwhile (get()s and the timer). */
  #fetch(): Promise<Held> {
    this.#inFlight ??= this.#read().finally(() => {
      this.#inFlight = undefined;
    });
    return this.#inFlight;
  }

  async #read(): Promise<Held> {
    const startedAt = Date.now();
    const generation = this.#connection.tokenGeneration;
    let held: Held;
    try {
      const res = await this.#connection.read(this.path);
      held = this.#toHeld(res, startedAt, generation);
    } catch (err) {
      const error =
        err instanceof CredentialError
          ? err
          : new CredentialError(
              this.name,
              this.#current
                ? `lease ${this.#current.leaseId} ended and no fresh credential could be read: ${messageOf(err)}`
                : `cannot read ${this.path} from Vault: ${messageOf(err)}`,
            );
      this.#failure = error;
      this.#nextFetchAt = Date.now() + backoffDelay(this.#attempt, this.#backoff);
      this.#noteFailure('read', err);
      // Keep trying in the background, so that the credential is back
      // before the next request once Vault is.
      this.#schedule(this.#nextFetchAt - Date.now(), () => this.#replace());
      this.#attempt++;
      throw error;
    }
    if (this.#closed) {
      await this.#revoke(held.leaseId);
      throw new CredentialError(this.name, 'source is closed');
    }
    const previous = this.#current;
    this.#current = held;
    this.#failure = undefined;
    this.#attempt = 0;
    this.#nextFetchAt = 0;
    if (this.#degraded) this.#log.info('credential %s: Vault answers again', this.name);
    this.#degraded = false;
    this.#log.info(
      'credential %s: new lease %s for %ss (%s)',
      this.name,
      held.leaseId,
      held.duration,
      held.renewable ? 'renewable' : 'not renewable',
    );
    this.#scheduleMaintenance(held, held.duration);
    this.#scheduleCheck();
    if (previous) this.#retire(previous);
    return held;
  }

  #toHeld(res: VaultReadResult, startedAt: number, generation: number): Held {
    if (!res.leaseId || res.leaseDuration <= 0) {
      throw new CredentialError(this.name, `${this.path} returned no lease (use kv for static secrets)`);
    }
    let fields: Map<string, Secret>;
    let secret: Secret | undefined;
    if (this.#isAws) {
      fields = new Map();
      for (const key of ['access_key', 'secret_key', 'security_token']) {
        const v = res.data.secret(key);
        if (v) fields.set(key, v);
      }
      if (!fields.has('access_key') || !fields.has('secret_key')) {
        throw new CredentialError(this.name, `${this.path} returned no access_key/secret_key`);
      }
      if (this.#field) secret = fields.get(this.#field);
    } else {
      fields = res.data.secrets();
      const v = res.data.secret(this.#field as string);
      if (v === undefined) throw new CredentialError(this.name, `${this.path} has no field "${this.#field}"`);
      if (v === null) throw new CredentialError(this.name, `field "${this.#field}" of ${this.path} is not a non-empty string`);
      secret = v;
    }
    const credential: Credential = { name: this.name, fields, leaseId: res.leaseId, ...(secret ? { secret } : {}) };
    return {
      credential,
      leaseId: res.leaseId,
      duration: res.leaseDuration,
      renewable: res.renewable,
      expiresAt: startedAt + res.leaseDuration * 1000,
      issuedAt: startedAt,
      generation,
      tokenDeadline: Infinity,
    };
  }

  // ---- renewal -----------------------------------------------------------------

  /** Renew (or replace) `held` after renewFraction of `seconds`. */
  #scheduleMaintenance(held: Held, seconds: number): void {
    const delay = jittered(seconds * 1000 * this.#renewFraction, 0.1);
    this.#schedule(delay, () => (held.renewable ? this.#renew(held) : this.#replace()));
  }

  async #renew(held: Held): Promise<void> {
    if (this.#closed || this.#current !== held) return;
    const startedAt = Date.now();
    try {
      const r = await this.#connection.renewLease(held.leaseId, held.duration);
      if (this.#closed || this.#current !== held) return;
      held.expiresAt = Math.min(startedAt + r.leaseDuration * 1000, held.tokenDeadline);
      this.#attempt = 0;
      if (this.#degraded) this.#log.info('credential %s: Vault answers again', this.name);
      this.#degraded = false;
      this.#failure = undefined;
      if (held.tokenDeadline !== Infinity) return; // its token ends first: a replacement is scheduled
      if (r.leaseDuration <= 0) return this.#replace();
      if (r.leaseDuration < held.duration || !r.renewable) {
        // The max TTL caps it: get a fresh one while this one still works.
        this.#log.debug('credential %s: lease %s renewed for %ss only (max TTL); replacing it soon', this.name, held.leaseId, r.leaseDuration);
        held.renewable = false;
      } else {
        this.#log.debug('credential %s: lease %s renewed for %ss', this.name, held.leaseId, r.leaseDuration);
      }
      this.#scheduleMaintenance(held, r.leaseDuration);
    } catch (err) {
      if (this.#closed || this.#current !== held) return;
      if (err instanceof VaultError && err.transient && Date.now() < held.expiresAt) {
        this.#noteFailure('renewal', err);
        this.#schedule(backoffDelay(this.#attempt++, this.#backoff), () => this.#renew(held));
      } else {
        this.#log.warn('credential %s: lease %s could not be renewed (%s); reading a fresh one', this.name, held.leaseId, messageOf(err));
        await this.#replace();
      }
    }
  }

  /**
   * The connection logged in again. Leases read with an older token end
   * when that token does: replace ours before then (at once if it is dead).
   */
  #onTokenChange(generation: number, deadline: number): void {
    const cur = this.#current;
    if (!cur || this.#closed || cur.generation > generation) return;
    cur.tokenDeadline = Math.min(cur.tokenDeadline, deadline);
    cur.expiresAt = Math.min(cur.expiresAt, deadline);
    const left = deadline - Date.now();
    if (left <= 0) {
      this.#log.info('credential %s: lease %s ended with the token that read it; reading a fresh one', this.name, cur.leaseId);
      this.#schedule(0, () => this.#replace());
    } else if (left !== Infinity) {
      this.#log.debug('credential %s: lease %s ends with its token in %ss; replacing it before', this.name, cur.leaseId, Math.round(left / 1000));
      this.#schedule(jittered(left * this.#renewFraction, 0.1), () => this.#replace());
    }
  }

  // ---- revocation in Vault -------------------------------------------------------

  /** Look the held lease up again in leaseCheckMs (one check pending at most). */
  #scheduleCheck(): void {
    this.#checkTimer?.();
    this.#checkTimer = undefined;
    if (this.#closed || !Number.isFinite(this.#leaseCheckMs) || this.#leaseCheckMs <= 0) return;
    this.#checkTimer = setLongTimeout(() => {
      this.#checkTimer = undefined;
      this.#check().catch((err: unknown) => this.#log.error('credential %s: %s', this.name, messageOf(err)));
    }, jittered(this.#leaseCheckMs, 0.1), this.#timers);
  }

  /**
   * Asks Vault whether the held lease still exists. An operator revoking it
   * (a leaked key, an offboarded role) has made the secret useless or
   * unwanted: stop serving it at once and read a fresh one, as the KV
   * source drops a value Vault says is gone. Vault answering 400 "invalid
   * lease" (or 404) is that answer; anything else (unreachable, sealed, no
   * permission to look up) says nothing about the lease, which is kept.
   */
  async #check(): Promise<void> {
    const held = this.#current;
    if (this.#closed || !held) return;
    try {
      await this.#connection.lookupLease(held.leaseId);
    } catch (err) {
      if (this.#closed || this.#current !== held) return;
      const gone = err instanceof VaultError && (err.status === 400 || err.status === 404);
      if (!gone) {
        this.#log.debug('credential %s: cannot look lease %s up: %s', this.name, held.leaseId, messageOf(err));
        return this.#scheduleCheck();
      }
      this.#log.warn('credential %s: Vault no longer knows lease %s (revoked); withholding it and reading a fresh one', this.name, held.leaseId);
      this.#current = undefined;
      this.#clearTimer();
      return this.#replace();
    }
    if (this.#current === held) this.#scheduleCheck();
  }

  /** Reads a fresh credential; on failure #read() schedules the retry. */
  async #replace(): Promise<void> {
    if (this.#closed) return;
    await this.#fetch().catch(() => undefined);
  }

  /** Revoke a replaced lease once requests already using it had time to finish. */
  #retire(old: Held): void {
    const delay = Math.max(0, Math.min(this.#retireGraceMs, old.expiresAt - Date.now()));
    const cancel = setLongTimeout(() => {
      this.#retiring.delete(old.leaseId);
      void this.#revoke(old.leaseId);
    }, delay, this.#timers);
    this.#retiring.set(old.leaseId, cancel);
  }

  async #revoke(leaseId: string): Promise<void> {
    try {
      await this.#connection.revokeLease(leaseId);
      this.#log.info('credential %s: revoked lease %s', this.name, leaseId);
    } catch (err) {
      this.#log.warn('credential %s: could not revoke lease %s: %s', this.name, leaseId, messageOf(err));
    }
  }

  #noteFailure(what: string, err: unknown): void {
    if (!this.#degraded) {
      const until = this.#current ? `; serving lease ${this.#current.leaseId} until it expires` : '';
      this.#log.warn('credential %s: %s failed: %s%s', this.name, what, messageOf(err), until);
    } else this.#log.debug('credential %s: %s failed again: %s', this.name, what, messageOf(err));
    this.#degraded = true;
  }

  #schedule(ms: number, fn: () => Promise<void>): void {
    if (this.#closed) return;
    this.#clearTimer();
    // Leases of weeks are renewed at 2/3 of their duration: past what one
    // Node timer holds, which setLongTimeout chains.
    this.#timer = setLongTimeout(() => {
      this.#timer = undefined;
      fn().catch((err: unknown) => this.#log.error('credential %s: %s', this.name, messageOf(err)));
    }, ms, this.#timers);
  }

  #clearTimer(): void {
    this.#timer?.();
    this.#timer = undefined;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
