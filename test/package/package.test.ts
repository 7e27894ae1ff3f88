/**
 * scripts/package: the Debian package's control fields and contents, and
 * the package installed into a throwaway root (dpkg --root) and run from
 * where it installs.
 */
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../support/agent.js';
import { machineSkipTitle } from '../support/tiers.js';

const isRoot = process.geteuid?.() === 0;
const work = mkdtempSync(path.join(tmpdir(), 'wirekey-package-'));
let deb = '';

beforeAll(async () => {
  // Asynchronously: a build of a minute must not block the test worker's event loop.
  const { stdout } = await promisify(execFile)(path.join(repoRoot, 'scripts/package'), ['--out', work], { encoding: 'utf8', maxBuffer: 16 << 20 });
  deb = stdout.trim().split('\n').at(-1) as string;
}, 900_000);

afterAll(() => rmSync(work, { recursive: true, force: true }));

const field = (name: string) => execFileSync('dpkg-deb', ['-f', deb, name], { encoding: 'utf8' }).trim();
const contents = () =>
  execFileSync('dpkg-deb', ['-c', deb], { encoding: 'utf8', maxBuffer: 64 << 20 })
    .trim()
    .split('\n')
    .map((line) => {
      const [mode, owner, , , , name] = line.split(/\s+/);
      return { mode: mode as string, owner: owner as string, name: (name as string).replace(/^\.\//, '/').replace(/\/$/, '') };
    });

describe('the package', () => {
  it('control: name, version from package.json, Node.js 20 or newer and runtime libraries only', () => {
    const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    expect(field('Package')).toBe('wirekey');
    expect(field('Version')).toBe(pkg.version);
    expect(field('Architecture')).toBe(execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim());
    const depends = field('Depends').split(/,\s*/);
    expect(depends).toContain('nodejs (>= 20.18.1)');
    for (const lib of ['libbpf1', 'libelf1', 'zlib1g']) expect(depends).toContain(lib);
    // Nothing that compiles: installing must not bring a toolchain.
    for (const d of depends) expect(d).not.toMatch(/^(clang|llvm|gcc|g\+\+|cpp|make|node-gyp|bpftool)\b|-dev\b/);
  });

  it('holds the BPF object, the addon, the JavaScript, the unit, the policy directory, logrotate and the man page', () => {
    const names = new Set(contents().map((e) => e.name));
    for (const file of [
      '/opt/wirekey/build/bpf/wirekey.bpf.o',
      '/opt/wirekey/native/build/Release/wirekey_native.node',
      '/opt/wirekey/bin/wirekey.js',
      '/opt/wirekey/dist/controller/cli/main.js',
      '/opt/wirekey/dist/policies/wirekey.schema.json',
      '/opt/wirekey/package.json',
      '/opt/wirekey/node_modules/yaml/package.json',
      '/usr/bin/wirekey',
      '/lib/systemd/system/wirekey.service',
      '/etc/wirekey/policy.d/00-example.yaml',
      '/etc/logrotate.d/wirekey',
      '/usr/share/man/man1/wirekey.1.gz',
    ]) {
      expect(names, file).toContain(file);
    }
    // Production dependencies only; no sources, tests or build tools.
    for (const absent of ['typescript', 'vitest', 'node-gyp', '@types/node']) expect(names).not.toContain(`/opt/wirekey/node_modules/${absent}`);
    expect([...names].filter((n) => n.startsWith('/opt/wirekey/') && !n.startsWith('/opt/wirekey/node_modules/') && /\.ts$/.test(n) && !n.endsWith('.d.ts'))).toEqual([]);
    expect([...names].filter((n) => /^\/opt\/wirekey\/(test|native\/src|bpf|dist\/test)\b/.test(n))).toEqual([]);
    const entries = contents();
    expect(entries.every((e) => e.owner === 'root/root')).toBe(true);
    expect(entries.find((e) => e.name === '/usr/bin/wirekey')?.mode).toBe('-rwxr-xr-x');
  });

  it('marks the policy example and the logrotate snippet as conffiles', () => {
    const dir = path.join(work, 'control');
    execFileSync('dpkg-deb', ['-e', deb, dir]);
    expect(readFileSync(path.join(dir, 'conffiles'), 'utf8').trim().split('\n').sort()).toEqual([
      '/etc/logrotate.d/wirekey',
      '/etc/wirekey/policy.d/00-example.yaml',
    ]);
  });

  it('installs every path the systemd unit runs (the unit is taken from the repository as it is)', () => {
    const unit = readFileSync(path.join(repoRoot, 'packaging/wirekey.service'), 'utf8');
    const names = new Set(contents().map((e) => e.name));
    const used = [...unit.matchAll(/^Exec\w+=[-@!+:]*(\S+)(.*)$/gm)].flatMap((m) => [m[1] as string, ...(m[2] as string).split(/\s+/)]).filter((p) => p.startsWith('/opt/wirekey/'));
    expect(used.length).toBeGreaterThan(0);
    for (const p of used) expect(names, p).toContain(p);
  });

  it.skipIf(!isRoot)(`installed into a throwaway root, runs --version, validates /etc/wirekey/policy.d, loads the addon and shows its man page${machineSkipTitle(isRoot ? undefined : 'needs root (dpkg --root, a private mount namespace)')}`, () => {
    const root = path.join(work, 'root');
    mkdirSync(path.join(root, 'var/lib/dpkg/info'), { recursive: true });
    mkdirSync(path.join(root, 'var/lib/dpkg/updates'), { recursive: true });
    writeFileSync(path.join(root, 'var/lib/dpkg/status'), '');
    // The root has no dpkg database of its own dependencies: they are the host's.
    execFileSync('dpkg', [`--root=${root}`, '--force-depends', '--force-script-chrootless', '--log=/dev/null', '-i', deb], { stdio: 'pipe' });
    // The wrapper runs /opt/wirekey: give it the installed one, in a mount namespace of its own.
    const script = [
      'set -e',
      'mount -t tmpfs none /opt',
      'mkdir /opt/wirekey',
      `mount --bind ${root}/opt/wirekey /opt/wirekey`,
      `echo "version: $(${root}/usr/bin/wirekey --version)"`,
      `${root}/usr/bin/wirekey validate ${root}/etc/wirekey/policy.d 2>&1`,
      `node -e "import('/opt/wirekey/dist/controller/datapath/native.js').then((m) => console.log('libbpf ' + m.libbpfVersion()))"`,
    ].join('\n');
    const out = execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8' });
    const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    expect(out).toContain(`version: ${pkg.version}`);
    expect(out).toContain(`${root}/etc/wirekey/policy.d: read 1 file(s): 00-example.yaml`);
    expect(out).toContain('warning: empty policy');
    expect(out).toMatch(/^libbpf v?\d+\.\d+/m);
    const man = execFileSync('sh', ['-c', `MANWIDTH=80 man --warnings -l ${root}/usr/share/man/man1/wirekey.1.gz 2>&1`], { encoding: 'utf8' });
    expect(man).toMatch(/WIREKEY\(1\)/);
    for (const section of ['validate', 'run', '--host', '/etc/wirekey/policy.d', 'EXIT STATUS']) expect(man).toContain(section);
    expect(man).not.toMatch(/warning:/i);
  });
});

/**
 * The maintainer scripts as the package holds them, run with stand-ins for
 * systemctl, the wirekey command and the directories they touch (no root, no
 * systemd): what an upgrade does with a policy the new version refuses, and
 * what a removal leaves.
 */
describe('the maintainer scripts', () => {
  const scripts = () => {
    const dir = path.join(mkdtempSync(path.join(work, 'control-')), 'DEBIAN');
    execFileSync('dpkg-deb', ['-e', deb, dir]);
    return dir;
  };

  /** `script` with the wirekey command, systemd's directory and bpffs replaced; returns its exit code, stderr and the systemctl calls. */
  function runScript(name: string, arg: string, wirekey: { code: number; output: string }, bpf?: string) {
    const dir = mkdtempSync(path.join(work, `${name}-`));
    const calls = path.join(dir, 'systemctl.calls');
    writeFileSync(path.join(dir, 'systemctl'), `#!/bin/sh\necho "$*" >> ${calls}\nexit 0\n`, { mode: 0o755 });
    writeFileSync(path.join(dir, 'wirekey'), `#!/bin/sh\necho ${JSON.stringify(wirekey.output)}\nexit ${wirekey.code}\n`, { mode: 0o755 });
    let text = readFileSync(path.join(scripts(), name), 'utf8')
      .replaceAll('/usr/bin/node /opt/wirekey/bin/wirekey.js', path.join(dir, 'wirekey'))
      .replaceAll('[ -d /run/systemd/system ]', 'true');
    if (bpf) text = text.replaceAll('/sys/fs/bpf/', `${bpf}/`);
    writeFileSync(path.join(dir, name), text, { mode: 0o755 });
    try {
      execFileSync('sh', [path.join(dir, name), arg], { encoding: 'utf8', stdio: 'pipe', env: { ...process.env, PATH: `${dir}:${process.env.PATH}` } });
      return { code: 0, stderr: '', calls: existsSync(calls) ? readFileSync(calls, 'utf8') : '' };
    } catch (err) {
      const e = err as { status: number; stderr: string };
      return { code: e.status, stderr: e.stderr, calls: existsSync(calls) ? readFileSync(calls, 'utf8') : '' };
    }
  }

  it('an upgrade whose version refuses the policy on disk does not restart the agent, says why and fails', () => {
    const r = runScript('postinst', 'configure', { code: 1, output: '/etc/wirekey/policy.d/a.yaml:3:1: unknown kind "Servise"' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('/etc/wirekey/policy.d/a.yaml:3:1: unknown kind');
    expect(r.stderr).toContain('not restarting wirekey.service');
    expect(r.calls).not.toContain('restart');
  });

  it('an upgrade whose version accepts the policy restarts the agent', () => {
    const r = runScript('postinst', 'configure', { code: 0, output: '' });
    expect(r.code).toBe(0);
    expect(r.calls).toContain('restart wirekey.service');
  });

  it('postinst validates what the unit validates before it starts an agent', () => {
    const unit = readFileSync(path.join(repoRoot, 'packaging/wirekey.service'), 'utf8');
    const pre = /^ExecStartPre=(.*)$/m.exec(unit)?.[1] as string;
    expect(readFileSync(path.join(scripts(), 'postinst'), 'utf8')).toContain(pre);
  });

  it('removal with no agent running removes the pins and the draining pins; with an agent starting, neither', () => {
    for (const [code, gone] of [[3, true], [5, false], [0, false]] as const) {
      const bpf = mkdtempSync(path.join(work, 'bpf-'));
      mkdirSync(path.join(bpf, 'wirekey/links'), { recursive: true });
      mkdirSync(path.join(bpf, 'wirekey-draining/socks-42'), { recursive: true });
      const r = runScript('prerm', 'remove', { code, output: '' }, bpf);
      expect(r.code).toBe(0);
      expect(existsSync(path.join(bpf, 'wirekey')), `status exit ${code}`).toBe(!gone);
      expect(existsSync(path.join(bpf, 'wirekey-draining')), `status exit ${code}`).toBe(!gone);
    }
  });
});
