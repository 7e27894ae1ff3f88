/**
 * The contract between credential sources (file, Vault) and injections:
 * what a source yields, and what it must do when the agent stops.
 */
import type { Secret } from './secret.js';

export interface Credential {
  /** The CredentialSource's name in the policy. */
  name: string;
  /** The single secret, for bearer and header injections; absent when the source yields only fields. */
  secret?: Secret;
  /**
   * Named values, for injections that need several: SigV4 reads the access
   * key id, secret key and session token from here (`access_key` /
   * `access_key_id`, `secret_key` / `secret_access_key`, `security_token` /
   * `session_token`).
   */
  fields: ReadonlyMap<string, Secret>;
  /** Which version of the secret this is, for audit (a KV version); never the value. */
  version?: string;
  /** The Vault lease it comes from, for audit. */
  leaseId?: string;
}

/**
 * What a source can say about the value it serves, for metrics: times and
 * a version, never the value, a path or a lease id.
 */
export interface CredentialState {
  /** A value is held now (served from memory). */
  available: boolean;
  /** Epoch ms the served value was made at its source: the KV version's created_time, the file's mtime, the lease's issue. */
  createdAt?: number;
  /** The source's own version number of the served value (a KV version). */
  version?: number;
  /** Epoch ms the served value stops being served (a lease's end); absent when it does not expire. */
  expiresAt?: number;
  /** Serving from cache while the backing store fails, or failing. */
  degraded: boolean;
}

export interface CredentialSource {
  readonly name: string;
  /** What the source holds now; cheap, no I/O (read when metrics are scraped). */
  state?(): CredentialState;
  /**
   * The current credential. Sources cache: this is called per request and
   * must not reach the backing store per request.
   * @throws CredentialError naming the credential (never its value) when it is unavailable.
   */
  get(): Promise<Credential>;
  /**
   * The credential get() would answer now, when answering it takes no read,
   * starts none (no refresh due) and reports no failure; otherwise
   * undefined, and get() is the way. No I/O, never throws: the proxy admits
   * a request with it without waiting a turn.
   */
  peek(): Credential | undefined;
  /** Releases what the source holds (Vault leases are revoked). Idempotent. */
  close(): Promise<void>;
}
