/**
 * Audit: one JSON line per decision (inject, deny, pass), tied to the
 * kernel's identity of the caller. Never the secret; never the query string,
 * which often carries one.
 */
import { openSync, writeSync, closeSync } from 'node:fs';

/**
 * inject: a request got its credential; deny: a request or connection was
 * refused; pass: relayed untouched (no credential); withhold: when a policy
 * is applied, a binding whose credential cannot be used now (its requests
 * are refused until it can).
 */
export type AuditDecision = 'inject' | 'deny' | 'pass' | 'withhold';

export interface AuditEvent {
  decision: AuditDecision;
  /** withhold: the binding whose credential is withheld. */
  binding?: string;
  /** Which datapath decided; written for the kernel (sk_msg) only, absent for the TLS proxy. */
  datapath?: 'proxy' | 'kernel';
  workload: string;
  /** The connecting process; absent on withhold lines, which no process caused. */
  pid?: number;
  uid?: number;
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
  #pending: string[] = [];

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
    // Synchronous: an audit line must not be lost when the agent stops right after.
    writeAll(this.#fd, `${this.#line(event)}\n`);
  }

  /**
   * Records `event` with the others that arrive in the same turn of the
   * event loop, in one write when the turn ends (kernel events come in
   * batches of up to thousands). close() writes what is still pending.
   */
  recordSoon(event: AuditEvent): void {
    if (this.#pending.push(this.#line(event)) === 1) queueMicrotask(() => this.#flush());
  }

  close(): void {
    this.#flush();
    if (this.#ownsFd) closeSync(this.#fd);
  }

  #line(event: AuditEvent): string {
    return JSON.stringify({ time: new Date().toISOString(), ...event, path: stripQuery(event.path) });
  }

  #flush(): void {
    if (!this.#pending.length) return;
    const text = `${this.#pending.join('\n')}\n`;
    this.#pending = [];
    writeAll(this.#fd, text);
  }
}

/** writeSync until every byte is written (a pipe may take a large batch in parts). */
function writeAll(fd: number, text: string): void {
  const buf = Buffer.from(text, 'utf8');
  for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off);
}

function stripQuery(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  const q = path.indexOf('?');
  return q < 0 ? path : path.slice(0, q);
}
