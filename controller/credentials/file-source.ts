import { constants, type BigIntStats } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import YAML from 'yaml';
import { CredentialError } from '../errors.js';
import { Secret } from './secret.js';
import type { Credential, CredentialSource, CredentialState } from './credential.js';

export interface FileCredentialSourceOptions {
  /** The credential's name in policy; used in every error message. */
  name: string;
  /** The file holding the secret; symlinks are followed (Kubernetes-style mounts). */
  path: string;
  /** When set, the file is a YAML/JSON map and the secret is this field's string value. */
  field?: string;
  /**
   * Minimum time between two stat() calls on the file, in milliseconds.
   * Requests in between are served from memory. Default 1000.
   */
  recheckIntervalMs?: number;
  /** The monotonic clock the interval is measured on, in milliseconds. Default `performance.now`. */
  now?: () => number;
}

/** Secrets are small; refusing big files keeps a wrong path from filling memory. */
const MAX_FILE_BYTES = 1024 * 1024;
const DEFAULT_RECHECK_INTERVAL_MS = 1000;

interface FileIdentity {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

function identityOf(st: BigIntStats): FileIdentity {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
}

function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

/** Errno codes are safe to show; the rest of a system error is not needed. */
function errnoOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'unknown error';
}

/**
 * A credential kept in a root-only file: the embedded default for hosts
 * without Vault, and the demo's source.
 *
 * The file is stat()ed at most once per recheck interval and re-read only
 * when its identity (dev, inode, size, mtime, ctime) changed, so rotating the
 * file (in place or by rename) takes effect on the next request after at most
 * one interval, without a read per request. ctime is part of the identity so
 * that a chmod making the file readable by others is noticed and refused.
 */
export class FileCredentialSource implements CredentialSource {
  readonly name: string;
  readonly path: string;
  readonly field: string | undefined;
  private readonly recheckIntervalMs: number;
  private readonly now: () => number;

  private cached: { identity: FileIdentity; credential: Credential } | undefined;
  /** The outcome of the last check, reused until the interval has passed. */
  private lastCheck: { at: number; error: CredentialError | undefined } | undefined;
  private inFlight: Promise<Credential> | undefined;

  constructor(options: FileCredentialSourceOptions) {
    this.name = options.name;
    this.path = options.path;
    this.field = options.field;
    this.recheckIntervalMs = options.recheckIntervalMs ?? DEFAULT_RECHECK_INTERVAL_MS;
    this.now = options.now ?? (() => performance.now());
  }

  /**
   * The current secret.
   *
   * @throws CredentialError naming this credential and the file path (never
   *   the content) when the file is missing or unreadable, is not a regular
   *   file, is group/other-accessible (mode & 0o077) or owned by another
   *   non-root user, is larger than 1 MiB, is empty, or (with `field`) is not a
   *   YAML/JSON map holding that field as a non-empty string. A failed check
   *   is reported again without touching the file until the interval passes.
   */
  async get(): Promise<Credential> {
    const now = this.now();
    if (this.lastCheck && now - this.lastCheck.at < this.recheckIntervalMs) {
      if (this.lastCheck.error) throw this.lastCheck.error;
      if (this.cached) return this.cached.credential;
    }
    // Single flight: a burst of requests at the interval boundary costs one
    // stat, not one each.
    this.inFlight ??= this.refresh().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  peek(): Credential | undefined {
    const check = this.lastCheck;
    if (!check || check.error || this.now() - check.at >= this.recheckIntervalMs) return undefined;
    return this.cached?.credential;
  }

  private async refresh(): Promise<Credential> {
    try {
      const secret = await this.check();
      this.lastCheck = { at: this.now(), error: undefined };
      return secret;
    } catch (err) {
      const error =
        err instanceof CredentialError ? err : this.fail(`cannot read ${this.path} (${errnoOf(err)})`);
      this.cached = undefined;
      this.lastCheck = { at: this.now(), error };
      throw error;
    }
  }

  private async check(): Promise<Credential> {
    let st: BigIntStats;
    try {
      st = await stat(this.path, { bigint: true });
    } catch (err) {
      throw this.fail(`cannot stat ${this.path} (${errnoOf(err)})`);
    }
    if (this.cached && sameIdentity(this.cached.identity, identityOf(st))) {
      return this.cached.credential;
    }
    // Checked before open(): opening a FIFO would block until a writer comes.
    this.checkFile(st);
    return this.read();
  }

  private checkFile(st: BigIntStats): void {
    if (!st.isFile()) throw this.fail(`${this.path} is not a regular file`);
    const mode = Number(st.mode & 0o777n);
    if ((mode & 0o077) !== 0) {
      throw this.fail(
        `${this.path} has mode 0${mode.toString(8)}; it must not be accessible by group or others (chmod 600)`,
      );
    }
    // Another unprivileged owner could read the file or swap its content.
    const euid = process.geteuid?.();
    if (euid !== undefined && st.uid !== 0n && st.uid !== BigInt(euid)) {
      throw this.fail(`${this.path} is owned by uid ${st.uid}; it must be owned by ${euid === 0 ? 'root' : `root or uid ${euid}`}`);
    }
    if (st.size > BigInt(MAX_FILE_BYTES)) {
      throw this.fail(`${this.path} is larger than ${MAX_FILE_BYTES} bytes`);
    }
  }

  private async read(): Promise<Credential> {
    let handle;
    try {
      // O_NONBLOCK: the path may have been swapped for a FIFO since stat().
      handle = await open(this.path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    } catch (err) {
      throw this.fail(`cannot open ${this.path} (${errnoOf(err)})`);
    }
    try {
      // Re-check the file actually opened, and remember its identity rather
      // than the earlier stat's, so a swap in between cannot be cached
      // under the wrong identity.
      const st = await handle.stat({ bigint: true });
      this.checkFile(st);
      const content = await handle.readFile();
      if (BigInt(content.length) !== st.size) {
        // Written to while we read: report nothing cached, retry next time.
        throw this.fail(`${this.path} changed while being read`);
      }
      const credential = this.extract(content.toString('utf8'));
      this.cached = { identity: identityOf(st), credential };
      return credential;
    } catch (err) {
      if (err instanceof CredentialError) throw err;
      throw this.fail(`cannot read ${this.path} (${errnoOf(err)})`);
    } finally {
      await handle.close();
    }
  }

  /** The file's mtime is the value's age; no version, no expiry. */
  state(): CredentialState {
    const cached = this.lastCheck?.error ? undefined : this.cached;
    return {
      available: cached !== undefined,
      ...(cached ? { createdAt: Number(cached.identity.mtimeNs / 1_000_000n) } : {}),
      degraded: this.lastCheck?.error !== undefined,
    };
  }

  /** Nothing to release: the value lives only in this process's memory. */
  async close(): Promise<void> {
    this.cached = undefined;
  }

  private extract(text: string): Credential {
    if (this.field === undefined) {
      const value = text.trim();
      if (value === '') throw this.fail(`${this.path} is empty`);
      return { name: this.name, secret: new Secret(value), fields: this.stringFields(text) };
    }
    return { name: this.name, secret: new Secret(this.extractField(text)), fields: new Map() };
  }

  /**
   * The string fields of a file that is a YAML/JSON map (AWS keys for
   * SigV4); empty for a file that is one plain secret.
   */
  private stringFields(text: string): Map<string, Secret> {
    const fields = new Map<string, Secret>();
    let data: unknown;
    try {
      data = YAML.parse(text, { uniqueKeys: true, maxAliasCount: 100 });
    } catch {
      return fields;
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) return fields;
    for (const [k, v] of Object.entries(data as Record<string, unknown>)) {
      if (typeof v === 'string' && v.trim() !== '') fields.set(k, new Secret(v.trim()));
    }
    return fields;
  }

  private extractField(text: string): string {
    const field = this.field as string;
    const data = this.parseMap(text);
    if (!Object.prototype.hasOwnProperty.call(data, field)) {
      throw this.fail(`${this.path} has no field "${field}"`);
    }
    const value: unknown = data[field];
    if (typeof value !== 'string') {
      throw this.fail(`field "${field}" in ${this.path} is not a string`);
    }
    const trimmed = value.trim();
    if (trimmed === '') throw this.fail(`field "${field}" in ${this.path} is empty`);
    return trimmed;
  }

  /**
   * Parses YAML (and so JSON). The yaml library quotes the offending source
   * line in its messages, and that line may be the secret, so only the
   * position and the library's fixed error code are kept, and no `cause`.
   */
  private parseMap(text: string): Record<string, unknown> {
    let doc: YAML.Document.Parsed;
    try {
      doc = YAML.parseDocument(text, { uniqueKeys: true });
    } catch {
      throw this.fail(`${this.path} is not valid YAML/JSON`);
    }
    // Warnings (unresolved tags, bad directives) mean the value may not be
    // what the author meant, so they are refused like errors.
    const problem = doc.errors[0] ?? doc.warnings[0];
    if (problem) {
      const pos = problem.linePos?.[0];
      const where = pos ? ` at line ${pos.line}, column ${pos.col}` : '';
      throw this.fail(`${this.path} is not valid YAML/JSON${where} (${problem.code})`);
    }
    let data: unknown;
    try {
      data = doc.toJS({ maxAliasCount: 100 });
    } catch {
      throw this.fail(`${this.path} is not valid YAML/JSON`);
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data) || data instanceof Map) {
      throw this.fail(`${this.path} is not a YAML/JSON map`);
    }
    return data as Record<string, unknown>;
  }

  private fail(message: string): CredentialError {
    return new CredentialError(this.name, message);
  }
}
