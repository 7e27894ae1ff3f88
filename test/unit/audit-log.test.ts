import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AUDIT_SUBJECT, AuditLog, auditFields, auditPath, auditSubject, DELETION_CHECK_MS, type AuditEvent, type RequestAuditEvent } from '../../controller/audit/audit-log.js';
import { machineSkipTitle } from '../support/tiers.js';
import { trustedOwners } from '../../controller/trusted-directory.js';

describe('AuditLog.recordBatch', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'wirekey-audit-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes a proxy worker\'s lines at once, after the done lines still waiting, in order, without query strings', () => {
    const file = path.join(dir, 'audit.log');
    const log = new AuditLog(file);
    log.recordDone({ decision: 'inject', workload: 'a', path: '/first' });
    log.recordBatch([auditFields({ decision: 'deny', workload: 'b', path: '/second?token=x' }), auditFields({ decision: 'inject', workload: 'c', path: '/third' })]);
    // No turn of the event loop has ended: everything is on disk already.
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { workload: string; path: string });
    expect(lines.map((l) => [l.workload, l.path])).toEqual([['a', '/first'], ['b', '/second'], ['c', '/third']]);
    log.recordBatch([]);
    log.close();
    expect(readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(3);
  });

  it('keeps the order of the calls across recordSoon, recordDone, record and recordBatch', () => {
    const file = path.join(dir, 'order.log');
    const log = new AuditLog(file);
    // A kernel event read at stop, then the usage line that counts its request.
    log.recordSoon({ decision: 'inject', datapath: 'kernel', workload: '1' });
    log.record({ decision: 'usage', datapath: 'kernel', workload: '2' });
    log.recordDone({ decision: 'inject', workload: '3' });
    log.recordSoon({ decision: 'inject', datapath: 'kernel', workload: '4' });
    log.recordBatch([auditFields({ decision: 'inject', workload: '5' })]);
    log.recordSoon({ decision: 'deny', datapath: 'kernel', workload: '6' });
    log.close();
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { workload: string }).workload);
    expect(lines).toEqual(['1', '2', '3', '4', '5', '6']);
  });
});

const isRoot = process.geteuid?.() === 0;

describe('auditPath', () => {
  it('keeps the path alone: no query, fragment, scheme or authority', () => {
    expect(auditPath('/v1/items')).toBe('/v1/items');
    expect(auditPath('/v1/items?token=s3cret')).toBe('/v1/items');
    expect(auditPath('/a#frag?x')).toBe('/a');
    expect(auditPath('/a?x#y')).toBe('/a');
    expect(auditPath('https://user:password@host/p?q')).toBe('/p');
    expect(auditPath('http://host?q=1')).toBe('/');
    expect(auditPath('http://host')).toBe('/');
    expect(auditPath('//host/p')).toBe('//host/p');
    expect(auditPath('*')).toBe('*');
    expect(auditPath('')).toBe('');
    expect(auditPath(undefined)).toBeUndefined();
  });

  it('answers as the plain regular-expression version does, over generated targets', () => {
    const reference = (target: string) => {
      let p = target;
      const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.exec(p);
      if (scheme) {
        const end = p.slice(scheme[0].length).search(/[/?#]/);
        p = end < 0 ? '/' : p.slice(scheme[0].length + end);
        if (!p.startsWith('/')) p = `/${p}`;
      }
      const q = p.search(/[?#]/);
      return q < 0 ? p : p.slice(0, q);
    };
    let seed = 7;
    const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n;
    const parts = ['/', '?', '#', 'a', 'B', '1', ':', '//', 'http', 'x+y.z-', '@', '%2F', '*', ' '];
    for (let k = 0; k < 20_000; k++) {
      const target = Array.from({ length: rand(8) }, () => parts[rand(parts.length)]).join('');
      expect(auditPath(target), JSON.stringify(target)).toBe(reference(target));
    }
  });
});

describe('auditFields', () => {
  /** The fields of a proxied request's line, in their order (RequestAuditEvent). */
  const REQUEST_KEYS = ['method', 'path', 'decision', 'status', 'credential', 'credentialVersion', 'leaseId', 'accessKeyId', 'reason',
    'masked', 'bytesUp', 'bytesDown', 'durationMs'];
  /** The line's members as JSON.stringify writes them: the subject's fields first, then the event's (in `order`, if given), its path cut at the query. */
  const reference = (who: Record<string, unknown> | undefined, event: Record<string, unknown>, order?: string[]) => {
    const fields: Record<string, unknown> = { ...who };
    for (const key of order ?? Object.keys(event)) if (key in event) fields[key] = key === 'path' && typeof event.path === 'string' ? auditPath(event.path) : event[key];
    return JSON.stringify(fields).slice(1, -1);
  };

  it('writes what JSON.stringify writes, a request\'s subject first, over generated events with hostile strings and numbers', () => {
    let seed = 11;
    const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n;
    const pieces = ['a', 'Z', '/', '?q=s3cret', '#f', '"', '\\', '\n', '\r', '\t', '\u0000', '\u001f', '\u007f', 'é', '\u2028',
      '\u{1F600}', '\ud800', '\udfff', '\ud83d', '</script>', ' ', '%22', ':', ','];
    const text = () => Array.from({ length: rand(6) }, () => pieces[rand(pieces.length)]).join('');
    const numbers = [0, -0, 1, 7, -3, 2 ** 31, 2 ** 53, 1.5, 1e21, 1e-7, NaN, Infinity, -Infinity];
    const numeric = new Set(['status', 'masked', 'bytesUp', 'bytesDown', 'durationMs', 'port', 'requests']);
    const otherKeys = ['binding', 'address', 'port', 'rule', 'connection', 'requests', 'firstSeen'];
    const value = (key: string) => (rand(4) === 0 ? undefined : numeric.has(key) ? numbers[rand(numbers.length)] : text());
    const shuffled = (keys: string[]) => keys.map((k) => [rand(1000), k] as const).sort((x, y) => x[0] - y[0]).map(([, k]) => k);
    for (let n = 0; n < 20_000; n++) {
      const who = { workload: text() || 'w', pid: rand(2) ? rand(100000) : undefined, uid: rand(2) ? 0 : undefined, service: text(), host: rand(2) ? text() : undefined };
      // Set in any order: a request's line has its fields in RequestAuditEvent's.
      const event: Record<string, unknown> = {};
      for (const key of shuffled(REQUEST_KEYS)) if (key === 'decision') event.decision = ['inject', 'deny', 'close'][rand(3)]; else if (rand(2)) event[key] = value(key);
      const request = { [AUDIT_SUBJECT]: auditSubject(who), ...event } as unknown as RequestAuditEvent;
      const got = auditFields(request);
      expect(got, JSON.stringify([who, event])).toBe(reference(who, event, REQUEST_KEYS));
      expect(JSON.parse(`{${got}}`)).toEqual(JSON.parse(`{${reference(who, event)}}`));
      // Any other event: as JSON.stringify writes it, in its own order.
      for (const key of otherKeys) if (rand(3) === 0) event[key] = value(key);
      const other = { ...who, ...event } as unknown as AuditEvent;
      expect(auditFields(other), JSON.stringify(other)).toBe(reference(undefined, { ...who, ...event }));
    }
  });

  it('writes a subject without its undefined fields, and a request\'s fields after it', () => {
    const subject = auditSubject({ workload: 'w', pid: 7, uid: undefined, service: 's', host: 'h.test' });
    expect(subject).toBe('"workload":"w","pid":7,"service":"s","host":"h.test"');
    expect(auditFields({ [AUDIT_SUBJECT]: subject, decision: 'inject', method: undefined })).toBe(`${subject},"decision":"inject"`);
  });

  it('is what a proxy worker thread sends: the symbol does not survive a structured clone, the serialised fields do', () => {
    const event: RequestAuditEvent = { [AUDIT_SUBJECT]: auditSubject({ workload: 'w', service: 's' }), decision: 'inject', path: '/p?token=x' };
    expect(Object.getOwnPropertySymbols(structuredClone(event))).toEqual([]);
    expect(structuredClone(auditFields(event))).toBe('"workload":"w","service":"s","path":"/p","decision":"inject"');
  });
});

describe('AuditLog file', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'wirekey-audit-file-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a symbolic link at the audit path, at start and on reopen, naming the path; the link\'s target is untouched', () => {
    const elsewhere = path.join(dir, 'elsewhere');
    writeFileSync(elsewhere, '');
    const file = path.join(dir, 'audit.log');
    symlinkSync(elsewhere, file);
    expect(() => new AuditLog(file)).toThrow(expect.objectContaining({
      code: 'WK_AUDIT_FILE',
      message: expect.stringMatching(new RegExp(`^audit log ${file} is a symbolic link`)) as unknown,
    }));

    rmSync(file);
    const log = new AuditLog(file);
    log.record({ decision: 'inject', workload: 'before' });
    // logrotate moved the file; someone put a link in its place.
    rmSync(file);
    symlinkSync(elsewhere, file);
    expect(() => log.reopen()).toThrow(/is a symbolic link/);
    // The old file stays in use.
    log.record({ decision: 'inject', workload: 'after' });
    log.close();
    expect(readFileSync(elsewhere, 'utf8')).toBe('');
  });

  it('refuses a directory others could replace the file in, at start and on reopen, without making the file; a sticky one (/tmp) is fine', () => {
    const why = 'the audit log says which workload used which credential';
    const open = path.join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    const file = path.join(open, 'audit.log');
    expect(() => new AuditLog(file)).toThrow(expect.objectContaining({
      code: 'WK_AUDIT_FILE',
      message: `audit log ${file}: its directory ${open} has mode 0777: group or others can add or replace files in it, and ${why} (put the file in a directory of its own that only ${trustedOwners()} can write, or chmod go-w ${open})`,
    }));
    expect(existsSync(file)).toBe(false);

    // Reached through a symbolic link higher up the path: the directory it is really in counts.
    const linked = path.join(dir, 'linked');
    symlinkSync(open, linked);
    expect(() => new AuditLog(path.join(linked, 'audit.log'))).toThrow(`its directory ${open} has mode 0777`);
    // Any directory above it that others may write: whoever may write there can rename the whole subtree away.
    const sub = path.join(open, 'sub');
    mkdirSync(sub, { mode: 0o755 });
    expect(() => new AuditLog(path.join(sub, 'audit.log'))).toThrow(
      `audit log ${path.join(sub, 'audit.log')}: the directory ${open} above it has mode 0777: others can rename what is in it, and ${why} (chmod o-w, or +t)`);
    expect(existsSync(path.join(sub, 'audit.log'))).toBe(false);
    // A group may write one above it (Ubuntu's /var/log is its syslog group's), not the file's own.
    chmodSync(open, 0o775);
    new AuditLog(path.join(sub, 'audit.log')).close();
    expect(() => new AuditLog(file)).toThrow(`its directory ${open} has mode 0775: group or others can add or replace files in it, and ${why} (put the file in a directory of its own that only ${trustedOwners()} can write, or chmod go-w ${open})`);
    chmodSync(open, 0o777);

    chmodSync(open, 0o1777);
    const log = new AuditLog(file);
    log.record({ decision: 'inject', workload: 'kept' });
    // The directory opened up after start: the reopen refuses, and the old file stays in use.
    chmodSync(open, 0o777);
    expect(() => log.reopen()).toThrow(/has mode 0777/);
    log.record({ decision: 'inject', workload: 'still' });
    log.close();
    expect(readFileSync(file, 'utf8')).toMatch(/"kept"[^]*"still"/);
  });

  it.skipIf(!isRoot)(`refuses a directory owned by another user${machineSkipTitle(isRoot ? undefined : 'needs root (chown)')}`, () => {
    const theirs = path.join(dir, 'theirs');
    mkdirSync(theirs);
    chownSync(theirs, 65534, 65534);
    expect(() => new AuditLog(path.join(theirs, 'audit.log'))).toThrow(`its directory ${theirs} is owned by uid 65534`);
    expect(existsSync(path.join(theirs, 'audit.log'))).toBe(false);
  });

  it('a file deleted while open is made anew at its path at the next write once DELETION_CHECK_MS have passed, and said so', () => {
    const file = path.join(dir, 'audit.log');
    let now = 1_000_000;
    const said: (string | undefined)[] = [];
    const log = new AuditLog(file, () => {}, { clock: () => now, onRecreated: (err) => said.push(err?.message) });
    log.record({ decision: 'inject', workload: 'first' });
    rmSync(file);
    // Within the interval nothing is checked: the line goes to the deleted file.
    now += DELETION_CHECK_MS - 1;
    log.record({ decision: 'inject', workload: 'unseen' });
    expect(said).toEqual([]);
    now += 1;
    log.record({ decision: 'inject', workload: 'second' });
    expect(said).toEqual([undefined]);
    log.close();
    expect(readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { workload: string }).workload)).toEqual(['second']);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('a deleted file that cannot be made anew (its directory gone): said, and lines go on to the old file', () => {
    const sub = path.join(dir, 'sub');
    mkdirSync(sub);
    const file = path.join(sub, 'audit.log');
    let now = 0;
    const said: (string | undefined)[] = [];
    const log = new AuditLog(file, () => {}, { clock: () => now, onRecreated: (err) => said.push(err?.message) });
    rmSync(sub, { recursive: true });
    now += DELETION_CHECK_MS;
    log.record({ decision: 'inject', workload: 'x' });
    expect(said).toHaveLength(1);
    expect(said[0]).toMatch(/ENOENT/);
    expect(log.writable).toBe(true);
    log.close();
  });

  it('creates the file 0600, and makes an existing file open to group or others 0600, at start and on reopen', () => {
    const file = path.join(dir, 'audit.log');
    new AuditLog(file).close();
    expect(statSync(file).mode & 0o777).toBe(0o600);

    writeFileSync(file, '{"earlier":true}\n', { mode: 0o644 });
    chmodSync(file, 0o664);
    const log = new AuditLog(file);
    expect(statSync(file).mode & 0o777).toBe(0o600);

    rmSync(file);
    writeFileSync(file, '');
    chmodSync(file, 0o604);
    log.reopen();
    expect(statSync(file).mode & 0o777).toBe(0o600);
    log.record({ decision: 'inject', workload: 'a' });
    log.close();
    expect(readFileSync(file, 'utf8')).toContain('"workload":"a"');

    // A mode with no group or other bits is left as it is.
    chmodSync(file, 0o700);
    new AuditLog(file).close();
    expect(statSync(file).mode & 0o777).toBe(0o700);
  });
});

const notRoot = process.getuid?.() === 0 ? undefined : 'requires root (mounts a small tmpfs)';

describe.skipIf(notRoot)(`AuditLog on a file system that fills up${machineSkipTitle(notRoot)}`, () => {
  it('a line cut short by a full disk is ended by the next write once there is room: every whole line still parses', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-audit-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k,mode=0700', 'wirekey-audit-test', dir]);
    let log: AuditLog | undefined;
    try {
      const file = path.join(dir, 'audit.log');
      const errors: Error[] = [];
      log = new AuditLog(file, (err) => errors.push(err));
      const filler = path.join(dir, 'filler');
      writeFileSync(filler, Buffer.alloc(12 * 1024));
      for (let i = 0; i < 200 && log.writable; i++) log.record({ decision: 'inject', workload: 'w'.repeat(60), path: `/${i}` });
      expect(log.writable).toBe(false);
      expect(errors.map((e) => (e as NodeJS.ErrnoException).code)).toEqual(['ENOSPC']);
      // The file ends in part of a line.
      expect(readFileSync(file, 'utf8').endsWith('\n')).toBe(false);
      rmSync(filler);
      log.record({ decision: 'inject', workload: 'after' });
      expect(log.writable).toBe(true);
      const lines = readFileSync(file, 'utf8').split('\n');
      expect(lines.at(-1)).toBe('');
      expect((JSON.parse(lines.at(-2) as string) as { workload: string }).workload).toBe('after');
      // Every line but the torn one is whole.
      const broken = lines.slice(0, -1).filter((l) => {
        try {
          JSON.parse(l);
          return false;
        } catch {
          return true;
        }
      });
      expect(broken).toHaveLength(1);
    } finally {
      // Its file open, the file system could not be unmounted.
      log?.close();
      execFileSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
