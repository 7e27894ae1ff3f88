/**
 * Audit: one JSON line per decision (inject, deny, pass), tied to the
 * kernel's identity of the caller. Never the secret; never the query string,
 * which often carries one.
 */
import { openSync, writeSync, closeSync } from 'node:fs';

export type AuditDecision = 'inject' | 'deny' | 'pass';

export interface AuditEvent {
  decision: AuditDecision;
  /** Which datapath decided; written for the kernel (sk_msg) only, absent for the TLS proxy. */
  datapath?: 'proxy' | 'kernel';
  workload: string;
  pid: number;
  uid: number;
  service?: string;
  host?: string;
  /** Kernel datapath: the pinned address and port the connection went to. */
  address?: string;
  port?: number;
  /** Kernel datapath: the socket cookie, the same on every line of one connection. */
  connection?: string;
  method?: string;
  path?: string;
  status?: number;
  credential?: string;
  /** Which version of the credential: a KV version. */
  credentialVersion?: string;
  /** The Vault lease the credential came from. */
  leaseId?: string;
  /** The AWS access key id a SigV4 signature used (an identifier, not a secret). */
  accessKeyId?: string;
  reason?: string;
}

export class AuditLog {
  readonly #fd: number;
  readonly #ownsFd: boolean;

  /** `target` is a file path (appended, created 0600) or '-' for stdout. */
  constructor(target: string) {
    if (target === '-') {
      this.#fd = 1;
      this.#ownsFd = false;
    } else {
      this.#fd = openSync(target, 'a', 0o600);
      this.#ownsFd = true;
    }
  }

  record(event: AuditEvent): void {
    const line = JSON.stringify({ time: new Date().toISOString(), ...event, path: stripQuery(event.path) });
    // Synchronous: an audit line must not be lost when the agent stops right after.
    writeSync(this.#fd, `${line}\n`);
  }

  close(): void {
    if (this.#ownsFd) closeSync(this.#fd);
  }
}

function stripQuery(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  const q = path.indexOf('?');
  return q < 0 ? path : path.slice(0, q);
}
