/**
 * The HTTP/1.1 fast path against Node's server path, end to end: the same
 * Python client sends the same sequence of requests on one keep-alive
 * connection through an agent with the fast path (the default) and one
 * with --no-h1-fast-path. What the workload gets, what reaches the
 * upstream and what the audit log says must be the same; where the two
 * differ by design (a response delimited by the upstream's close), the
 * test says how.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../support/agent.js';
import { runInCgroup } from '../support/cgroup.js';
import { must } from '../support/shell.js';
import { kernelSkipReason } from '../support/requirements.js';
import { E2eFixture, HOST } from '../support/e2e-fixture.js';
import type { UpstreamRecord } from '../support/upstream.js';

const skip = kernelSkipReason();

interface Step {
  request: string;
  status: number;
  length: number;
  sha256: string;
  port: number;
  closed: boolean;
  body?: Record<string, unknown>;
  'content-type'?: string;
  'x-body-sha256'?: string;
  'x-wirekey-error'?: string;
}

interface Run {
  steps: Step[];
  upstream: UpstreamRecord[];
  audit: Record<string, unknown>[];
  metrics: string;
}

describe.skipIf(skip)(`the HTTP/1.1 fast path and Node's server path answer alike${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  const runs = new Map<'fast' | 'node', Run>();

  const sequence = async (mode: 'fast' | 'node'): Promise<Run> => {
    await f.startAgent({ cgroup: bound, extraArgs: mode === 'node' ? ['--no-h1-fast-path'] : [] });
    const auditFrom = readFileSync(f.auditPath, 'utf8').length;
    const before = f.upstream.records.length;
    const r = await runInCgroup(bound, 'python3', [path.join(repoRoot, 'test/support/clients/h1-sequence.py'), HOST, f.host.ipv4, f.wirekeyCa]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const upstream = await f.recordsSince(before);
    await f.settled();
    const metrics = await must('curl', ['-sS', '--unix-socket', path.join(f.stateDir, 'agent.sock'), 'http://wirekey/metrics']);
    await f.agent?.stop();
    f.agentStopped = true;
    const audit = readFileSync(f.auditPath, 'utf8').slice(auditFrom).split('\n').filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((e) => e.decision === 'inject' || e.decision === 'deny');
    return { steps: r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Step), upstream, audit, metrics };
  };

  beforeAll(async () => {
    await f.setUp();
    bound = f.writeBoundPolicy();
    runs.set('fast', await sequence('fast'));
    f.agentStopped = false;
    runs.set('node', await sequence('node'));
  });

  afterAll(() => f.close());

  const run = (mode: 'fast' | 'node') => runs.get(mode) as Run;
  /**
   * What must not depend on the path: the port (which connection) and
   * `closed` are compared apart; a JSON answer's bytes hold the upstream's
   * request counter, so it is compared parsed, without it.
   */
  const answer = ({ port: _p, closed: _c, ...rest }: Step) => {
    if (!rest.body) return rest;
    const { sha256: _s, length: _l, ...parsed } = rest;
    return parsed;
  };

  it('every response reaches the workload the same: status, body and the upstream\'s headers', () => {
    const fast = run('fast').steps;
    expect(fast.map(answer)).toEqual(run('node').steps.map(answer));
    expect(fast.map((s) => s.status)).toEqual(Array(10).fill(200));
    // The echoed upload, a 300000-byte chunked response and a close-delimited one, whole.
    expect(fast[1]?.length).toBe(102400);
    expect(fast[3]).toMatchObject({ length: 300000, sha256: fast[3]?.['x-body-sha256'] });
    expect(fast[4]).toMatchObject({ length: 70000, sha256: fast[4]?.['x-body-sha256'] });
  });

  it('the same requests reach the upstream, each with the bound credential only and without routing hints', () => {
    const shape = (r: UpstreamRecord) => [r.method, r.url, r.authorization, r.bodyLength, r.bodySha256, r.headerNames.includes('x-forwarded-for')];
    const fast = run('fast').upstream;
    expect(fast.map(shape)).toEqual(run('node').upstream.map(shape));
    expect(fast).toHaveLength(10);
    for (const r of fast) {
      expect(r.authorization).toEqual([f.expectedAuth]);
      expect(r.headerNames).not.toContain('x-forwarded-for');
    }
  });

  it('the audit log has the same line for every request', () => {
    const shape = (e: Record<string, unknown>) => [e.decision, e.workload, e.service, e.method, e.path, e.status, e.credential];
    const fast = run('fast').audit;
    expect(fast.map(shape)).toEqual(run('node').audit.map(shape));
    expect(fast.map((e) => [e.decision, e.method, e.path, e.status])).toEqual(
      run('fast').steps.map((s) => ['inject', s.request.split(' ')[0], (s.request.split(' ')[1] as string).split('?')[0], s.status]),
    );
  });

  it('fast path: one connection carries requests until one must close it; a request outside the subset moves the connection to Node\'s server, which keeps it', () => {
    const s = run('fast').steps;
    const port = (i: number) => s[i]?.port;
    // GET, POST with a body, HEAD and a chunked response on the first connection.
    expect(new Set([port(0), port(1), port(2), port(3)]).size).toBe(1);
    // A response delimited by the upstream's close: the workload's connection closes after it (Node's server re-frames it chunked instead).
    expect(port(4)).toBe(port(0));
    expect(s[4]?.closed).toBe(true);
    expect(run('node').steps[4]?.closed).toBe(false);
    // A chunked upload goes to Node's server on the same connection, which then serves the rest of it.
    expect(port(5)).not.toBe(port(4));
    expect(new Set([port(5), port(6), port(7), port(8)]).size).toBe(1);
    // Connection: close from the workload: closed after its response, on both paths.
    expect(s[8]?.closed).toBe(true);
    expect(run('node').steps[8]?.closed).toBe(true);
    expect(port(9)).not.toBe(port(8));
  });

  it('the hand-off is counted for the workload', () => {
    expect(run('fast').metrics).toMatch(/^wirekey_proxy_h1_handoffs_total\{workload="app"\} 1$/m);
    expect(run('node').metrics).not.toMatch(/^wirekey_proxy_h1_handoffs_total\{/m);
  });
});
