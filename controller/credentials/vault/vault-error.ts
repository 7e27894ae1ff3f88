import { WirekeyError } from '../../errors.js';

export interface VaultErrorDetails {
  /** The VaultConnection's name in the policy. */
  connection: string;
  /** HTTP method of the failed call (GET, PUT, ...). */
  method: string;
  /** The Vault API path, without `/v1/` (e.g. `auth/approle/login`). Never carries a secret. */
  path: string;
  /** The HTTP status Vault answered with; undefined when Vault could not be reached. */
  status?: number;
  /** What went wrong: Vault's own error text, an errno code, or our words. Never a secret. */
  reason: string;
  cause?: unknown;
}

/**
 * A call to Vault/OpenBao failed. The message names the connection, the
 * method and path, and the HTTP status (or that Vault was unreachable),
 * never a token, secret id or secret value.
 */
export class VaultError extends WirekeyError {
  readonly connection: string;
  readonly method: string;
  readonly path: string;
  /** HTTP status; undefined when the server could not be reached (or timed out). */
  readonly status: number | undefined;
  readonly reason: string;

  constructor(details: VaultErrorDetails) {
    const what = details.status === undefined ? 'Vault unreachable' : `HTTP ${details.status}`;
    super(
      'WK_VAULT',
      `vault connection "${details.connection}": ${details.method} ${details.path} failed: ${what}: ${details.reason}`,
      details.cause === undefined ? undefined : { cause: details.cause },
    );
    this.connection = details.connection;
    this.method = details.method;
    this.path = details.path;
    this.status = details.status;
    this.reason = details.reason;
  }

  /**
   * True when Vault did not give an authoritative answer: unreachable,
   * timed out, sealed or overloaded (5xx, 429). Cached credentials keep
   * being served through such failures.
   */
  get transient(): boolean {
    return this.status === undefined || this.status >= 500 || this.status === 429 || this.status === 412;
  }
}
