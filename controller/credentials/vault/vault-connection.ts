import util from 'node:util';
import type { Logger } from '../../log.js';
import { vaultAddressProblem } from '../../addresses.js';
import { Secret } from '../secret.js';
import { readSecretFile, SecretFileProblem } from '../secret-file.js';
import { NODE_TIMERS, setLongTimeout, type CancelTimeout, type Timers } from '../long-timeout.js';
import { backoffDelay, DEFAULT_BACKOFF, jittered, type BackoffOptions } from './backoff.js';
import { VaultData } from './vault-data.js';
import { createNodeVaultClient, vaultErrorFrom, type NodeVaultClient } from './node-vault-client.js';
import { VaultError } from './vault-error.js';
import type { PlanVaultConnection, VaultAuthSpec } from '../../policy/types.js';

export type { VaultAuthSpec };

/** A `VaultConnection` policy document's spec, plus its name (the policy's compiled form). */
export type VaultConnectionSpec = PlanVaultConnection;

export interface VaultConnectionOptions {
  log: Logger;
  /** Timeout of one HTTP call to Vault, ms. Default 10 s. */
  requestTimeoutMs?: number;
  /** The token is renewed after this fraction of its TTL (with up to 10% jitter). Default 2/3. */
  renewFraction?: number;
  /** Retry delays for renewal and re-login. Default 1 s doubling to 60 s, with jitter. */
  backoff?: Partial<BackoffOptions>;
  /** Told about every HTTP call to Vault once it has ended (metrics). */
  onRequest?: VaultRequestObserver;
  /** The timers renewals and retries are scheduled on. Default Node's. */
  timers?: Timers;
}

/** What an HTTP call to Vault was for: a small fixed set, never a path. */
export type VaultOperation =
  | 'login' | 'token-lookup' | 'token-renew' | 'token-revoke'
  | 'read' | 'write' | 'list' | 'delete'
  | 'lease-renew' | 'lease-revoke' | 'lease-lookup';

/**
 * One HTTP call to Vault: the connection, the operation, how long it took,
 * and how it failed (the HTTP status, or 'unreachable' for a network error
 * or timeout); never a path, a body or a token.
 */
export type VaultRequestObserver = (r: { connection: string; operation: VaultOperation; seconds: number; error?: string }) => void;

/** The parts of a Vault response the sources need. `data` redacts itself. */
export interface VaultReadResult {
  /** Empty for responses that carry no lease (KV v2). */
  leaseId: string;
  /** Seconds; 0 when there is no lease. */
  leaseDuration: number;
  renewable: boolean;
  /** The response's `data`, secret values included. */
  data: VaultData;
}

export interface LeaseRenewal {
  leaseId: string;
  /** Seconds the lease now has to live (capped by the max TTL). */
  leaseDuration: number;
  renewable: boolean;
}

/** `sys/leases/lookup`: no secret in it. */
export interface LeaseInfo {
  id: string;
  issueTime: string | undefined;
  expireTime: string | undefined;
  lastRenewal: string | undefined;
  /** Seconds left. */
  ttl: number;
  renewable: boolean;
}

/**
 * Called when the connection replaces its token. Vault revokes every lease
 * a token created when that token expires or is revoked, so a lease source
 * holding a lease from `generation` must replace it before `deadline`
 * (epoch ms; now when the old token is already dead, Infinity when it never
 * expires).
 */
export type TokenChangeListener = (change: { generation: number; deadline: number }) => void;

export interface VaultConnectionStatus {
  name: string;
  address: string;
  auth: string;
  /** Holds a token Vault accepted last time it was asked. */
  authenticated: boolean;
  /** When the token expires (epoch ms); undefined for tokens without TTL. */
  tokenExpiresAt: number | undefined;
  /** A renewal or re-login is being retried with backoff. */
  degraded: boolean;
  /** The last failure, without secrets. */
  lastError: string | undefined;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_K8S_TOKEN_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';

type Method = 'GET' | 'PUT' | 'POST' | 'DELETE' | 'LIST';

/**
 * One logged-in client of a Vault or OpenBao server, shared by every
 * credential source that names it.
 *
 * Lifecycle: `await start()` logs in (or validates the token file) and fails
 * with a {@link VaultError} naming the connection, the login path and the
 * HTTP status. The token is then renewed at about 2/3 of its TTL; when
 * renewal fails for good (token revoked, max TTL reached, not renewable) the
 * connection logs in again, retrying with exponential backoff and jitter
 * until it succeeds, and a request that meets a revoked token triggers a
 * login and is retried once. `await close()` stops every timer and revokes
 * the token if it was obtained by logging in (a token file belongs to
 * whoever wrote it and is left alone).
 *
 * node-vault is the HTTP client (see node-vault-client.ts for the defaults
 * overridden: its debug output, the VAULT_* environment, timeouts). Its
 * errors carry the request with the token header and never leave this
 * module: they become VaultErrors without `cause`. Its own token/lease
 * renewal helpers are not used: they neither log in again, back off, nor
 * fetch a fresh secret near the max TTL.
 */
export class VaultConnection {
  readonly name: string;
  readonly address: string;
  readonly #spec: VaultConnectionSpec;
  readonly #log: Logger;
  readonly #renewFraction: number;
  readonly #backoff: BackoffOptions;
  readonly #timeoutMs: number;
  readonly #onRequest: VaultRequestObserver | undefined;
  readonly #timers: Timers;
  #client: NodeVaultClient | undefined;

  #token: Secret | undefined;
  /** Epoch ms; undefined = no expiry. */
  #tokenExpiresAt: number | undefined;
  #tokenTtl = 0;
  #tokenRenewable = false;
  #timer: CancelTimeout | undefined;
  #loginInFlight: Promise<void> | undefined;
  #retryAttempt = 0;
  #degraded = false;
  #lastError: string | undefined;
  #started = false;
  #closed = false;
  /** Set when the current token is known to be dead (revoked, expired). */
  #tokenDead = false;
  #generation = 0;
  readonly #tokenListeners = new Set<TokenChangeListener>();

  constructor(spec: VaultConnectionSpec, options: VaultConnectionOptions) {
    this.name = spec.name;
    this.address = spec.address.replace(/\/+$/, '');
    this.#spec = spec;
    this.#log = options.log;
    this.#renewFraction = options.renewFraction ?? 2 / 3;
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#timeoutMs = options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#onRequest = options.onRequest;
    this.#timers = options.timers ?? NODE_TIMERS;
  }

  /** The auth method's name, for logs. */
  get authMethod(): string {
    return Object.keys(this.#spec.auth)[0] ?? 'unknown';
  }

  /**
   * Logs in (or checks the token file). Must be awaited before sources use
   * the connection. Throws VaultError (also for a plaintext http:// address
   * that is not loopback, before anything is sent); the agent should refuse
   * to start.
   */
  async start(): Promise<void> {
    if (this.#closed) throw this.#error('POST', this.#loginPath(), 'connection is closed');
    if (this.#started) return;
    // Also checked with the policy; a connection built otherwise is held to it too.
    const problem = vaultAddressProblem(this.address);
    if (problem) throw this.#fail(this.#error('POST', this.#loginPath(), `address ${this.address}: ${problem}`));
    this.#client ??= await createNodeVaultClient({
      connection: this.name,
      address: this.address,
      ...(this.#spec.namespace ? { namespace: this.#spec.namespace } : {}),
      ...(this.#spec.tls?.caFile ? { caFile: this.#spec.tls.caFile } : {}),
      ...(this.#spec.tls?.serverName ? { serverName: this.#spec.tls.serverName } : {}),
      timeoutMs: this.#timeoutMs,
    });
    await this.#login();
    this.#started = true;
  }

  /** Reads a secret (`GET /v1/PATH`). */
  async read(path: string): Promise<VaultReadResult> {
    return this.request('GET', path);
  }

  /** Any authenticated call; the response body's `data` is wrapped in VaultData. */
  async request(method: Method, path: string, body?: Record<string, unknown>): Promise<VaultReadResult> {
    const operation = method === 'GET' ? 'read' : method === 'LIST' ? 'list' : method === 'DELETE' ? 'delete' : 'write';
    const res = (await this.#authed(method, path, operation, (client, requestOptions) => {
      const options: { path: string; method: string; [k: string]: unknown } = { path: `/${path}`, method, ...requestOptions };
      if (body !== undefined) options.json = body;
      return client.request(options);
    })) as Record<string, unknown> | undefined;
    return toReadResult(res);
  }

  /** Renews a lease; `increment` in seconds (Vault may grant less, up to the max TTL). */
  async renewLease(leaseId: string, increment?: number): Promise<LeaseRenewal> {
    const res = (await this.#authed('PUT', 'sys/leases/renew', 'lease-renew', (client, requestOptions) =>
      client.renew({ lease_id: leaseId, ...(increment ? { increment: Math.round(increment) } : {}), requestOptions }),
    )) as Record<string, unknown> | undefined;
    return {
      leaseId: typeof res?.lease_id === 'string' ? res.lease_id : leaseId,
      leaseDuration: typeof res?.lease_duration === 'number' ? res.lease_duration : 0,
      renewable: res?.renewable === true,
    };
  }

  /** Revokes a lease (the secret becomes invalid at its source, e.g. the IAM key is deleted). */
  async revokeLease(leaseId: string): Promise<void> {
    await this.#authed('PUT', 'sys/leases/revoke', 'lease-revoke', (client, requestOptions) =>
      client.revoke({ lease_id: leaseId, requestOptions }),
    );
  }

  /** Looks a lease up; fails with status 400 when Vault no longer knows it (revoked or expired). */
  async lookupLease(leaseId: string): Promise<LeaseInfo> {
    const res = (await this.#authed('PUT', 'sys/leases/lookup', 'lease-lookup', (client, requestOptions) =>
      client.write('sys/leases/lookup', { lease_id: leaseId }, requestOptions),
    )) as { data?: Record<string, unknown> } | undefined;
    const d = res?.data ?? {};
    const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
    return {
      id: str(d.id) ?? leaseId,
      issueTime: str(d.issue_time),
      expireTime: str(d.expire_time),
      lastRenewal: str(d.last_renewal),
      ttl: typeof d.ttl === 'number' ? d.ttl : 0,
      renewable: d.renewable === true,
    };
  }

  /**
   * Which token the connection holds: incremented at every login. A lease
   * belongs to the token (generation) that read it.
   */
  get tokenGeneration(): number {
    return this.#generation;
  }

  /** See {@link TokenChangeListener}. Returns the unsubscribe function. */
  onTokenChange(listener: TokenChangeListener): () => void {
    this.#tokenListeners.add(listener);
    return () => this.#tokenListeners.delete(listener);
  }

  status(): VaultConnectionStatus {
    return {
      name: this.name,
      address: this.address,
      auth: this.authMethod,
      authenticated: this.#token !== undefined && !this.#tokenExpired(),
      tokenExpiresAt: this.#tokenExpiresAt,
      degraded: this.#degraded,
      lastError: this.#lastError,
    };
  }

  /** Stops timers and revokes a token obtained by login. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#clearTimer();
    await this.#loginInFlight?.catch(() => undefined);
    const token = this.#token;
    this.#token = undefined;
    if (token && this.#client && !('token' in this.#spec.auth)) {
      try {
        const client = this.#client;
        await this.#timed('token-revoke', () => client.request({
          path: '/auth/token/revoke-self',
          method: 'POST',
          headers: { 'X-Vault-Token': token.reveal() },
          timeout: Math.min(this.#timeoutMs, 3_000),
        }));
        this.#log.debug('vault %s: revoked the agent token', this.name);
      } catch (err) {
        const e = this.#toError('POST', 'auth/token/revoke-self', err);
        this.#log.warn('vault %s: could not revoke the agent token at shutdown: %s', this.name, e.message);
      }
    }
  }

  toJSON(): unknown {
    return { name: this.name, address: this.address, auth: this.authMethod };
  }

  [util.inspect.custom](): string {
    return `VaultConnection(${this.name} ${this.address} auth=${this.authMethod})`;
  }

  // ---- requests -------------------------------------------------------------

  async #authed(
    method: string,
    path: string,
    operation: VaultOperation,
    call: (client: NodeVaultClient, requestOptions: { headers: Record<string, string> }) => Promise<unknown>,
  ): Promise<unknown> {
    if (this.#closed) throw this.#error(method, path, 'connection is closed');
    if (!this.#started || !this.#client) throw this.#error(method, path, 'connection not started');
    const client = this.#client;
    await this.#ensureToken(method, path);
    const generation = this.#generation;
    const attempt = async () => {
      const token = this.#token;
      if (!token) throw this.#error(method, path, `not logged in (${this.#lastError ?? 'no token'})`);
      try {
        return await this.#timed(operation, () => call(client, { headers: { 'X-Vault-Token': token.reveal() } }));
      } catch (err) {
        throw this.#toError(method, path, err);
      }
    };
    try {
      return await attempt();
    } catch (err) {
      // 403 is also what a revoked or expired token gets. Ask Vault whether
      // the token is still good; if not, log in again and retry once.
      if (!(err instanceof VaultError) || err.status !== 403) throw err;
      // Someone else logged in again meanwhile: just retry with the new token.
      if (this.#generation !== generation) return attempt();
      if (!(await this.#tokenRejected())) throw err;
      if (this.#generation !== generation) return attempt();
      this.#log.info('vault %s: token no longer accepted; logging in again', this.name);
      this.#tokenDead = true;
      try {
        await this.#login();
      } catch (loginErr) {
        this.#scheduleRetry('login', loginErr);
        throw loginErr;
      }
      return attempt();
    }
  }

  /** A dead token (expired) is replaced before the request, by one login attempt. */
  async #ensureToken(method: string, path: string): Promise<void> {
    if (this.#loginInFlight) await this.#loginInFlight.catch(() => undefined);
    if (this.#token && !this.#tokenExpired()) return;
    if (this.#token) this.#tokenDead = true;
    try {
      await this.#login();
    } catch (err) {
      this.#scheduleRetry('login', err);
      throw err instanceof VaultError ? err : this.#error(method, path, 'login failed');
    }
  }

  async #tokenRejected(): Promise<boolean> {
    const token = this.#token;
    if (!token || !this.#client) return true;
    try {
      const client = this.#client;
      await this.#timed('token-lookup', () => client.tokenLookupSelf({ requestOptions: { headers: { 'X-Vault-Token': token.reveal() } } }));
      return false;
    } catch (err) {
      const e = this.#toError('GET', 'auth/token/lookup-self', err);
      return e.status === 403 || e.status === 401;
    }
  }

  // ---- login and renewal ---------------------------------------------------

  /** One login attempt, shared by everyone who needs it meanwhile. */
  #login(): Promise<void> {
    this.#loginInFlight ??= this.#authenticate().finally(() => {
      this.#loginInFlight = undefined;
    });
    return this.#loginInFlight;
  }

  async #authenticate(): Promise<void> {
    const client = this.#client as NodeVaultClient;
    const auth = this.#spec.auth;
    let token: Secret;
    let ttl: number;
    let renewable: boolean;
    if ('token' in auth) {
      const path = 'auth/token/lookup-self';
      token = await this.#readSecretFile(auth.token.file, 'GET', path, 'token');
      let res: { data?: { ttl?: unknown; renewable?: unknown } };
      try {
        res = await this.#timed('token-lookup', () => client.tokenLookupSelf({ requestOptions: { headers: { 'X-Vault-Token': token.reveal() } } }));
      } catch (err) {
        throw this.#fail(this.#toError('GET', path, err, `token from ${auth.token.file} was refused`));
      }
      ttl = typeof res?.data?.ttl === 'number' ? res.data.ttl : 0;
      renewable = res?.data?.renewable === true;
    } else {
      const path = this.#loginPath();
      let body: Record<string, unknown>;
      let login: (args: Record<string, unknown>) => Promise<unknown>;
      if ('approle' in auth) {
        const roleId = await this.#readSecretFile(auth.approle.roleIdFile, 'POST', path, 'role id');
        const secretId = await this.#readSecretFile(auth.approle.secretIdFile, 'POST', path, 'secret id');
        body = { role_id: roleId.reveal(), secret_id: secretId.reveal() };
        login = (a) => client.approleLogin(a);
      } else if ('jwt' in auth) {
        const jwt = await this.#readSecretFile(auth.jwt.file, 'POST', path, 'JWT');
        body = { role: auth.jwt.role, jwt: jwt.reveal() };
        login = (a) => client.jwtLogin(a);
      } else {
        const file = auth.kubernetes.tokenFile ?? DEFAULT_K8S_TOKEN_FILE;
        const jwt = await this.#readSecretFile(file, 'POST', path, 'service account token');
        body = { role: auth.kubernetes.role, jwt: jwt.reveal() };
        login = (a) => client.kubernetesLogin(a);
      }
      let res: { auth?: { client_token?: unknown; lease_duration?: unknown; renewable?: unknown } };
      try {
        // Explicit empty headers: no stale token rides along on a login.
        res = (await this.#timed('login', () => login({ ...body, mount_point: this.#mount(), requestOptions: { headers: {} } }))) as typeof res;
      } catch (err) {
        throw this.#fail(this.#toError('POST', path, err, 'login refused'));
      } finally {
        // Login commands copy the new token into node-vault's own state; we
        // keep it only as a Secret and send it per request.
        client.token = '';
      }
      const t = res?.auth?.client_token;
      if (typeof t !== 'string' || t === '') throw this.#fail(this.#error('POST', path, 'login returned no token'));
      token = new Secret(t);
      ttl = typeof res.auth?.lease_duration === 'number' ? res.auth.lease_duration : 0;
      renewable = res.auth?.renewable === true;
    }
    this.#setToken(token, ttl, renewable);
    this.#log.info(
      'vault %s: logged in to %s with %s (token ttl %s, %s)',
      this.name,
      this.address,
      this.authMethod,
      ttl > 0 ? `${ttl}s` : 'none',
      renewable ? 'renewable' : 'not renewable',
    );
  }

  #setToken(token: Secret, ttl: number, renewable: boolean): void {
    // A token file read again may hold the same token: leases stay its own.
    const same = this.#token !== undefined && this.#token.reveal() === token.reveal();
    const previous = this.#token !== undefined && !same ? this.#generation : undefined;
    const deadline = this.#tokenDead || this.#tokenExpired() ? Date.now() : (this.#tokenExpiresAt ?? Infinity);
    this.#tokenDead = false;
    if (!same) this.#generation++;
    this.#token = token;
    this.#tokenTtl = ttl;
    this.#tokenRenewable = renewable;
    this.#tokenExpiresAt = ttl > 0 ? Date.now() + ttl * 1000 : undefined;
    this.#retryAttempt = 0;
    if (this.#degraded) this.#log.info('vault %s: authenticated again; connection healthy', this.name);
    this.#degraded = false;
    this.#lastError = undefined;
    this.#scheduleMaintenance(ttl);
    if (previous !== undefined) {
      for (const listener of this.#tokenListeners) {
        try {
          listener({ generation: previous, deadline });
        } catch (err) {
          this.#log.error('vault %s: token listener failed: %s', this.name, String(err));
        }
      }
    }
  }

  /** Renew (or replace) the token after renewFraction of `ttl` seconds. */
  #scheduleMaintenance(ttl: number): void {
    this.#clearTimer();
    if (ttl <= 0 || this.#closed) return;
    // TTLs are whole seconds, so this is never a tight loop; weeks-long
    // ones are chained by setLongTimeout.
    this.#setTimer(jittered(ttl * 1000 * this.#renewFraction, 0.1), () => this.#maintain());
  }

  async #maintain(): Promise<void> {
    if (this.#closed) return;
    const fromFile = 'token' in this.#spec.auth;
    if (!this.#tokenRenewable) {
      // Nothing to renew: log in again (or re-read the token file, which
      // whoever issued it may have rotated) before it expires.
      return this.#relogin();
    }
    const token = this.#token as Secret;
    const asked = this.#tokenTtl;
    try {
      const client = this.#client as NodeVaultClient;
      const res = (await this.#timed('token-renew', () => client.tokenRenewSelf({
        increment: asked,
        requestOptions: { headers: { 'X-Vault-Token': token.reveal() } },
      }))) as { auth?: { lease_duration?: unknown; renewable?: unknown } };
      (this.#client as NodeVaultClient).token = '';
      if (this.#closed) return;
      const ttl = typeof res?.auth?.lease_duration === 'number' ? res.auth.lease_duration : 0;
      this.#tokenExpiresAt = ttl > 0 ? Date.now() + ttl * 1000 : undefined;
      this.#retryAttempt = 0;
      this.#degraded = false;
      this.#log.debug('vault %s: token renewed (ttl %ss)', this.name, ttl);
      if (ttl > 0 && ttl < asked && !fromFile) {
        // Capped by the max TTL: renewing again gains nothing; log in
        // again at renewFraction of what is left.
        this.#log.debug('vault %s: token near its max TTL; will log in again', this.name);
        this.#tokenRenewable = false;
      }
      this.#scheduleMaintenance(ttl);
    } catch (err) {
      (this.#client as NodeVaultClient).token = '';
      const e = this.#toError('POST', 'auth/token/renew-self', err);
      // Unreachable, sealed or overloaded: the token is still good; retry
      // renewing. Any other answer (Vault says 500 "past the max TTL") means
      // renewing is over for this token: log in again now, while it lives.
      const unavailable = e.status === undefined || e.status === 503 || e.status === 429 || e.status === 412;
      if (unavailable && !this.#tokenExpired()) {
        this.#scheduleRetry('renew', e);
      } else {
        this.#log.warn('vault %s: token renewal failed (%s); logging in again', this.name, e.message);
        this.#tokenDead = e.status === 403 || this.#tokenExpired();
        await this.#relogin();
      }
    }
  }

  async #relogin(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#login();
    } catch (err) {
      this.#scheduleRetry('login', err);
    }
  }

  #scheduleRetry(what: 'renew' | 'login', err: unknown): void {
    if (this.#closed) return;
    const message = err instanceof Error ? err.message : String(err);
    // Logged once per outage; retries while it lasts are debug.
    if (!this.#degraded) this.#log.warn('vault %s: %s failed, retrying with backoff: %s', this.name, what, message);
    else this.#log.debug('vault %s: %s failed again: %s', this.name, what, message);
    this.#degraded = true;
    this.#lastError = message;
    const delay = backoffDelay(this.#retryAttempt++, this.#backoff);
    this.#setTimer(delay, () => (what === 'renew' && !this.#tokenExpired() ? this.#maintain() : this.#relogin()));
  }

  #setTimer(ms: number, fn: () => Promise<void>): void {
    this.#clearTimer();
    this.#timer = setLongTimeout(() => {
      this.#timer = undefined;
      fn().catch((err: unknown) => this.#log.error('vault %s: %s', this.name, String(err)));
    }, ms, this.#timers);
  }

  #clearTimer(): void {
    this.#timer?.();
    this.#timer = undefined;
  }

  #tokenExpired(): boolean {
    return this.#tokenExpiresAt !== undefined && Date.now() >= this.#tokenExpiresAt;
  }

  // ---- helpers ---------------------------------------------------------------

  /** Runs one HTTP call to Vault and tells the observer how long it took and how it failed. */
  async #timed<T>(operation: VaultOperation, call: () => Promise<T>): Promise<T> {
    const observe = this.#onRequest;
    if (!observe) return call();
    const started = performance.now();
    try {
      const result = await call();
      this.#observe(observe, operation, started);
      return result;
    } catch (err) {
      this.#observe(observe, operation, started, failureKind(err));
      throw err;
    }
  }

  #observe(observe: VaultRequestObserver, operation: VaultOperation, started: number, error?: string): void {
    try {
      observe({ connection: this.name, operation, seconds: (performance.now() - started) / 1000, ...(error ? { error } : {}) });
    } catch (err) {
      this.#log.error('vault %s: request observer failed: %s', this.name, String(err));
    }
  }

  #mount(): string {
    const auth = this.#spec.auth;
    const m =
      'approle' in auth
        ? (auth.approle.mount ?? 'approle')
        : 'jwt' in auth
          ? (auth.jwt.mount ?? 'jwt')
          : 'kubernetes' in auth
            ? (auth.kubernetes.mount ?? 'kubernetes')
            : 'token';
    return m.replace(/^\/+|\/+$/g, '');
  }

  #loginPath(): string {
    return 'token' in this.#spec.auth ? 'auth/token/lookup-self' : `auth/${this.#mount()}/login`;
  }

  /**
   * A login file (token, role id, secret id, JWT) is held to the same rules
   * as a file credential: a regular file, not accessible by group or
   * others, owned by root or the agent's user. Otherwise there is no login.
   */
  async #readSecretFile(file: string, method: string, path: string, what: string): Promise<Secret> {
    let text: string;
    try {
      text = (await readSecretFile(file)).content.toString('utf8');
    } catch (err) {
      const problem = err instanceof SecretFileProblem ? err.message : `cannot read ${file}`;
      throw this.#fail(this.#error(method, path, `cannot use the ${what} file: ${problem}`));
    }
    const value = text.trim();
    if (value === '') throw this.#fail(this.#error(method, path, `the ${what} file ${file} is empty`));
    return new Secret(value);
  }

  #fail(err: VaultError): VaultError {
    this.#lastError = err.message;
    return err;
  }

  #error(method: string, path: string, reason: string, status?: number): VaultError {
    return new VaultError({ connection: this.name, method, path, reason, ...(status ? { status } : {}) });
  }

  #toError(method: string, path: string, err: unknown, context?: string): VaultError {
    return vaultErrorFrom({ connection: this.name, address: this.address, method, path, ...(context ? { context } : {}) }, err);
  }
}

/** The HTTP status of a failed call, or 'unreachable' (network error, timeout): never Vault's text. */
function failureKind(err: unknown): string {
  if (err instanceof VaultError) return err.status !== undefined ? String(err.status) : 'unreachable';
  const status = (err as { response?: { statusCode?: unknown } } | null)?.response?.statusCode;
  return typeof status === 'number' && Number.isInteger(status) ? String(status) : 'unreachable';
}

function toReadResult(res: Record<string, unknown> | undefined): VaultReadResult {
  return {
    leaseId: typeof res?.lease_id === 'string' ? res.lease_id : '',
    leaseDuration: typeof res?.lease_duration === 'number' ? res.lease_duration : 0,
    renewable: res?.renewable === true,
    data: new VaultData(res?.data),
  };
}
