/** The command line as a user runs it: exit codes and what it prints. */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { repoRoot, wirekeyBin } from '../support/agent.js';
import { run } from '../support/shell.js';
import { ownedCopy, removeCopy } from '../support/paths.js';

const wirekey = (...args: string[]) => run(process.execPath, [wirekeyBin, ...args]);

describe('wirekey validate', () => {
  it('exits 0 for the shipped policies', async () => {
    for (const file of ['policies/demo.yaml', 'policies/examples']) {
      const copy = ownedCopy(file);
      try {
        const r = await wirekey('validate', copy);
        expect(r.stdout).toBe('');
        expect(r.code).toBe(0);
      } finally {
        removeCopy(copy);
      }
    }
  });

  it('prints file:line:column: message for each problem and exits non-zero', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-cli-'));
    try {
      const file = path.join(dir, 'bad.yaml');
      writeFileSync(
        file,
        [
          'apiVersion: wirekey.dev/v1alpha1',
          'kind: Service',
          'metadata: {name: api}',
          'spec: {hosts: [api.example.com], port: 70000, tls: true}',
          '---',
          'apiVersion: wirekey.dev/v1alpha1',
          'kind: Binding',
          'metadata: {name: b}',
          'spec: {workload: nobody, service: api, inject: {bearer: {credential: k}}, extra: 1}',
          '',
        ].join('\n'),
      );
      const r = await wirekey('validate', file);
      expect(r.code).toBe(1);
      const lines = r.stdout.trim().split('\n');
      expect(lines.length).toBeGreaterThanOrEqual(2);
      for (const line of lines) expect(line).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: `));
      expect(r.stdout).toContain(`${file}:4:`);
      expect(r.stdout).toContain(`${file}:9:`);
      expect(r.stdout).toMatch(/port/);
      expect(r.stdout).toMatch(/extra/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('warns, and exits 0, when a plaintext service lists no hosts', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-cli-'));
    try {
      const file = path.join(dir, 'open.yaml');
      writeFileSync(file, ['apiVersion: wirekey.dev/v1alpha1', 'kind: Service', 'metadata: {name: open}', 'spec: {addresses: [10.0.0.1], port: 80, tls: false}', ''].join('\n'));
      const r = await wirekey('validate', file);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:4:7: warning: Service "open": spec\\.hosts: .*routes by Host`));
      expect(r.stderr).toContain('valid (1 warning(s))');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names a missing path', async () => {
    const r = await wirekey('validate', '/nonexistent/wirekey.yaml');
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('/nonexistent/wirekey.yaml:1:1: ');
  });
});

describe('wirekey run', () => {
  it('refuses an invalid policy before touching the kernel, with positions', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-cli-'));
    try {
      const file = path.join(dir, 'p.yaml');
      writeFileSync(file, 'apiVersion: wirekey.dev/v1alpha1\nkind: Servise\nmetadata: {name: x}\nspec: {}\n');
      const r = await wirekey('run', '--policy', file, '--state-dir', path.join(dir, 'state'), '--pin-dir', path.join(dir, 'pins'));
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`${file}:2:7: `);
      expect(r.stderr).not.toContain('ready');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names a bad --kernel-audit grain', async () => {
    const r = await wirekey('run', '--policy', '/nonexistent', '--kernel-audit', 'sometimes');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("option '--kernel-audit <grain>' argument 'sometimes' is invalid. must be request or connection");
  });

  it('names a bad --kernel-alive-timeout', async () => {
    for (const bad of ['0.1', 'soon', '-5']) {
      const r = await wirekey('run', '--policy', '/nonexistent', '--kernel-alive-timeout', bad);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(`option '--kernel-alive-timeout <seconds>' argument '${bad}' is invalid. must be a number of seconds from 0.5 to 3600`);
    }
  });
});

describe('wirekey options', () => {
  it('--help shows each default as the option takes it (seconds, durations), not in milliseconds', async () => {
    const help = (await wirekey('run', '--help')).stdout.replace(/\s+/g, ' ');
    expect(help).toMatch(/--kernel-alive-timeout <seconds> [^(]*\(default: 5\)/);
    expect(help).toMatch(/--handshake-timeout <duration> [^(]*\(default: 10s\)/);
    expect(help).toMatch(/--idle-timeout <duration> [^(]*\(default: 5m\)/);
    expect(help).not.toMatch(/\(default: (5000|10000|300000)\)/);
    const reload = (await wirekey('reload', '--help')).stdout.replace(/\s+/g, ' ');
    expect(reload).toMatch(/--timeout <duration> [^(]*\(default: 60s\)/);
  });

  it('numbers are decimal digits: hex, exponents, signs and blanks are refused, naming the option and the value', async () => {
    for (const [flag, bad] of [['--proxy-port <port>', '0x50'], ['--sigv4-body-limit <bytes>', '1e3'], ['--max-handshakes <n>', '+5'],
      ['--proxy-workers <n>', '0b10'], ['--h2-max-streams <n>', ' 7'], ['--kernel-alive-timeout <seconds>', '5e0']] as const) {
      const r = await wirekey('run', '--policy', '/nonexistent', flag.split(' ')[0] as string, bad);
      expect(r.code, `${flag} ${bad}`).not.toBe(0);
      expect(r.stderr).toContain(`option '${flag}' argument '${bad}' is invalid.`);
    }
  });
});

describe('wirekey ca cert', () => {
  it('prints the local CA certificate, the same on every call, with the key kept private', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-cli-'));
    try {
      const first = await wirekey('ca', 'cert', '--state-dir', dir);
      const second = await wirekey('ca', 'cert', '--state-dir', dir);
      expect(first.code).toBe(0);
      expect(second.stdout).toBe(first.stdout);
      const cert = new X509Certificate(first.stdout);
      expect(cert.ca).toBe(true);
      expect(readFileSync(path.join(dir, 'ca/ca.crt'), 'utf8')).toBe(first.stdout);
      expect(statSync(path.join(dir, 'ca/ca.key')).mode & 0o077).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('wirekey ca cert and status, misdirected', () => {
  it('ca cert refuses a state dir that does not exist instead of minting a CA there; --create makes one', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-cli-'));
    try {
      const typo = await wirekey('ca', 'cert', '--state-dir', path.join(dir, 'tpyo'));
      expect(typo.code).toBe(1);
      expect(typo.stderr).toBe(`wirekey: state dir ${path.join(dir, 'tpyo')} does not exist (wirekey run creates it; or pass --create)\n`);
      const created = await wirekey('ca', 'cert', '--create', '--state-dir', path.join(dir, 'new'));
      expect(created.code).toBe(0);
      expect(created.stdout).toContain('BEGIN CERTIFICATE');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('status with no agent exits 3 with one line saying so', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-cli-'));
    try {
      const r = await wirekey('status', '--state-dir', dir);
      expect(r.code).toBe(3);
      expect(r.stderr).toBe(`wirekey: no agent is running with state dir ${dir}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reload with no agent exits 3 with one line saying so, as status does', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-cli-'));
    try {
      const r = await wirekey('reload', '--state-dir', dir);
      expect(r.code).toBe(3);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`wirekey: no agent is running with state dir ${dir}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('wirekey --version', () => {
  it('prints the package version', async () => {
    const r = await wirekey('--version');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe((JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version);
  });
});
