/**
 * The proxy on two worker threads (--proxy-workers 2), end to end: many
 * connections from curl are served by both workers, each with the bearer
 * token; a reload is in force on every worker when it returns; a rotated
 * token reaches every worker; every request's audit line arrives, also
 * when the agent stops right after.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { freePort, type RunningAgent } from '../support/agent.js';
import { kernelSkipReason } from '../support/requirements.js';
import { run } from '../support/shell.js';
import { BOUND_APP, E2eFixture, HOST, sha256 } from '../support/e2e-fixture.js';
import { eventually } from '../support/wait.js';
import type { UpstreamRecord } from '../support/upstream.js';

const skip = kernelSkipReason();

/** Requests per round: each on a connection of its own, spread over the workers by the kernel. */
const N = 32;

describe.skipIf(skip)(`proxy worker threads${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let agent: RunningAgent;
  let metricsPort: number;

  const metrics = async () => (await run('curl', ['-sS', `http://127.0.0.1:${metricsPort}/metrics`])).stdout;
  const byWorker = (body: string) =>
    [...body.matchAll(/^wirekey_proxy_connections_total\{worker="(\d+)"\} (\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])] as const);
  const auditLines = () =>
    readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

  /** `n` requests to `/tag/i`, each on a new connection (Connection: close); the upstream's records of them. */
  const round = async (tag: string, n = N, query = ''): Promise<UpstreamRecord[]> => {
    const before = f.upstream.records.length;
    // HTTP/1.1: over h2, curl would multiplex every request on one connection.
    const args = ['--cacert', f.wirekeyCa, '--http1.1', '-H', 'Connection: close', '-w', '%{http_code}\n'];
    for (let i = 0; i < n; i++) args.push('-o', '/dev/null', `https://${HOST}/${tag}/${i}${query}`);
    const r = await f.curl(bound, args);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(Array.from({ length: n }, () => '200'));
    const records = await f.recordsSince(before);
    expect(records).toHaveLength(n);
    return records;
  };

  beforeAll(async () => {
    await f.setUp();
    bound = f.writeBoundPolicy();
    metricsPort = await freePort();
    // The agent runs in the bound cgroup: its own upstream connections (from every worker) must not be redirected.
    agent = await f.startAgent({ cgroup: bound, extraArgs: ['--proxy-workers', '2', '--metrics-listen', `127.0.0.1:${metricsPort}`] });
  });
  afterAll(() => f.close());

  it('injects the bearer token on every connection, and connections are served by both workers', async () => {
    const records = await round('spread');
    for (const rec of records) expect(rec.authorization).toEqual([f.expectedAuth]);
    const workers = byWorker(await metrics());
    expect(workers.map(([w]) => w).sort()).toEqual([0, 1]);
    for (const [, n] of workers) expect(n).toBeGreaterThan(0);
    expect(workers.reduce((sum, [, n]) => sum + n, 0)).toBe(N);
  });

  it('every request\'s audit line arrives, from every worker', async () => {
    // A scrape has every worker send what it recorded; the lines are written with the agent's next turn.
    await metrics();
    const lines = await eventually(async () => {
      const l = auditLines().filter((e) => e.decision === 'inject' && String(e.path).startsWith('/spread/'));
      return l.length >= N && l;
    }, 10_000, `${N} inject lines`);
    expect(lines.map((e) => e.path).sort()).toEqual(Array.from({ length: N }, (_, i) => `/spread/${i}`).sort());
    for (const e of lines) expect(e).toMatchObject({ workload: 'app', service: 'api', credential: 'api-token', status: 200 });
  });

  it('a reload that changes the injection and the credential is in force on every worker when it returns', async () => {
    const token = `wk-canary-${randomBytes(16).toString('hex')}`;
    const tokenFile = path.join(f.dir, 'token-reload');
    writeFileSync(tokenFile, token, { mode: 0o600 });
    const write = (file: string, inject: string) => f.writePolicy(
      BOUND_APP(f.cgBase).replace('inject: {bearer: {credential: api-token}}', inject), file);
    write(tokenFile, 'inject: {header: {credential: api-token, name: X-Api-Key}}');
    try {
      expect(await agent.reload()).toBe('reloaded');
      const records = await round('reloaded');
      for (const rec of records) {
        expect(rec.apiKey).toEqual([sha256(token)]);
        expect(rec.authorization).toEqual([]);
      }
      expect(agent.output()).not.toContain(token);
    } finally {
      write(f.tokenFile, 'inject: {bearer: {credential: api-token}}');
      expect(await agent.reload()).toBe('reloaded');
    }
    for (const rec of await round('restored')) expect(rec.authorization).toEqual([f.expectedAuth]);
  });

  it('a token rotated in its file is injected by every worker', async () => {
    // Every worker holds the current token first.
    await round('before-rotation');
    const rotated = `wk-canary-${randomBytes(16).toString('hex')}`;
    writeFileSync(f.tokenFile, `${rotated}\n`, { mode: 0o600 });
    // The file source notices within a second, the workers are told on the agent's next check.
    await eventually(async () => {
      const records = await round('rotating');
      return records.every((rec) => rec.authorization[0] === sha256(`Bearer ${rotated}`));
    }, 15_000, 'every worker to inject the rotated token');
    // And none goes back to the old one.
    for (const rec of await round('rotated')) expect(rec.authorization).toEqual([sha256(`Bearer ${rotated}`)]);
    const counts = byWorker(await metrics());
    for (const [, n] of counts) expect(n).toBeGreaterThan(0);
  });

  it('stop drains the workers: the audit log has a line for every request answered before it, without its query', async () => {
    await round('last', N, '?api_key=wk-query-canary');
    const code = await agent.stop();
    f.agentStopped = true;
    expect(code).toBe(0);
    const last = auditLines().filter((e) => e.decision === 'inject' && String(e.path).startsWith('/last/'));
    expect(last.map((e) => e.path).sort()).toEqual(Array.from({ length: N }, (_, i) => `/last/${i}`).sort());
    expect(JSON.stringify(auditLines())).not.toContain('wk-query-canary');
    expect(agent.output()).not.toMatch(/proxy worker \d+ (exited|failed)/);
  });
});
