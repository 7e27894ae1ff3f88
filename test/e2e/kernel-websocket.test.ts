/**
 * WebSocket on the kernel datapath (plaintext, sk_msg): the upgrade request
 * is injected like any request, and everything after it on the connection
 * passes untouched, unparsed, and never gets the header again, whatever the
 * upstream answered. Real clients (Python's `websockets`, and a raw client
 * that writes exactly what the test needs) against the `ws` server of the
 * test upstream, run plain on a pinned address, bound and not.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { runInCgroup } from '../support/cgroup.js';
import { repoRoot, wirekeyBin } from '../support/agent.js';
import { kernelHttpSkipReason } from '../support/requirements.js';
import { must } from '../support/shell.js';
import { BOUND_APP, E2eFixture, sha256 } from '../support/e2e-fixture.js';
import { startUpstream, type Upstream } from '../support/upstream.js';
import { waitFor } from '../support/wait.js';

const skip = kernelHttpSkipReason();
const PORT = 8081;
const PLAN = ['text:5', 'bin:1000', 'text:70000', 'bin:1048576'];

describe.skipIf(skip)(`WebSocket on the kernel datapath${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let unbound: string;
  let venv: string;
  let plain: Upstream;
  const pyClient = path.join(repoRoot, 'test/support/clients/ws-client.py');
  const rawClient = path.join(repoRoot, 'test/support/clients/ws-plain-raw.py');

  const raw = async (cg: string, wsPath: string) => {
    const r = await runInCgroup(cg, 'python3', [rawClient, f.host.ipv4, String(PORT), wsPath]);
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout.trim()) as { status: number; echo?: string; second?: number };
  };

  beforeAll(async () => {
    venv = (await must(path.join(repoRoot, 'scripts/python-tools'), [path.join(repoRoot, 'scripts/protocol-clients-requirements.txt')])).trim();
    await f.setUp();
    plain = await startUpstream(f.host, '', '', PORT, undefined, { plain: true });
    f.onClose(() => plain.stop());
    bound = f.cgroup('bound');
    unbound = f.cgroup('unbound');
    f.writePolicy(`${BOUND_APP(f.cgBase)}---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: plain-ws}
spec: {addresses: [${f.host.ipv4}], port: ${PORT}, tls: false, datapath: kernel}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-plain-ws}
spec: {workload: app, service: plain-ws, inject: {bearer: {credential: api-token}}}
`);
    await f.startAgent();
  });

  afterAll(() => f.close());

  it('Python websockets: the upgrade carries the header, messages both ways are the same as direct', async () => {
    const run = async (cg: string) => {
      const before = plain.messages.length;
      const r = await runInCgroup(cg, path.join(venv, 'bin/python'), [pyClient, `${f.host.ipv4}:${PORT}`, f.host.ipv4, '-', '/ws/kernel', ...PLAN]);
      expect(r.stderr).toBe('');
      await plain.sync();
      return { result: JSON.parse(r.stdout.trim()) as { status: number; messages: unknown[] }, received: plain.messages.slice(before) };
    };
    const before = plain.records.length;
    const direct = await run(unbound);
    const via = await run(bound);
    expect(via.result.status).toBe(101);
    expect(via.result.messages).toHaveLength(PLAN.length);
    expect(via.result.messages).toEqual(direct.result.messages);
    const strip = (m: typeof via.received) => m.map(({ binary, length, sha256: h }) => ({ binary, length, sha256: h }));
    expect(strip(via.received)).toEqual(strip(direct.received));
    const ups = plain.records.slice(before).filter((r) => r.upgrade);
    expect(ups.map((r) => r.authorization)).toEqual([[], [f.expectedAuth]]);
  });

  it('after the 101, a frame holding what looks like a request (and an Authorization) passes untouched', async () => {
    const before = plain.messages.length;
    const r = await raw(bound, '/ws/raw');
    const payload = 'GET /inside HTTP/1.1\r\nAuthorization: Bearer nothing\r\n\r\n';
    expect(r).toEqual({ status: 101, echo: payload });
    await plain.sync();
    expect(plain.messages.slice(before).map((m) => m.sha256)).toEqual([sha256(payload)]);
  });

  it('after a non-101 answer, the next request on the connection goes out as written: no credential', async () => {
    const before = plain.records.length;
    const r = await raw(bound, '/ws/refuse-keep');
    expect(r).toEqual({ status: 403, second: 200 });
    await plain.sync();
    const recs = plain.records.slice(before);
    expect(recs.map((x) => [x.url, x.authorization])).toEqual([
      ['/ws/refuse-keep', [f.expectedAuth]],
      ['/second', []],
    ]);
  });

  it('any other upgrade is refused before a byte of it leaves: h2c, a body, POST', async () => {
    const before = plain.records.length;
    const url = `http://${f.host.ipv4}:${PORT}/refused`;
    const cases = [
      ['-H', 'Connection: Upgrade', '-H', 'Upgrade: h2c', url],
      ['-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket', '-H', 'Sec-WebSocket-Version: 13', '--data-binary', 'body', '-X', 'GET', url],
      ['-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket', '-X', 'POST', url],
    ];
    for (const args of cases) {
      const r = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '10', '-o', '/dev/null', ...args]);
      expect(r.code, args.join(' ')).not.toBe(0);
    }
    await plain.sync();
    expect(plain.records.slice(before)).toEqual([]);
  });

  it('audit and status: the upgrade is an injected request, the pass-through connections are counted', async () => {
    type Line = Record<string, unknown>;
    const lines = () => readFileSync(f.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Line).filter((l) => l.datapath === 'kernel');
    await waitFor(() => lines().filter((l) => l.decision === 'inject').length >= 3, 'kernel inject lines for the upgrades');
    await waitFor(() => lines().filter((l) => l.decision === 'deny').length >= 3, 'kernel deny lines for the refused upgrades');
    expect(lines().filter((l) => l.decision === 'deny').map((l) => l.reason)).toEqual(['upgrade-unsupported', 'upgrade-unsupported', 'upgrade-unsupported']);
    const status = await must(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(status).toMatch(/passThrough 3\b/);
    expect(readFileSync(f.auditPath, 'utf8')).not.toContain(f.token);
  });
});
