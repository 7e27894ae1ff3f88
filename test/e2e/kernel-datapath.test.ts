/**
 * Plaintext services through the running agent: `tls: false` Services
 * pinned to addresses get their header from the kernel (sk_msg) on the
 * workload's own connection. Bearer, header and basic injections, rotation
 * of the credential file, a credential that disappears, and a reload that
 * removes a binding, against the strict plain-HTTP upstream in the test
 * namespace.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, sha256 } from '../support/e2e-fixture.js';
import { PlainUpstream, type RequestRecord } from '../support/plain-upstream.js';
import { eventually, waitFor } from '../support/wait.js';
import { kernelHttpSkipReason } from '../support/requirements.js';
import { runInCgroup } from '../support/cgroup.js';
import { freePort, startAgent, wirekeyBin } from '../support/agent.js';
import { must } from '../support/shell.js';

const skip = kernelHttpSkipReason();

describe.skipIf(skip)(`kernel datapath through the agent${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const basicFile = path.join(f.dir, 'basic.yaml');
  let plain: PlainUpstream;
  let bound: string;
  let basicCg: string;
  let unbound: string;
  let token = f.token;

  const bindings = (withBearer: boolean, appSelector = `{cgroup: ${f.cgBase}/bound}`) => `apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: basic-creds}
spec: {file: {path: ${basicFile}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: plain}
spec: {addresses: [${f.host.ipv4}, "${f.host.ipv6}"], port: 80, tls: false, datapath: kernel}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: plain-key}
spec: {addresses: [${f.host.ipv4.split('.').slice(0, 3).join('.')}.0/24], port: 8080, tls: false}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {selector: ${appSelector}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: legacy}
spec: {selector: {cgroup: ${f.cgBase}/basic}}
---
${withBearer ? `apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-plain}
spec: {workload: app, service: plain, inject: {bearer: {credential: api-token}}}
---
` : ''}apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-key}
spec: {workload: app, service: plain-key, inject: {header: {credential: api-token, name: X-Api-Key, format: "Key {secret}"}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: legacy-plain}
spec: {workload: legacy, service: plain, inject: {basic: {credential: basic-creds}}}
`;

  /** curl in `cg`; returns its local port per URL and the status codes. */
  const curl = async (cg: string, urls: string[]) => {
    const r = await runInCgroup(cg, 'curl', ['-sS', '--max-time', '10', '-w', '%{local_port} %{http_code}\n', ...urls.flatMap((u) => ['-o', '/dev/null', u])]);
    const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => l.split(' ').map(Number) as [number, number]);
    return { ...r, lines };
  };
  /** The one request the upstream saw from client port `port`. */
  const one = async (port: number): Promise<RequestRecord> => {
    const recs = await plain.from(port, 1);
    expect(recs).toHaveLength(1);
    return recs[0] as RequestRecord;
  };

  beforeAll(async () => {
    await f.setUp();
    bound = f.cgroup('bound');
    basicCg = f.cgroup('basic');
    unbound = f.cgroup('unbound');
    plain = await PlainUpstream.start(f.host);
    f.onClose(() => plain?.stop());
    writeFileSync(basicFile, 'username: legacy-user\npassword: legacy-pass\n', { mode: 0o600 });
    f.writePolicy(bindings(true));
    await f.startAgent();
  });

  afterAll(() => f.close());

  it('bearer: curl over IPv4 and IPv6 carries the header once, on its own connection (no proxy hop)', async () => {
    const r = await curl(bound, [`http://${f.host.ipv4}/v4`, `http://[${f.host.ipv6}]/v6`]);
    expect(r.lines.map(([, code]) => code)).toEqual([200, 200]);
    for (const [port] of r.lines) {
      const rec = await one(port);
      expect(rec.authorization).toEqual([sha256(`Bearer ${token}`)]);
      // The upstream's peer is curl's own socket: the agent's proxy never touched it.
      expect(rec.remotePort).toBe(port);
    }
  });

  it('header: a CIDR-pinned service gets X-Api-Key in its format, and nothing else', async () => {
    const r = await curl(bound, [`http://${f.host.ipv4}:8080/key`]);
    const rec = await one(r.lines[0]?.[0] as number);
    expect(rec.apiKey).toEqual([sha256(`Key ${token}`)]);
    expect(rec.authorization).toEqual([]);
  });

  it('basic: username and password fields of the credential', async () => {
    const r = await curl(basicCg, [`http://${f.host.ipv4}/basic`]);
    const rec = await one(r.lines[0]?.[0] as number);
    expect(rec.authorization).toEqual([sha256(`Basic ${Buffer.from('legacy-user:legacy-pass').toString('base64')}`)]);
  });

  it('a process in no workload sends its request untouched', async () => {
    const r = await curl(unbound, [`http://${f.host.ipv4}/unbound`, `http://${f.host.ipv4}:8080/unbound`]);
    for (const [port] of r.lines) {
      const rec = await one(port);
      expect(rec.authorization).toEqual([]);
      expect(rec.apiKey).toEqual([]);
    }
  });

  it('rotating the credential file: requests switch to the new value, none has a missing or mixed header', async () => {
    const old = sha256(`Bearer ${token}`);
    token = `${f.token}-rotated`;
    const next = sha256(`Bearer ${token}`);
    writeFileSync(f.tokenFile, `${token}\n`, { mode: 0o600 });
    const ports: number[] = [];
    await eventually(async () => {
      const r = await curl(bound, [`http://${f.host.ipv4}/rotate`]);
      const port = r.lines[0]?.[0] as number;
      ports.push(port);
      return (await plain.from(port, 1))[0]?.authorization[0] === next;
    }, 15_000, 'a request with the rotated token');
    for (const port of ports) expect([[old], [next]]).toContainEqual((await one(port)).authorization);
  });

  it('a credential that cannot be read is withheld: requests are refused, not sent bare; it recovers without a restart', async () => {
    rmSync(f.tokenFile);
    try {
      const refused = await eventually(async () => {
        const r = await curl(bound, [`http://${f.host.ipv4}/withheld`]);
        return r.code !== 0 && r;
      }, 15_000, 'requests to be refused');
      // curl reports the failed send; the upstream got no request from it.
      expect(refused.stderr).toMatch(/Send failure|Failed sending|Permission denied|Recv failure/i);
      expect(plain.requests.filter((x) => x.target === '/withheld' && x.authorization.length === 0)).toEqual([]);
    } finally {
      writeFileSync(f.tokenFile, `${token}\n`, { mode: 0o600 });
    }
    const port = await eventually(async () => {
      const r = await curl(bound, [`http://${f.host.ipv4}/restored`]);
      return r.code === 0 && (r.lines[0]?.[0] as number);
    }, 15_000, 'requests to carry the credential again');
    const ok = await one(port);
    expect(ok.authorization).toEqual([sha256(`Bearer ${token}`)]);
  });

  it('audit: a line per injected request and per refusal, from the ring buffer, with the caller and never the secret', async () => {
    const r = await curl(bound, [`http://${f.host.ipv4}/audited`]);
    const port = r.lines[0]?.[0] as number;
    await one(port);
    type Line = Record<string, unknown>;
    const lines = () => readFileSync(f.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Line).filter((l) => l.datapath === 'kernel');
    // Injections are read at least every 100 ms; refusals wake the reader at once.
    await waitFor(() => lines().length >= 10, 'kernel audit lines');
    const injected = lines().filter((l) => l.decision === 'inject');
    expect(injected.length).toBeGreaterThanOrEqual(8);
    expect(injected[0]).toMatchObject({ workload: 'app', service: 'plain', credential: 'api-token', address: f.host.ipv4, port: 80 });
    expect(typeof injected[0]?.pid).toBe('number');
    expect(injected.some((l) => l.service === 'plain-key' && l.port === 8080)).toBe(true);
    expect(injected.some((l) => l.workload === 'legacy' && l.credential === 'basic-creds')).toBe(true);
    const denied = lines().filter((l) => l.decision === 'deny');
    expect(denied.length).toBeGreaterThanOrEqual(1);
    expect(denied.every((l) => l.reason === 'credential-unavailable')).toBe(true);
    // Neither the audit log nor the agent's own log holds a credential.
    for (const text of [readFileSync(f.auditPath, 'utf8'), f.agent?.output() ?? '']) {
      expect(text).not.toContain(f.token);
      expect(text).not.toContain('legacy-pass');
    }
  });

  it('wirekey status counts the requests the kernel injected and the ones it refused, by reason', async () => {
    const status = await must(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    const m = /kernel datapath: (\d+) request\(s\) injected; (.*)/.exec(status);
    expect(Number(m?.[1])).toBeGreaterThanOrEqual(8);
    expect(m?.[2]).toMatch(/credential-unavailable [1-9]/);
    expect(status).toMatch(/wk_http_dest +3 \/ 4096/);
  });

  it('--no-kernel-datapath: plaintext services are refused at start with the reason; a TLS-only policy runs on 17 programs', async () => {
    const opts = (policy: string, name: string) => ({
      policy, stateDir: path.join(f.dir, `state-${name}`), pinDir: `${f.pinDir}-${name}`, proxyPort: 0, audit: path.join(f.dir, `audit-${name}`),
      extraArgs: ['--no-kernel-datapath'],
    });
    await expect(startAgent({ ...opts(f.policyDir, 'off'), proxyPort: await freePort() })).rejects.toThrow(
      /plaintext service\(s\) plain, plain-key need the kernel HTTP datapath, which is not loaded: turned off \(--no-kernel-datapath\)/,
    );
    const tlsOnly = path.join(f.dir, 'tls-only.yaml');
    writeFileSync(tlsOnly, `apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: api}
spec: {hosts: [api.example], port: 443, tls: true}
`);
    const agent = await startAgent({ ...opts(tlsOnly, 'tls'), proxyPort: await freePort() });
    try {
      // identity (3 tracepoints, 2 iterators), redirect (connect4/6, getpeername4/6, sockops, bind4/6) and egress (sendmsg4/6, sock_create, setsockopt, cgroup_skb egress)
      expect(agent.programIds).toHaveLength(17);
      expect(agent.output()).toContain('kernel HTTP datapath not loaded');
    } finally {
      await agent.stop();
    }
  });

  it('a reload that changes a bound workload\'s selectors refuses its open connections from their next request; new ones are bound afresh; other workloads\' go on', async () => {
    const flag = path.join(f.dir, 'reselect-go');
    // One request, then, once the flag exists, another on the same connection.
    const script = String.raw`
import http.client, os, sys, time
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=10)
def get(target):
    conn.request('GET', target, headers={'Host': 'plain'})
    r = conn.getresponse()
    r.read()
    return r.status
print(get('/%s/1' % sys.argv[3]), flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
try:
    print(get('/%s/2' % sys.argv[3]), flush=True)
except OSError as e:
    print('errno %d' % e.errno, flush=True)
`;
    const held = runInCgroup(bound, 'python3', ['-c', script, f.host.ipv4, flag, 'reselect']);
    // Another workload's connection to the same service, held open across the same reload.
    const other = runInCgroup(basicCg, 'python3', ['-c', script, f.host.ipv4, flag, 'unchanged']);
    await waitFor(() => plain.requests.some((r) => r.target === '/reselect/1'), 'the first request upstream');
    await waitFor(() => plain.requests.some((r) => r.target === '/unchanged/1'), 'the other workload\'s first request upstream');
    // The same processes still match (the agent runs the tests as root): the change itself is what counts.
    f.writePolicy(bindings(true, `{cgroup: ${f.cgBase}/bound, user: root}`));
    expect(await f.agent?.reload()).toBe('reloaded');
    writeFileSync(flag, '');
    const r = await held;
    expect(r.stdout.trim().split('\n')).toEqual(['200', 'errno 13']);
    expect(plain.requests.filter((x) => x.target === '/reselect/2')).toEqual([]);
    expect(f.agent?.output()).toContain('the selectors of app changed; its open plaintext connections take no further requests');
    // The other workload's selectors did not change: its connection carries on, injected.
    expect((await other).stdout.trim().split('\n')).toEqual(['200', '200']);
    const second = plain.requests.filter((x) => x.target === '/unchanged/2');
    expect(second.map((x) => x.authorization)).toEqual([[sha256(`Basic ${Buffer.from('legacy-user:legacy-pass').toString('base64')}`)]]);
    // A new connection is identified under the new selectors, and injected.
    const fresh = await curl(bound, [`http://${f.host.ipv4}/reselect/fresh`]);
    expect((await one(fresh.lines[0]?.[0] as number)).authorization).toEqual([sha256(`Bearer ${token}`)]);
  });

  it('a reload that removes the binding leaves new connections untouched; the others keep theirs', async () => {
    f.writePolicy(bindings(false));
    expect(await f.agent?.reload()).toBe('reloaded');
    const r = await curl(bound, [`http://${f.host.ipv4}/after-reload`, `http://${f.host.ipv4}:8080/after-reload`]);
    const [plainRec, keyRec] = [await one(r.lines[0]?.[0] as number), await one(r.lines[1]?.[0] as number)];
    expect(plainRec.authorization).toEqual([]);
    expect(keyRec.apiKey).toEqual([sha256(`Key ${token}`)]);
  });
});
