import { chmod, mkdtemp, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import * as fsp from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import util from 'node:util';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FileCredentialSource } from '../../controller/credentials/file-source.js';
import { Secret } from '../../controller/credentials/secret.js';
import { CredentialError } from '../../controller/errors.js';

// Wrap the fs calls the source makes so tests can count stats and reads.
vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  return { ...actual, open: vi.fn(actual.open), stat: vi.fn(actual.stat) };
});

const SECRET = 'sk-test-4f1e-SECRET-VALUE';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'wirekey-file-source-'));
  vi.mocked(fsp.open).mockClear();
  vi.mocked(fsp.stat).mockClear();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function secretFile(name: string, content: string, mode = 0o600): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, content, { mode });
  await chmod(file, mode);
  return file;
}

/** Runs `get()` expecting a CredentialError, and checks it never leaks the secret. */
async function expectRefusal(source: FileCredentialSource, message: RegExp, leak = SECRET): Promise<CredentialError> {
  const err = await source.get().then(
    () => {
      throw new Error('expected a CredentialError');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CredentialError);
  const error = err as CredentialError;
  expect(error.code).toBe('WK_CREDENTIAL');
  expect(error.credential).toBe(source.name);
  expect(error.message).toMatch(message);
  expect(error.message).toContain(source.path);
  expect(error.message).toContain(`credential "${source.name}"`);
  for (const text of [error.message, error.stack ?? '', util.inspect(error, { depth: Infinity }), JSON.stringify(error)]) {
    expect(text).not.toContain(leak);
  }
  expect(error.cause).toBeUndefined();
  return error;
}

describe('FileCredentialSource', () => {
  it('uses the whole file, trimmed, without a field', async () => {
    const file = await secretFile('token', `\n  ${SECRET}\n\n`);
    const { secret, fields } = await new FileCredentialSource({ name: 'demo', path: file }).get();
    expect(secret).toBeInstanceOf(Secret);
    expect(secret?.reveal()).toBe(SECRET);
    expect(fields.size).toBe(0);
  });

  it('reads a field from YAML and from JSON', async () => {
    const yamlFile = await secretFile('creds.yaml', `other: x\napi_key: ${SECRET}\n`);
    expect((await new FileCredentialSource({ name: 'y', path: yamlFile, field: 'api_key' }).get()).secret?.reveal()).toBe(SECRET);
    const jsonFile = await secretFile('creds.json', JSON.stringify({ api_key: `${SECRET}\n` }));
    expect((await new FileCredentialSource({ name: 'j', path: jsonFile, field: 'api_key' }).get()).secret?.reveal()).toBe(SECRET);
  });

  it('follows symlinks, as secret mounts use them', async () => {
    const file = await secretFile('real', SECRET);
    const link = path.join(dir, 'link');
    await symlink(file, link);
    expect((await new FileCredentialSource({ name: 'l', path: link }).get()).secret?.reveal()).toBe(SECRET);
  });

  it.each([0o644, 0o640, 0o604, 0o620, 0o602, 0o660])('refuses a file with mode 0%s', async (mode) => {
    const file = await secretFile('token', SECRET, mode);
    const err = await expectRefusal(new FileCredentialSource({ name: 'perm', path: file }), /must not be accessible by group or others/);
    expect(err.message).toContain(`0${mode.toString(8)}`);
  });

  it('refuses a file owned by another unprivileged user', async () => {
    if (process.geteuid?.() !== 0) return;
    const file = await secretFile('token', SECRET);
    execFileSync('chown', ['65534', file]);
    const err = await expectRefusal(new FileCredentialSource({ name: 'owner', path: file }), /owned by uid 65534/);
    // As root, root is the only owner allowed: not "root or uid 0".
    expect(err.message).toContain(`${file} is owned by uid 65534; it must be owned by root`);
    expect(err.message).not.toContain('uid 0');
  });

  it('refuses a directory, a FIFO and a missing file', async () => {
    await expectRefusal(new FileCredentialSource({ name: 'd', path: dir }), /not a regular file/);
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', ['-m', '600', fifo]);
    await expectRefusal(new FileCredentialSource({ name: 'f', path: fifo }), /not a regular file/);
    await expectRefusal(new FileCredentialSource({ name: 'm', path: path.join(dir, 'missing') }), /ENOENT/);
  });

  it('refuses an empty secret', async () => {
    await expectRefusal(new FileCredentialSource({ name: 'e', path: await secretFile('empty', ' \n\t\n') }), /is empty/);
    const file = await secretFile('empty.yaml', 'api_key: "  "\n');
    await expectRefusal(new FileCredentialSource({ name: 'e', path: file, field: 'api_key' }), /field "api_key" .* is empty/);
  });

  it('names a missing field without showing values', async () => {
    const file = await secretFile('creds.yaml', `apikey: ${SECRET}\n`);
    const err = await expectRefusal(new FileCredentialSource({ name: 'mf', path: file, field: 'api_key' }), /has no field "api_key"/);
    expect(err.message).not.toContain('apikey');
  });

  it('refuses non-string fields and non-map documents', async () => {
    const numeric = await secretFile('n.yaml', 'api_key: 123456789\n');
    await expectRefusal(new FileCredentialSource({ name: 'n', path: numeric, field: 'api_key' }), /not a string/, '123456789');
    const nested = await secretFile('o.yaml', `api_key: {value: ${SECRET}}\n`);
    await expectRefusal(new FileCredentialSource({ name: 'o', path: nested, field: 'api_key' }), /not a string/);
    const list = await secretFile('l.yaml', `- ${SECRET}\n`);
    await expectRefusal(new FileCredentialSource({ name: 'l', path: list, field: 'api_key' }), /not a YAML\/JSON map/);
    const scalar = await secretFile('s.yaml', `${SECRET}\n`);
    await expectRefusal(new FileCredentialSource({ name: 's', path: scalar, field: 'api_key' }), /not a YAML\/JSON map/);
  });

  it('reports YAML errors by position only, never quoting the content', async () => {
    const cases: Array<[string, RegExp]> = [
      [`api_key: "${SECRET}\n`, /not valid YAML\/JSON at line \d+, column \d+ \(MISSING_CHAR\)/],
      [`{"api_key": ${SECRET}`, /not valid YAML\/JSON at line 1, column \d+/],
      [`api_key: ${SECRET}\napi_key: ${SECRET}\n`, /DUPLICATE_KEY/],
      [`api_key: !custom ${SECRET}\n`, /TAG_RESOLVE_FAILED/],
      [`api_key: *${SECRET}\n`, /not valid YAML\/JSON/],
      [`---\napi_key: a\n---\napi_key: ${SECRET}\n`, /MULTIPLE_DOCS/],
    ];
    for (const [content, message] of cases) {
      const file = await secretFile('bad.yaml', content);
      await expectRefusal(new FileCredentialSource({ name: 'bad', path: file, field: 'api_key' }), message);
    }
  });

  it('picks up an in-place rewrite with a changed mtime', async () => {
    const file = await secretFile('token', 'old-value-aaaa');
    const source = new FileCredentialSource({ name: 'rot', path: file, recheckIntervalMs: 0 });
    expect((await source.get()).secret?.reveal()).toBe('old-value-aaaa');
    // Same length on purpose: only the timestamps tell the versions apart.
    await writeFile(file, 'new-value-bbbb');
    await utimes(file, new Date(), new Date(Date.now() + 5000));
    expect((await source.get()).secret?.reveal()).toBe('new-value-bbbb');
  });

  it('picks up a file replaced by rename', async () => {
    const file = await secretFile('token', 'first');
    const source = new FileCredentialSource({ name: 'rot', path: file, recheckIntervalMs: 0 });
    expect((await source.get()).secret?.reveal()).toBe('first');
    const next = await secretFile('token.new', 'second');
    await rename(next, file);
    expect((await source.get()).secret?.reveal()).toBe('second');
  });

  it('serves from memory between re-stats and picks up rotation after the interval', async () => {
    const file = await secretFile('token', 'version-1');
    let clock = 0;
    const source = new FileCredentialSource({ name: 'rot', path: file, recheckIntervalMs: 200, now: () => clock });
    expect((await source.get()).secret?.reveal()).toBe('version-1');
    expect(vi.mocked(fsp.stat)).toHaveBeenCalledTimes(1);
    expect(vi.mocked(fsp.open)).toHaveBeenCalledTimes(1);

    await writeFile(file, 'version-2 longer');
    for (let i = 0; i < 50; i++) expect((await source.get()).secret?.reveal()).toBe('version-1');
    clock = 199;
    expect((await source.get()).secret?.reveal()).toBe('version-1');
    expect(vi.mocked(fsp.stat)).toHaveBeenCalledTimes(1);

    clock = 200;
    expect((await source.get()).secret?.reveal()).toBe('version-2 longer');
    expect(vi.mocked(fsp.stat)).toHaveBeenCalledTimes(2);
    expect(vi.mocked(fsp.open)).toHaveBeenCalledTimes(2);
  });

  it('peek() answers only what get() would answer from memory, with nothing due', async () => {
    const file = await secretFile('token', 'version-1');
    let clock = 0;
    const source = new FileCredentialSource({ name: 'peek', path: file, recheckIntervalMs: 200, now: () => clock });
    // Nothing read yet: get() must read.
    expect(source.peek()).toBeUndefined();
    const first = await source.get();
    expect(source.peek()).toBe(first);
    clock = 199;
    expect(source.peek()).toBe(first);
    // A re-stat is due: peek() leaves it to get(), and touches nothing.
    clock = 200;
    await writeFile(file, 'version-2 longer');
    expect(source.peek()).toBeUndefined();
    expect(vi.mocked(fsp.stat)).toHaveBeenCalledTimes(1);
    const second = await source.get();
    expect(second.secret?.reveal()).toBe('version-2 longer');
    expect(source.peek()).toBe(second);
    // A failed check is get()'s to report: peek() has nothing until a check succeeds again.
    clock = 400;
    await chmod(file, 0o644);
    await expectRefusal(source, /mode 0644/, 'version-2 longer');
    expect(source.peek()).toBeUndefined();
    clock = 500;
    expect(source.peek()).toBeUndefined();
    await chmod(file, 0o600);
    clock = 600;
    expect((await source.get()).secret?.reveal()).toBe('version-2 longer');
    expect(source.peek()?.secret?.reveal()).toBe('version-2 longer');
  });

  it('re-stats but does not re-read an unchanged file', async () => {
    const file = await secretFile('token', SECRET);
    const source = new FileCredentialSource({ name: 'same', path: file, recheckIntervalMs: 0 });
    for (let i = 0; i < 10; i++) expect((await source.get()).secret?.reveal()).toBe(SECRET);
    expect(vi.mocked(fsp.stat)).toHaveBeenCalledTimes(10);
    expect(vi.mocked(fsp.open)).toHaveBeenCalledTimes(1);
  });

  it('stats once for a burst of concurrent requests', async () => {
    const file = await secretFile('token', SECRET);
    const source = new FileCredentialSource({ name: 'burst', path: file });
    const secrets = await Promise.all(Array.from({ length: 20 }, () => source.get()));
    expect(new Set(secrets).size).toBe(1);
    expect(vi.mocked(fsp.stat)).toHaveBeenCalledTimes(1);
    expect(vi.mocked(fsp.open)).toHaveBeenCalledTimes(1);
  });

  it('notices a chmod that exposes the file, and recovers once fixed', async () => {
    const file = await secretFile('token', SECRET);
    const source = new FileCredentialSource({ name: 'chmod', path: file, recheckIntervalMs: 0 });
    expect((await source.get()).secret?.reveal()).toBe(SECRET);
    await chmod(file, 0o644);
    await expectRefusal(source, /mode 0644/);
    await chmod(file, 0o600);
    expect((await source.get()).secret?.reveal()).toBe(SECRET);
  });

  it('stops serving a deleted file after the interval', async () => {
    const file = await secretFile('token', SECRET);
    const source = new FileCredentialSource({ name: 'gone', path: file, recheckIntervalMs: 0 });
    await source.get();
    await rm(file);
    await expectRefusal(source, /cannot stat .* \(ENOENT\)/);
  });
});
