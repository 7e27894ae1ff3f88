/**
 * Audit: one JSON line per decision (inject, deny, pass), tied to the
 * kernel's identity of the caller. Never the secret; never the query string,
 * which often carries one.
 */
import { openSync, writeSync, closeSync, fstatSync, fchmodSync, lstatSync, constants } from 'node:fs';
import { dirname } from 'node:path';
import { WirekeyError } from '../errors.js';
import { replaceableThroughDirectory } from '../trusted-directory.js';

/**
 * inject: a request got its credential; deny: a request or connection was
 * refused; pass: relayed untouched (no credential); withhold: when a policy
 * is applied, a binding whose credential cannot be used now (its requests
 * are refused until it can). Egress (a workload with an egress section):
 * allow: an egress rule (`rule`) allowed the connection or request;
 * would-refuse: `mode: audit` let through what `enforce` would refuse
 * (`reason` says why); a refusal under `enforce` is a deny. close: an
 * upgraded connection (WebSocket) whose upgrade was an inject line ended,
 * with its bytes and duration. usage: the kernel datapath's count of the
 * requests one workload sent to one service with one credential version,
 * since the previous usage line of the same (`requests`, `firstSeen`,
 * `lastSeen`).
 */
export type AuditDecision = 'inject' | 'deny' | 'pass' | 'withhold' | 'allow' | 'would-refuse' | 'close' | 'usage';

/**
 * Key of a request event's first fields already serialised
 * (auditSubject()): who made a connection's requests and where they went,
 * the same on each of their lines, so written once per connection. A
 * symbol, which structured clones drop: a sink that sends events to
 * another thread sends their auditFields() instead.
 */
export const AUDIT_SUBJECT: unique symbol = Symbol('wirekey.auditSubject');

/** What auditSubject() serialises: each line of a connection's requests begins with it. */
export type AuditSubjectFields = Pick<AuditEvent, 'workload' | 'pid' | 'uid' | 'service' | 'host'>;

/** What a sink records: an event that names its workload, or a proxied request's, whose subject does. */
export type AuditRecord = AuditEvent | RequestAuditEvent;

/**
 * A proxied request's event: auditSubject() of its connection (who, to
 * which service and host), then these fields, in this order. `path` may be
 * the request's whole target: auditFields() cuts it.
 */
export type RequestAuditEvent = { [AUDIT_SUBJECT]: string } & Pick<AuditEvent, 'method' | 'path' | 'decision' | 'status' | 'credential'
  | 'credentialVersion' | 'leaseId' | 'accessKeyId' | 'reason' | 'masked' | 'bytesUp' | 'bytesDown' | 'durationMs'>;

/** What an audit line may say. */
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
  /**
   * Kernel datapath: the pinned address and port the connection went to.
   * Proxy egress lines: where the proxy relayed or forwarded (an address
   * the name resolved to); on a refusal, where the workload was going.
   */
  address?: string;
  port?: number;
  /** Kernel egress lines: the socket's protocol: tcp or udp; on socket lines another (icmp, icmpv6, sctp, udplite, raw, or its number). */
  protocol?: string;
  /**
   * Kernel egress lines: where the kernel judged it, connect(), sendmsg() (unconnected UDP), socket() (a kind of socket no
   * rule can name) or route (IPv4 options or an IPv6 routing header, set by setsockopt() or carried by a packet).
   */
  hook?: 'connect' | 'sendmsg' | 'socket' | 'route';
  /** Kernel egress socket and route lines: the socket's type (raw, datagram, stream, seqpacket) and family (ipv4, ipv6). */
  socket?: string;
  /** Proxy egress lines: the address the workload dialled, when the proxy went to another (`address`) instead. */
  dialled?: string;
  /** Egress: the label of the rule that allowed it ("allow[2]", "binding app-api"). */
  rule?: string;
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
  /** inject lines: occurrences of the request's credential values the proxy masked in the response (an upstream echoing them). */
  masked?: number;
  /** close lines: bytes from the workload to the upstream, and back, after the upgrade. */
  bytesUp?: number;
  bytesDown?: number;
  /** close lines: from the upgrade's 101 to the close (ms). */
  durationMs?: number;
  /** usage lines: requests injected since the previous usage line of the same workload, service and credential version. */
  requests?: number;
  /** usage lines: the first request the kernel counted for this workload, service and credential version (ISO 8601). */
  firstSeen?: string;
  /** usage lines: the latest of them (ISO 8601). */
  lastSeen?: string;
  /**
   * Lines of the kernel's events (its inject and deny lines, egress
   * included): when the kernel saw the request or connection (ISO 8601).
   * `time` is when the agent wrote the line, after reading the event:
   * up to the ring's read interval later, more when the agent was busy.
   */
  seen?: string;
}

/** How often (at most) a write checks that the audit file was not deleted under the agent (ms). */
export const DELETION_CHECK_MS = 1000;

/** Audit bytes waiting for stdout past which the sink counts as backed up (the proxy then refuses: see `writable`). */
export const AUDIT_BACKLOG_MAX = 16 * 1024 * 1024;

/**
 * Where audit lines go: an append-only file (0600), or stdout ('-').
 *
 * A file is written with a synchronous write per line or batch, so a line
 * is on disk before the request it records is answered and none is lost
 * when the agent stops; a regular file never blocks on a full reader.
 * Stdout may be a pipe that another process set non-blocking, or a reader
 * that stalls: lines go through process.stdout, which queues what the pipe
 * cannot take yet instead of failing. Either way `writable` turns false
 * while the sink fails or (stdout) more than AUDIT_BACKLOG_MAX bytes wait,
 * and the proxy refuses requests it could not audit until it recovers.
 */
/** What the proxy writes audit lines to: the agent's AuditLog, or (in a proxy worker thread) its batches to the agent's. */
export interface AuditSink {
  /** False while lines cannot be written: the proxy refuses what it could not audit. */
  readonly writable: boolean;
  record(event: AuditRecord): void;
  /** A line for something already done, written with the others of the same turn of the event loop. */
  recordDone(event: AuditRecord): void;
}

export class AuditLog implements AuditSink {
  readonly #target: string;
  #fd: number | null = null;
  #pending: string[] = [];
  /** Lines of recordDone(), written when the turn of the event loop ends. */
  #done: string[] = [];
  readonly #flushDone = () => this.#flushDoneLines();
  #failure: Error | null = null;
  /** A write failed part way (a full disk): the file ends in part of a line, which the next write ends first. */
  #torn = false;
  readonly #onError: (err: Error) => void;
  readonly #onRecreated: (err?: Error) => void;
  readonly #clock: () => number;
  #timeMs = -1;
  #time = '';
  /** When the file was last checked for a deletion (clock ms). */
  #checkedMs = 0;

  /**
   * `target` is a file path (appended, created 0600) or '-' for stdout.
   * `onError` hears of a write that failed, once per failure run;
   * `onRecreated` that the file was found deleted and made anew at its
   * path (or, with the error, could not be); `clock` (ms) paces the check.
   * @throws WirekeyError WK_AUDIT_FILE when the path is a symbolic link or
   * the file cannot be made 0600; otherwise the open error of the file.
   */
  constructor(
    target: string,
    onError: (err: Error) => void = () => {},
    opts: { onRecreated?: (err?: Error) => void; clock?: () => number } = {},
  ) {
    this.#target = target;
    this.#onError = onError;
    this.#onRecreated = opts.onRecreated ?? (() => {});
    this.#clock = opts.clock ?? Date.now;
    if (target !== '-') this.#fd = openAuditFile(target);
    // A reader that went away (EPIPE) is a failed sink, not a crash.
    else process.stdout.on('error', (err) => this.#fail(err));
  }

  /** False while lines cannot be written, or wait in a backlog past AUDIT_BACKLOG_MAX. */
  get writable(): boolean {
    if (this.#failure) return false;
    return this.#fd !== null || process.stdout.writableLength <= AUDIT_BACKLOG_MAX;
  }

  /** Records `event` now, after the lines of recordDone() and recordSoon() still waiting: the file keeps the order of the calls. */
  record(event: AuditRecord): void {
    this.#flush();
    this.#write(`${this.#line(event)}\n`);
  }

  /**
   * Records `event`, something already done (a proxied request whose
   * response was forwarded whole), with the others recorded so in the same
   * turn of the event loop: one write once that turn's I/O callbacks have
   * run (setImmediate), not one per request. A record() after it writes it
   * first, so the file keeps the order of the calls; close() writes what
   * waits. A failed write turns `writable` false as any other.
   */
  recordDone(event: AuditRecord): void {
    if (this.#done.push(this.#line(event)) === 1) setImmediate(this.#flushDone);
  }

  /**
   * Records events given as their auditFields() now, in one write after the
   * lines of recordDone() and recordSoon() still waiting (a proxy worker
   * thread's lines of one turn, already done there).
   */
  recordBatch(fields: string[]): void {
    if (!fields.length) return;
    this.#flush();
    this.#write(`${fields.map((f) => this.#timed(f)).join('\n')}\n`);
  }

  /**
   * Records `event` with the others that arrive in the same turn of the
   * event loop, in one write when the turn ends (kernel events come in
   * batches of up to thousands). close() writes what is still pending.
   */
  recordSoon(event: AuditEvent): void {
    if (this.#pending.push(this.#line(event)) === 1) queueMicrotask(() => this.#flush());
  }

  /**
   * Opens the file again by its path (after logrotate moved it away): lines
   * from now on go to the new file. A file that cannot be opened leaves the
   * old one in use. No-op for stdout.
   * @throws as the constructor does.
   */
  reopen(): void {
    if (this.#fd === null) return;
    this.#flush();
    const fd = openAuditFile(this.#target);
    const old = this.#fd;
    this.#fd = fd;
    closeSync(old);
  }

  close(): void {
    this.#flush();
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
  }

  /** `event` as one JSON object, `time` first. */
  #line(event: AuditRecord): string {
    return this.#timed(auditFields(event));
  }

  /** The line of an event's auditFields() (never empty: every event has a decision): `time` first. */
  #timed(fields: string): string {
    return `{"time":"${this.#now()}",${fields}}`;
  }

  /** The time now as ISO 8601, made once per millisecond: a busy proxy writes many lines in one. */
  #now(): string {
    const ms = Date.now();
    if (ms !== this.#timeMs) {
      this.#timeMs = ms;
      this.#time = new Date(ms).toISOString();
    }
    return this.#time;
  }

  #flushDoneLines(): void {
    if (!this.#done.length) return;
    const text = `${this.#done.join('\n')}\n`;
    this.#done = [];
    this.#write(text);
  }

  #flush(): void {
    this.#flushDoneLines();
    if (!this.#pending.length) return;
    const text = `${this.#pending.join('\n')}\n`;
    this.#pending = [];
    this.#write(text);
  }

  /**
   * A file deleted while open (rm, a rotation without SIGUSR1) takes every
   * later line to an inode nobody can read: checked at a write at most once
   * every DELETION_CHECK_MS, and made anew at its path when found so.
   */
  #recreateIfDeleted(): void {
    const now = this.#clock();
    if (this.#fd === null || now - this.#checkedMs < DELETION_CHECK_MS) return;
    this.#checkedMs = now;
    try {
      if (fstatSync(this.#fd).nlink > 0) return;
      const fd = openAuditFile(this.#target);
      closeSync(this.#fd);
      this.#fd = fd;
      this.#torn = false;
      this.#onRecreated();
    } catch (err) {
      // Not made anew (the directory is gone, say): lines go on to the old file, and the next check tries again.
      this.#onRecreated(err as Error);
    }
  }

  #write(text: string): void {
    this.#recreateIfDeleted();
    try {
      if (this.#fd !== null) writeAll(this.#fd, this.#torn ? `\n${text}` : text);
      else process.stdout.write(text);
      this.#failure = null;
      this.#torn = false;
    } catch (err) {
      if (err instanceof PartialWrite) this.#torn = true;
      this.#fail(err instanceof PartialWrite ? err.cause : (err as Error));
    }
  }

  #fail(err: Error): void {
    if (!this.#failure) this.#onError(err);
    this.#failure = err;
  }
}

/**
 * Opens `target` for appending, created 0600. Not through a symbolic link:
 * whoever could put one at the path would choose where the audit trail goes.
 * A regular file open to group or others is made 0600: its lines say which
 * workload used which credential, and nobody else should add or change one.
 * Nor may anyone else be able to rename it, or a directory above it, away
 * and put another in its place (replaceableThroughDirectory()).
 * @throws WirekeyError WK_AUDIT_FILE when `target` is a symbolic link, its
 * mode cannot be changed or its directory lets others replace it;
 * otherwise the open error.
 */
function openAuditFile(target: string): number {
  // Before the file is made (the file itself is no link); a directory that cannot be resolved is left to the open to report.
  let problem: string | undefined;
  try {
    problem = replaceableThroughDirectory([dirname(target)], 'the audit log says which workload used which credential');
  } catch {
    problem = undefined;
  }
  if (problem) throw new WirekeyError('WK_AUDIT_FILE', `audit log ${target}: ${problem}`);
  let fd: number;
  try {
    fd = openSync(target, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  } catch (err) {
    // O_NOFOLLOW fails with ELOOP when the last component is a link; ELOOP can also mean a loop further up.
    if ((err as NodeJS.ErrnoException).code === 'ELOOP' && isSymlink(target)) {
      throw new WirekeyError('WK_AUDIT_FILE',
        `audit log ${target} is a symbolic link: it is not followed (whoever can replace it chooses where audit lines go); give the file's own path`,
        { cause: err });
    }
    throw err;
  }
  try {
    const st = fstatSync(fd);
    // Only a regular file: a device (/dev/null) or a FIFO is not ours to change.
    if (st.isFile() && (st.mode & 0o077) !== 0) {
      try {
        fchmodSync(fd, 0o600);
      } catch (err) {
        throw new WirekeyError('WK_AUDIT_FILE',
          `audit log ${target} has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')} and cannot be made 0600: ${(err as Error).message}`,
          { cause: err });
      }
    }
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return fd;
}

function isSymlink(file: string): boolean {
  try {
    return lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}

/** writeSync until every byte is written. @throws the write's error, as a PartialWrite once some bytes were written. */
function writeAll(fd: number, text: string): void {
  const buf = Buffer.from(text, 'utf8');
  let off = 0;
  try {
    while (off < buf.length) off += writeSync(fd, buf, off);
  } catch (err) {
    throw off > 0 ? new PartialWrite(err as Error) : err;
  }
}

/** A write that stopped after some of its bytes. */
class PartialWrite extends Error {
  override readonly cause: Error;
  constructor(cause: Error) {
    super(cause.message);
    this.cause = cause;
  }
}

/**
 * A request target as audit lines give it: its path alone. Not its query,
 * which often carries a secret; nor, for an absolute URL, its scheme and
 * authority, which may carry user info (`https://user:password@host/`).
 */
export function auditPath(target: string | undefined): string | undefined {
  if (target === undefined) return undefined;
  let path = target;
  // An origin-form target (most) begins with '/', which no scheme does.
  const scheme = path.charCodeAt(0) === 0x2f ? null : ABSOLUTE.exec(path);
  if (scheme) {
    // The authority ends at the first '/', '?' or '#' after the scheme.
    const end = path.slice(scheme[0].length).search(/[/?#]/);
    path = end < 0 ? '/' : path.slice(scheme[0].length + end);
    if (!path.startsWith('/')) path = `/${path}`;
  }
  const q = path.indexOf('?');
  const h = path.indexOf('#');
  const cut = q < 0 ? h : h < 0 ? q : Math.min(q, h);
  return cut < 0 ? path : path.slice(0, cut);
}

const ABSOLUTE = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

/**
 * `who` as the first members of the lines of a connection's requests (the
 * text between the braces of a JSON object, undefined fields left out), for
 * their events' AUDIT_SUBJECT.
 */
export function auditSubject(who: AuditSubjectFields): string {
  return JSON.stringify({ workload: who.workload, pid: who.pid, uid: who.uid, service: who.service, host: who.host }).slice(1, -1);
}

/**
 * `event` as the members of a JSON object, without its braces, `path` cut
 * at its query (auditPath()); undefined fields have none. An event with a
 * subject (a proxied request's) is written field by field, its subject
 * first and its own fields in the order of RequestAuditEvent: it is written
 * once for every request the proxy forwards. Any other as JSON.stringify()
 * writes it.
 */
export function auditFields(event: AuditRecord): string {
  if (AUDIT_SUBJECT in event) return requestFields(event);
  const path = auditPath(event.path);
  return JSON.stringify(path === event.path ? event : { ...event, path }).slice(1, -1);
}

function requestFields(e: RequestAuditEvent): string {
  let out = e[AUDIT_SUBJECT];
  out = stringMember(out, 'method', e.method);
  out = stringMember(out, 'path', auditPath(e.path));
  out = stringMember(out, 'decision', e.decision);
  out = numberMember(out, 'status', e.status);
  out = stringMember(out, 'credential', e.credential);
  out = stringMember(out, 'credentialVersion', e.credentialVersion);
  out = stringMember(out, 'leaseId', e.leaseId);
  out = stringMember(out, 'accessKeyId', e.accessKeyId);
  out = stringMember(out, 'reason', e.reason);
  out = numberMember(out, 'masked', e.masked);
  out = numberMember(out, 'bytesUp', e.bytesUp);
  out = numberMember(out, 'bytesDown', e.bytesDown);
  return numberMember(out, 'durationMs', e.durationMs);
}

/** `members` and `"name":value` after them (a subject is never empty), unless `value` is undefined. */
function stringMember(members: string, name: string, value: string | undefined): string {
  return value === undefined ? members : `${members},"${name}":${jsonString(value)}`;
}

function numberMember(members: string, name: string, value: number | undefined): string {
  return value === undefined ? members : `${members},"${name}":${Number.isFinite(value) ? String(value) : 'null'}`;
}

/** `s` as a JSON string: as it is between quotes unless a character needs escaping (then as JSON.stringify writes it). */
function jsonString(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // '"', '\\', control characters, and surrogates (a lone one is escaped; JSON.stringify tells them apart).
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(s);
  }
  return `"${s}"`;
}
