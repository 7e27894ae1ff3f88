/**
 * `wirekey validate` as an operator meets it: empty policies, what a
 * directory read and ignored, YAML mistakes in plain words, "did you mean",
 * one message per mistake, and `--host`.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { validate } from '../../controller/cli/validate.js';
import type { PolicyDiagnostic } from '../../controller/errors.js';
import { checkHost, type HostCheckOptions } from '../../controller/host/host-check.js';
import { reportPolicyPath } from '../../controller/policy/load.js';
import { closest } from '../../controller/policy/suggest.js';
import { repoRoot, wirekeyBin } from '../support/agent.js';
import { run } from '../support/shell.js';
import { machineSkipTitle } from '../support/tiers.js';

const HEADER = 'apiVersion: wirekey.dev/v1alpha1\n';
const dirs: string[] = [];

afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(files: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'wirekey-validate-'));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** `file:line:column: message` with file names relative to `dir`. */
function render(dir: string, found: PolicyDiagnostic[]): string[] {
  return found.map((d) => `${relative(dir, d.file)}:${d.line}:${d.column}: ${d.severity === 'warning' ? 'warning: ' : ''}${d.message}`);
}

async function lint(text: string): Promise<string[]> {
  const dir = tempDir({ 'p.yaml': text });
  const report = await reportPolicyPath(dir);
  return render(dir, [...report.diagnostics, ...report.warnings]);
}

const POLICY = `${HEADER}kind: CredentialSource
metadata: {name: key}
spec: {file: {path: /etc/wirekey/key}}
---
${HEADER}kind: Service
metadata: {name: api}
spec: {hosts: [api.example.com], port: 443, tls: true}
---
${HEADER}kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: /app}}
---
${HEADER}kind: Binding
metadata: {name: app-api}
spec: {workload: app, service: api, inject: {bearer: {credential: key}}}
`;

describe('files that are not text', () => {
  it('a binary .yaml is "not UTF-8 text", named, not "a policy document must be a mapping"', async () => {
    const dir = tempDir();
    const file = join(dir, 'blob.yaml');
    writeFileSync(file, Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0xff, 0xfe, 0x80, 0x0a]));
    const out = await validate(dir);
    expect(out.code).toBe(1);
    expect(out.stdout).toEqual([`${file}:1:1: ${file} is not UTF-8 text (a binary file?): a policy file is YAML in UTF-8`]);
  });
});

describe('empty policies', () => {
  it('an empty file is valid but warned about, and not called valid', async () => {
    const dir = tempDir({ 'p.yaml': '' });
    const out = await validate(join(dir, 'p.yaml'));
    expect(out.code).toBe(0);
    expect(out.stdout).toEqual([`${join(dir, 'p.yaml')}:1:1: warning: empty policy: this file holds no documents (only comments or nothing), so nothing would be injected`]);
    expect(out.stderr).toEqual([`${join(dir, 'p.yaml')}: empty policy (1 warning(s))`]);
  });

  it('/dev/null is an empty policy', async () => {
    const out = await validate('/dev/null');
    expect(out.code).toBe(0);
    expect(out.stdout.join('\n')).toContain('/dev/null:1:1: warning: empty policy');
    expect(out.stderr.join('\n')).not.toContain('valid');
  });

  it('a directory whose YAML is only comments and empty documents is an empty policy', async () => {
    const dir = tempDir({ 'a.yaml': '# all commented out\n# kind: Service\n', 'b.yml': '---\n---\n' });
    const out = await validate(dir);
    expect(out.code).toBe(0);
    expect(out.stdout).toEqual([`${dir}:1:1: warning: empty policy: the 2 file(s) read hold no documents (only comments or nothing), so nothing would be injected`]);
    expect(out.stderr).toEqual([`${dir}: read 2 file(s): a.yaml, b.yml`, `${dir}: empty policy (1 warning(s))`]);
  });
});

describe('a policy directory', () => {
  it('lists the files it read and the ones it ignored, with why', async () => {
    const dir = tempDir({
      'a.yaml': POLICY,
      'policy.json': '{}',
      'a.yaml.bak': POLICY,
      'b.yaml.dpkg-old': POLICY,
      'README.txt': 'notes',
      '.#a.yaml': 'lock',
    });
    mkdirSync(join(dir, 'old.yaml'));
    const out = await validate(dir);
    expect(out.code).toBe(0);
    expect(out.stdout).toEqual([]);
    expect(out.stderr).toEqual([
      `${dir}: read 1 file(s): a.yaml`,
      `${dir}: ignored 6: .#a.yaml (a hidden file); README.txt, a.yaml.bak, b.yaml.dpkg-old, policy.json (not *.yaml or *.yml); old.yaml (a directory)`,
      `${dir}: valid`,
    ]);
  });

  it('with no policy file at all, is an error that still lists what it ignored', async () => {
    const dir = tempDir({ 'policy.json': '{}' });
    const out = await validate(dir);
    expect(out.code).toBe(1);
    expect(out.stdout).toEqual([`${dir}:1:1: no policy files (*.yaml or *.yml) in this directory`]);
    expect(out.stderr[0]).toBe(`${dir}: ignored 1: policy.json (not *.yaml or *.yml)`);
  });
});

describe('YAML syntax errors, in plain words at the place to fix', () => {
  const cases: [string, string, string][] = [
    ['an unclosed {', `${HEADER}kind: Service\nmetadata: {name: a\nspec: {}\n`, 'p.yaml:3:11: invalid YAML: this { is never closed: end the mapping with }'],
    ['an unclosed [', `${HEADER}kind: Service\nmetadata: {name: a}\nspec:\n  hosts: [a.example\n  port: 443\n`, 'p.yaml:5:10: invalid YAML: this [ is never closed: end the list with ]'],
    ['an unclosed "', `${HEADER}kind: Service\nmetadata:\n  name: "a\nspec: {}\n`, 'p.yaml:4:9: invalid YAML: this "quoted string is never closed: add the closing "'],
    ['a tab', `${HEADER}kind: Service\nmetadata:\n\tname: a\n`, 'p.yaml:4:1: invalid YAML: a tab indents this line: YAML indents with spaces only'],
    ['a key given twice', `${HEADER}kind: Service\nkind: Workload\n`, 'p.yaml:3:1: invalid YAML: "kind" is given twice in the same mapping'],
    ['a key indented under a value', `${HEADER}kind: Service\n  metadata: {name: a}\n`, 'p.yaml:2:7: invalid YAML: the value on this line is followed by a line indented further'],
    ['no space after a colon', `${HEADER}kind: Service\nmetadata:\n  name:a\n  other: b\n`, "p.yaml:4:3: invalid YAML: this line is not 'key: value'"],
    ['a value starting with @', `${HEADER}kind: Service\nmetadata: {name: @a}\n`, 'p.yaml:3:18: invalid YAML: a value cannot start with @: put the value in quotes'],
    ['items not lined up', `${HEADER}kind: Service\nspec:\n  port: 1\n tls: true\n`, 'p.yaml:5:1: invalid YAML: this line is indented differently from the lines before it'],
  ];
  for (const [what, text, expected] of cases) {
    it(`${what}: one message, no parser jargon`, async () => {
      const found = await lint(text);
      expect(found).toHaveLength(1);
      expect(found[0]?.startsWith(expected), found[0]).toBe(true);
      expect(found[0]).not.toMatch(/implicit|compact|flow|block collection|indicator|scalar/i);
    });
  }

  it('never quotes the text around the error (it may be a secret pasted in the wrong place)', async () => {
    const found = await lint(`${HEADER}kind: Service\nmetadata: {name: a}\nspec: {token: "sk-SECRET-123}\n`);
    expect(found.length).toBeGreaterThan(0);
    expect(found.join('\n')).not.toContain('sk-SECRET');
  });
});

describe('did you mean', () => {
  it('a %YAML 1.1 directive does not make 1.1 values of 1.2 ones: 0673 is no port 443 (nor 673), yes is no boolean', async () => {
    const text = `%YAML 1.1\n---\n${POLICY.replace('port: 443, tls: true', 'port: 0673, tls: yes')}`;
    const out = await lint(text);
    expect(out).toHaveLength(2);
    expect(out[0]).toMatch(/^p\.yaml:\d+:\d+: Service "api": spec\.tls: must be true or false$/);
    expect(out[1]).toMatch(/^p\.yaml:\d+:\d+: Service "api": spec\.port: .*without a leading zero: YAML reads 0673 as 673, YAML 1.1 as octal 443/);
    const valid = await lint(`%YAML 1.1\n---\n${POLICY}`);
    expect(valid).toEqual([]);
  });

  it('a cgroup spelt with `.` segments is the same cgroup: two workloads on it are ambiguous', async () => {
    const out = await lint(`${HEADER}kind: Workload\nmetadata: {name: a}\nspec: {selector: {cgroup: /./x/.}}\n---\n${HEADER}kind: Workload\nmetadata: {name: b}\nspec: {selector: {cgroup: x}}\n`);
    expect(out).toEqual([expect.stringMatching(/Workload "b" and Workload "a" \(.*p\.yaml:4\) could both match one process/)]);
  });

  it('warns of a selector that matches every process (the root cgroup alone) or every root process (root alone)', async () => {
    const w = (name: string, selector: string) => `${HEADER}kind: Workload\nmetadata: {name: ${name}}\nspec: {selector: ${selector}}\n`;
    // One at a time: together they could match one process, an error that stops the warnings.
    expect(await lint(w('all', '{cgroup: /}'))).toEqual([
      'p.yaml:4:18: warning: Workload "all": spec.selector: the root cgroup alone matches every process on the host, and each gets this workload\'s bindings; select the service\'s own cgroup or unit',
    ]);
    expect(await lint(w('root', '{user: root}'))).toEqual([
      'p.yaml:4:18: warning: Workload "root": spec.selector: root alone matches every process of root, and each gets this workload\'s bindings; select the service\'s cgroup, unit or executable as well',
    ]);
    expect(await lint(w('root', '{uid: 0}'))).toHaveLength(1);
    expect(await lint(w('fine', '{uid: 0, systemdUnit: app.service}'))).toEqual([]);
    expect(await lint(w('narrow', '{cgroup: /, uid: 1000}'))).toEqual([]);
  });

  it('more workloads than the limit: that one problem, not every pair of them (the pairwise check is skipped)', async () => {
    // 300 workloads with one selector: every pair would be ambiguous.
    const text = Array.from({ length: 300 }, (_, i) => `${HEADER}kind: Workload\nmetadata: {name: w${i}}\nspec: {selector: {cgroup: /same}}\n`).join('---\n');
    const out = await lint(text);
    expect(out).toEqual([expect.stringMatching(/: at most 256 workloads are supported; this is number 257$/)]);
  });

  it('a TLS service named by an IPv4 address is an error: no client sends a server name for it, so it would never match', async () => {
    const out = await lint(POLICY.replace('hosts: [api.example.com]', 'hosts: [api.example.com, 10.0.0.5]'));
    expect(out).toEqual([
      'p.yaml:9:33: Service "api": spec.hosts[1]: "10.0.0.5" is an IP address: clients send no TLS server name for an address, so no connection would ever match it; name the service\'s host names',
    ]);
  });

  it('suggests the kind an unknown kind is closest to', async () => {
    expect(await lint(`${HEADER}kind: workload\nmetadata: {name: a}\nspec: {}\n`)).toEqual([
      'p.yaml:2:7: unknown kind "workload": did you mean Workload? (expected one of VaultConnection, CredentialSource, Service, Workload, Binding)',
    ]);
    expect((await lint(`${HEADER}kind: CredentialSorce\nmetadata: {name: a}\n`))[0]).toContain('did you mean CredentialSource?');
    expect((await lint(`${HEADER}kind: Frobnicator\nmetadata: {name: a}\n`))[0]).not.toContain('did you mean');
  });

  it('suggests the field an unknown field is closest to, at every depth', async () => {
    const text = `${HEADER}kind: Workload
metadata: {name: w}
spec:
  selector:
    usr: bob
    executable: {path: /usr/bin/curl, sha: abc}
---
${HEADER}kind: Binding
metadata: {name: b}
spec: {workload: w, service: s, inject: {baerer: {credential: c}}}
---
${HEADER}kind: VaultConnection
metadata: {name: v}
spec: {address: https://v.example, auth: {aproel: {roleIdFile: /a, secretIdFile: /b}}}
`;
    expect(await lint(text)).toEqual([
      'p.yaml:6:5: Workload "w": unknown field "spec.selector.usr": did you mean "user"? (expected cgroup, systemdUnit, executable, user or uid)',
      'p.yaml:7:39: Workload "w": unknown field "spec.selector.executable.sha": did you mean "sha256"? (expected path or sha256)',
      'p.yaml:12:42: Binding "b": unknown field "spec.inject.baerer": did you mean "bearer"? (expected bearer, header, basic or sigv4)',
      'p.yaml:17:43: VaultConnection "v": unknown field "spec.auth.aproel": did you mean "approle"? (expected token, approle, jwt or kubernetes)',
    ]);
  });

  it('closest() takes case, typos, swaps and prefixes, and gives up on unrelated words', () => {
    expect(closest('SERVICE', ['Service', 'Workload'])).toBe('Service');
    expect(closest('prot', ['hosts', 'port', 'tls'])).toBe('port');
    expect(closest('wrokload', ['workload', 'service'])).toBe('workload');
    expect(closest('secretId', ['roleIdFile', 'secretIdFile'])).toBe('secretIdFile');
    expect(closest('zzz', ['hosts', 'port', 'tls'])).toBeUndefined();
  });
});

describe('one message per mistake', () => {
  it('a misspelt required field is one unknown field, not also a missing one', async () => {
    expect(await lint(`${HEADER}kind: Binding\nmetadata: {name: b}\nspec: {workoad: w, service: s, inject: {bearer: {credential: c}}}\n`)).toEqual([
      'p.yaml:4:8: Binding "b": unknown field "spec.workoad": did you mean "workload"? (expected workload, service or inject)',
    ]);
  });

  it('a value of neither allowed shape gets one message, not one per branch of the schema', async () => {
    expect(await lint(`${HEADER}kind: Workload\nmetadata: {name: w}\nspec: {selector: {executable: 5}}\n`)).toEqual([
      'p.yaml:4:31: Workload "w": spec.selector.executable: must be a string or a mapping',
    ]);
  });

  it('a file copied twice gives one message per copy, not one per document and conflict', async () => {
    const dir = tempDir({ 'a.yaml': POLICY, 'b.yaml': POLICY, 'c.yaml': `# a later copy\n${POLICY}` });
    const found = render(dir, (await reportPolicyPath(dir)).diagnostics);
    expect(found).toEqual([
      `b.yaml:3:18: all 4 documents of this file are already defined in ${join(dir, 'a.yaml')} (CredentialSource "key", Service "api", Workload "app", ...); is it a copy? Keep one of the two files`,
      `c.yaml:4:18: all 4 documents of this file are already defined in ${join(dir, 'a.yaml')} (CredentialSource "key", Service "api", Workload "app", ...); is it a copy? Keep one of the two files`,
    ]);
  });

  it('a document repeated in a file with other documents is reported as itself, once', async () => {
    const [, service] = POLICY.split('---\n');
    const dir = tempDir({ 'a.yaml': POLICY, 'b.yaml': `${service}---\n${HEADER}kind: Workload\nmetadata: {name: other}\nspec: {selector: {cgroup: /other}}\n` });
    expect(render(dir, (await reportPolicyPath(dir)).diagnostics)).toEqual([
      `b.yaml:3:18: duplicate Service "api": already defined at ${join(dir, 'a.yaml')}:8`,
    ]);
  });
});

describe('validate --host', () => {
  /** A policy of `docs` in a fresh directory, and the host checks of it. */
  async function hostCheck(docs: string, options: HostCheckOptions = {}): Promise<{ dir: string; found: string[] }> {
    const dir = tempDir({ 'p.yaml': docs });
    const report = await reportPolicyPath(join(dir, 'p.yaml'));
    expect(report.diagnostics).toEqual([]);
    const passwd = async (key: string) => (key === 'root' || key === '0' ? 'root:x:0:0:root:/root:/bin/bash' : undefined);
    return { dir, found: render(dir, await checkHost(report.policy, { passwd, cgroupRoot: dir, ...options })) };
  }

  const source = (name: string, path: string, field?: string) =>
    `${HEADER}kind: CredentialSource\nmetadata: {name: ${name}}\nspec: {file: {path: ${path}${field ? `, field: ${field}` : ''}}}\n---\n`;

  it.skipIf(process.getuid?.() !== 0)(`policy files only root may write, and replace in their directory${machineSkipTitle(process.getuid?.() !== 0 ? 'requires root (files owned by another uid)' : undefined)}`, async () => {
    const problems = async (dir: string) => render(dir, (await reportPolicyPath(dir)).diagnostics);
    const why = 'a policy file says which workload gets which credential';
    const writable = tempDir({ 'p.yaml': POLICY });
    chmodSync(join(writable, 'p.yaml'), 0o664);
    expect(await problems(writable)).toEqual([`p.yaml:1:1: ${join(writable, 'p.yaml')} has mode 0664: group or others can write it, and ${why} (chmod go-w)`]);
    const owned = tempDir({ 'p.yaml': POLICY });
    chownSync(join(owned, 'p.yaml'), 65534, 65534);
    expect(await problems(owned)).toEqual([`p.yaml:1:1: ${join(owned, 'p.yaml')} is owned by uid 65534; ${why}: it must be owned by root`]);
    const openDir = tempDir({ 'p.yaml': POLICY });
    chmodSync(openDir, 0o777);
    expect(await problems(openDir)).toEqual([`p.yaml:1:1: ${join(openDir, 'p.yaml')}: its directory ${openDir} has mode 0777: group or others can add or replace files in it, and ${why} (put the file in a directory of its own that only root can write, or chmod go-w ${openDir})`]);
    // Sticky, as /tmp: nobody replaces a file they do not own.
    chmodSync(openDir, 0o1777);
    expect(await problems(openDir)).toEqual([]);
    // A link to a file in a directory others may write.
    const elsewhere = tempDir({ 'target.yaml': POLICY });
    chmodSync(elsewhere, 0o777);
    const linked = tempDir();
    symlinkSync(join(elsewhere, 'target.yaml'), join(linked, 'p.yaml'));
    expect(await problems(linked)).toEqual([`p.yaml:1:1: ${join(linked, 'p.yaml')}: its directory ${elsewhere} has mode 0777: group or others can add or replace files in it, and ${why} (put the file in a directory of its own that only root can write, or chmod go-w ${elsewhere})`]);
    // Below a directory others may write: the subtree can be renamed away and replaced whole.
    const above = tempDir();
    const below = join(above, 'policy.d');
    mkdirSync(below, { mode: 0o755 });
    writeFileSync(join(below, 'p.yaml'), POLICY, { mode: 0o644 });
    chmodSync(above, 0o777);
    expect(await problems(below)).toEqual([`p.yaml:1:1: ${join(below, 'p.yaml')}: the directory ${above} above it has mode 0777: others can rename what is in it, and ${why} (chmod o-w, or +t)`]);
    chmodSync(above, 0o1777);
    expect(await problems(below)).toEqual([]);
  });

  it('checks credential files as the agent would read them: exists, regular, mode, content', async () => {
    const files = tempDir();
    const file = (name: string, text: string, mode = 0o600) => {
      writeFileSync(join(files, name), text);
      chmodSync(join(files, name), mode);
      return join(files, name);
    };
    const good = file('good', 'sk-1\n');
    const open = file('open', 'sk-2\n', 0o640);
    const empty = file('empty', '\n');
    const map = file('map', 'other: x\n');
    mkdirSync(join(files, 'dir'));
    execFileSync('mkfifo', [join(files, 'fifo')]);
    symlinkSync(good, join(files, 'link'));
    const { found } = await hostCheck(
      source('good', good) + source('link', join(files, 'link')) + source('open', open) + source('missing', join(files, 'missing')) +
        source('dir', join(files, 'dir')) + source('fifo', join(files, 'fifo')) + source('empty', empty) + source('field', map, 'api_key'),
    );
    expect(found).toEqual([
      `p.yaml:14:21: CredentialSource "open": spec.file.path: ${open} has mode 0640; it must not be accessible by group or others (chmod 600)`,
      `p.yaml:19:21: CredentialSource "missing": spec.file.path: ${join(files, 'missing')} does not exist`,
      `p.yaml:24:21: CredentialSource "dir": spec.file.path: ${join(files, 'dir')} is not a regular file`,
      `p.yaml:29:21: CredentialSource "fifo": spec.file.path: ${join(files, 'fifo')} is not a regular file`,
      `p.yaml:34:21: CredentialSource "empty": spec.file.path: ${empty} is empty`,
      `p.yaml:39:21: CredentialSource "field": spec.file.path: ${map} has no field "api_key"`,
    ]);
  });

  const isRoot = process.geteuid?.() === 0;
  it.skipIf(!isRoot)(`refuses a credential file owned by another user${machineSkipTitle(isRoot ? undefined : 'needs root (chown)')}`, async () => {
    const files = tempDir();
    const theirs = join(files, 'theirs');
    writeFileSync(theirs, 'sk\n', { mode: 0o600 });
    chownSync(theirs, 65534, 65534);
    const { found } = await hostCheck(source('theirs', theirs));
    expect(found).toEqual([`p.yaml:4:21: CredentialSource "theirs": spec.file.path: ${theirs} is owned by uid 65534; it must be owned by root`]);
  });

  it('checks users (errors), uids (warnings), executables and their digests', async () => {
    const bins = tempDir();
    const exe = join(bins, 'app');
    writeFileSync(exe, '#!/bin/sh\n', { mode: 0o755 });
    const noexec = join(bins, 'data');
    writeFileSync(noexec, 'x', { mode: 0o644 });
    const sha = createHash('sha256').update('#!/bin/sh\n').digest('hex');
    // Each in a cgroup of its own (which exists), so that no two could match one process.
    const cgroups = tempDir();
    const workload = (name: string, selector: string) => {
      mkdirSync(join(cgroups, name));
      return `${HEADER}kind: Workload\nmetadata: {name: ${name}}\nspec: {selector: {cgroup: /${name}, ${selector}}}\n---\n`;
    };
    const { found } = await hostCheck(
      workload('ok', `user: root, executable: {path: ${exe}, sha256: ${sha}}`) +
        workload('nouser', 'user: nosuchuser') +
        workload('nouid', 'uid: 54321') +
        workload('noexe', `executable: ${join(bins, 'missing')}`) +
        workload('notexec', `executable: ${noexec}`) +
        workload('badsha', `executable: {path: ${exe}, sha256: "${'0'.repeat(64)}"}`),
      { cgroupRoot: cgroups },
    );
    expect(found).toEqual([
      'p.yaml:9:42: Workload "nouser": spec.selector.user: no user named nosuchuser on this host (getent passwd): the workload would match nothing',
      'p.yaml:14:40: warning: Workload "nouid": spec.selector.uid: no user has uid 54321 on this host (getent passwd); processes can still run as it',
      `p.yaml:19:47: Workload "noexe": spec.selector.executable: ${join(bins, 'missing')} does not exist`,
      `p.yaml:24:49: Workload "notexec": spec.selector.executable: ${noexec} is not executable (mode 0644): no process can run it`,
      `p.yaml:29:48: Workload "badsha": spec.selector.executable: ${exe} has SHA-256 ${sha}, not ${'0'.repeat(64)}: the workload would match nothing`,
    ]);
  });

  it('warns about cgroups and units that do not exist (yet): they may appear later', async () => {
    const root = tempDir();
    mkdirSync(join(root, 'here'));
    const { found } = await hostCheck(
      `${HEADER}kind: Workload\nmetadata: {name: here}\nspec: {selector: {cgroup: /here}}\n---\n` +
        `${HEADER}kind: Workload\nmetadata: {name: later}\nspec: {selector: {cgroup: /later}}\n---\n` +
        `${HEADER}kind: Workload\nmetadata: {name: unit}\nspec: {selector: {systemdUnit: billing.service}}\n`,
      { cgroupRoot: root, unitCgroup: async (unit) => ({ cgroup: `/system.slice/${unit}` }) },
    );
    expect(found).toEqual([
      expect.stringMatching(/^p\.yaml:9:27: warning: Workload "later": spec\.selector\.cgroup: cgroup \/later does not exist under .* \(yet\): the workload matches nothing until it does$/),
      expect.stringMatching(/^p\.yaml:14:32: warning: Workload "unit": spec\.selector\.systemdUnit: billing\.service is not running \(no cgroup \/system\.slice\/billing\.service\)/),
    ]);
  });

  it('checks the login files of a Vault connection', async () => {
    const files = tempDir();
    writeFileSync(join(files, 'role-id'), 'r\n', { mode: 0o644 });
    writeFileSync(join(files, 'secret-id'), 's\n', { mode: 0o644 });
    const { found } = await hostCheck(
      `${HEADER}kind: VaultConnection\nmetadata: {name: v}\nspec:\n  address: https://vault.example\n  tls: {caFile: ${join(files, 'ca.pem')}}\n` +
        `  auth: {approle: {roleIdFile: ${join(files, 'role-id')}, secretIdFile: ${join(files, 'secret-id')}}}\n`,
    );
    expect(found).toEqual([
      `p.yaml:6:17: VaultConnection "v": spec.tls.caFile: ${join(files, 'ca.pem')} does not exist`,
      `p.yaml:7:84: warning: VaultConnection "v": spec.auth.approle.secretIdFile: ${join(files, 'secret-id')} has mode 0644: it holds a secret that group or others can read (chmod 600)`,
    ]);
  });

  it('the CLI: exit 1 with host errors, 0 with host warnings only, and nothing checked on the host without --host', async () => {
    const dir = tempDir({
      'p.yaml': `${HEADER}kind: Workload\nmetadata: {name: w}\nspec: {selector: {user: nosuchuser-wirekey}}\n`,
      'q.yml': `${HEADER}kind: Workload\nmetadata: {name: later}\nspec: {selector: {cgroup: /wirekey-no-such-cgroup}}\n`,
    });
    const wirekey = (...args: string[]) => run(process.execPath, [wirekeyBin, ...args]);
    const plain = await wirekey('validate', dir);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toBe('');
    expect(plain.stderr).toBe(`${dir}: read 2 file(s): p.yaml, q.yml\n${dir}: valid\n`);

    const host = await wirekey('validate', '--host', dir);
    expect(host.code).toBe(1);
    expect(host.stdout.split('\n')[0]).toBe(`${join(dir, 'p.yaml')}:4:25: Workload "w": spec.selector.user: no user named nosuchuser-wirekey on this host (getent passwd): the workload would match nothing`);
    expect(host.stdout).toMatch(/q\.yml:4:27: warning: Workload "later": spec\.selector\.cgroup: cgroup \/wirekey-no-such-cgroup does not exist/);
    expect(host.stderr).toContain('1 problem(s) found (1 warning(s))');

    const onlyWarnings = await wirekey('validate', '--host', join(dir, 'q.yml'));
    expect(onlyWarnings.code).toBe(0);
    expect(onlyWarnings.stderr).toContain('valid, and this host has what it names (1 warning(s))');
  });

  it('the shipped example policy directory of the package validates (empty, warned)', async () => {
    const out = await validate(join(repoRoot, 'packaging/policy.d'));
    expect(out.code).toBe(0);
    expect(out.stdout).toEqual([expect.stringContaining('warning: empty policy')]);
  });
});

