/**
 * A reload that renumbers the workloads (ids follow precedence, ties by
 * name) must never let a connection be judged as another workload: the
 * kernel records a workload id at connect(), and the same id may mean
 * another workload under the new plan. A workload that holds its
 * connection open before the ClientHello, across such a reload, still gets
 * its own credential; a connection the kernel recorded but the proxy had
 * not taken when the numbering changed is refused, never attributed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, sha256 } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { TlsSession } from '../support/tls-session.js';
import { eventually, waitFor } from '../support/wait.js';
import { run } from '../support/shell.js';

const skip = kernelSkipReason();

describe.skipIf(skip)(`adversarial: a reload that renumbers the workloads${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const bobToken = `wk-canary-bob-${randomBytes(12).toString('hex')}`;
  const bobFile = path.join(f.dir, 'bob-token');
  let cg: { alice: string; bob: string };
  const handshakesInProgress = async () => {
    const r = await run('curl', ['-sS', '--unix-socket', path.join(f.stateDir, 'agent.sock'), 'http://agent/metrics']);
    return Number(/^wirekey_proxy_handshakes_in_progress (\d+)$/m.exec(r.stdout)?.[1]);
  };

  /** alice's workload is named `aliceName`: renaming it from "aa" to "zz" swaps the two ids. */
  const policy = (aliceName: string) => f.writePolicy(`apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: bob-token}
spec: {file: {path: ${bobFile}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: ${aliceName}}
spec: {selector: {cgroup: ${f.cgBase}/alice}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: alice-api}
spec: {workload: ${aliceName}, service: api, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: bob}
spec: {selector: {cgroup: ${f.cgBase}/bob}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: bob-api}
spec: {workload: bob, service: api, inject: {bearer: {credential: bob-token}}}
`);

  beforeAll(async () => {
    await f.setUp();
    writeFileSync(bobFile, `${bobToken}\n`, { mode: 0o600 });
    cg = { alice: f.cgroup('alice'), bob: f.cgroup('bob') };
    policy('aa');
    await f.startAgent();
  });

  afterAll(() => f.close());

  it('a connection held before its ClientHello across the reload is still its own workload\'s: bob gets bob\'s credential, never alice\'s', async () => {
    // aa = 1, bob = 2. bob connects; the kernel records id 2.
    const s = new TlsSession(cg.bob, HOST, f.host.ipv4, 443, f.bothCas, { hold: true });
    try {
      expect(await s.connected()).toEqual({ connected: true });
      // The proxy has the connection (in handshake) before the reload.
      await eventually(async () => (await handshakesInProgress()) === 1, 10_000, 'the proxy holding bob\'s connection');
      // bob = 1, zz (alice, renamed) = 2: id 2 is alice's now.
      policy('zz');
      expect(await f.agent?.reload()).toBe('reloaded');
      expect(await s.tls()).toEqual({ connected: true });
      s.send(`GET /renumber/bob HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
      expect((await s.read()).status).toBe(200);
      await waitFor(() => f.upstream.records.some((r) => r.url === '/renumber/bob'), 'bob\'s request upstream');
      const rec = f.upstream.records.find((r) => r.url === '/renumber/bob');
      expect(rec?.authorization).toEqual([sha256(`Bearer ${bobToken}`)]);
      expect(rec?.authorization).not.toEqual([f.expectedAuth]);
    } finally {
      s.close();
    }
  });
});
