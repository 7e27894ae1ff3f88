/**
 * Vault-sourced credentials through the whole agent: a workload's requests
 * carry a KV v2 value that rotates under a steady request loop with no
 * failed request (through the proxy, and through the kernel datapath on a
 * plaintext keep-alive connection), and the AWS CLI succeeds with keys OpenBao's AWS secrets
 * engine issues (against moto, which checks signatures). Leases are revoked
 * when the agent stops.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, sha256 } from '../support/e2e-fixture.js';
import { AWS_HOSTS, awsCli, pythonTools, startAwsUpstream, type AwsUpstream } from '../support/aws-upstream.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { kernelHttpSkipReason, kernelSkipReason } from '../support/requirements.js';
import { PlainUpstream } from '../support/plain-upstream.js';
import { runInCgroup } from '../support/cgroup.js';
import { createTestHost, type TestHost } from '../support/netns.js';
import { waitFor } from '../support/wait.js';
import { AGENT_POLICY, baoBinary, vaultSkip } from '../vault/fixture.js';
import { machineSkipTitle, toolSkipTitle } from '../support/tiers.js';

const machineSkip = kernelSkipReason();
const skip = machineSkip ?? vaultSkip;

describe.skipIf(skip)(`Vault-sourced credentials through the agent${machineSkip ? machineSkipTitle(machineSkip) : toolSkipTitle(vaultSkip)}`, () => {
  const f = new E2eFixture();
  let bao: OpenBaoServer;
  let aws: AwsUpstream;
  let awsHost: TestHost;
  let venv: string;
  let app: string;
  let cli: string;
  const v1 = `kv-one-${Date.now()}`;
  const v2 = `kv-two-${Date.now()}`;
  const v3 = `kv-three-${Date.now()}`;
  const kernelSkip = kernelHttpSkipReason();
  /** The KV value the agent holds now. */
  let current = v1;
  let plain: PlainUpstream;

  beforeAll(async () => {
    venv = await pythonTools();
    await f.setUp({ hosts: [HOST, ...AWS_HOSTS] });
    bao = await startOpenBao({ binary: baoBinary as string });
    f.onClose(() => bao.destroy());
    // moto gets a test host of its own: the first one's port 443 is the API's.
    awsHost = await createTestHost(`${f.tag.slice(0, 2)}a`);
    f.onClose(() => awsHost.destroy());
    aws = await startAwsUpstream(awsHost, venv, f.pki.serverCert, f.pki.serverKey, 'vault-root');
    f.onClose(() => aws.stop());
    app = f.cgroup('app');
    cli = f.cgroup('cli');
    plain = await PlainUpstream.start(f.host);
    f.onClose(() => plain.stop());

    await bao.writeKv('app', { token: v1 });
    await bao.writePolicy('wirekey-agent', AGENT_POLICY);
    const { roleId, secretId } = await bao.appRole('wirekey-agent', ['wirekey-agent']);
    await bao.enableAws({ motoUrl: `http://${awsHost.ipv4}:5000`, accessKey: aws.accessKeyId, secretKey: aws.secretAccessKey, role: 'cli', lease: '1h', leaseMax: '2h', actions: ['s3:*', 'sts:GetCallerIdentity'] });
    const roleIdFile = path.join(f.dir, 'role-id');
    const secretIdFile = path.join(f.dir, 'secret-id');
    writeFileSync(roleIdFile, roleId, { mode: 0o600 });
    writeFileSync(secretIdFile, secretId, { mode: 0o600 });

    f.writeRawPolicy(`apiVersion: wirekey.dev/v1alpha1
kind: VaultConnection
metadata: {name: main}
spec:
  address: ${bao.addr}
  auth: {approle: {roleIdFile: ${roleIdFile}, secretIdFile: ${secretIdFile}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: app-token}
spec: {vault: {connection: main, kv: secret/app, field: token, refresh: 1s}}
---
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: aws-cli}
spec: {vault: {connection: main, aws: aws/creds/cli}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: api}
spec: {hosts: [${HOST}], port: 443, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: aws}
spec: {hosts: [${AWS_HOSTS.join(', ')}], port: 443, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: ${f.cgBase}/app}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: cli}
spec: {selector: {cgroup: ${f.cgBase}/cli}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-api}
spec: {workload: app, service: api, inject: {bearer: {credential: app-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: cli-aws}
spec: {workload: cli, service: aws, inject: {sigv4: {credential: aws-cli}}}
${kernelSkip ? '' : `---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: internal}
spec: {addresses: [${f.host.ipv4}], port: 80, tls: false}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-internal}
spec: {workload: app, service: internal, inject: {header: {credential: app-token, name: X-Api-Key}}}
`}`);
    await f.startAgent();
  }, 600_000);

  afterAll(() => f.close());

  it('a KV v2 value is injected, and a new version is carried by later requests with no failed request', async () => {
    const before = f.upstream.records.length;
    // One curl process, one keep-alive connection, a request every 100 ms for 6 s.
    const urls = Array.from({ length: 60 }, (_, i) => `https://${HOST}/kv/${i}`);
    const loop = f.curl(app, ['--cacert', f.wirekeyCa, '--fail', '--rate', '10/s', '-w', ' code=%{http_code}\n', ...urls]);
    // The new version is written once the loop is under way.
    await waitFor(() => f.upstream.records.length >= before + 10, 'the first ten requests of the loop upstream', 30_000);
    const version = await bao.writeKv('app', { token: v2 });
    current = v2;
    const r = await loop;
    expect(r.stderr).toBe('');
    expect([...r.stdout.matchAll(/ code=(\d+)/g)].map((m) => m[1])).toEqual(Array(60).fill('200'));
    const seen = (await f.recordsSince(before)).map((x) => x.authorization[0]);
    expect(seen).toHaveLength(60);
    const old = sha256(`Bearer ${v1}`);
    const next = sha256(`Bearer ${v2}`);
    expect(seen.every((a) => a === old || a === next)).toBe(true);
    // The old value until the change is seen, the new one from then on.
    const firstNew = seen.indexOf(next);
    expect(firstNew).toBeGreaterThan(0);
    expect(seen.slice(firstNew).every((a) => a === next)).toBe(true);
    const audit = readFileSync(f.auditPath, 'utf8');
    expect(audit).toContain(`"credentialVersion":"${version}"`);
  });

  it.skipIf(kernelSkip)(`kernel datapath: a new KV version reaches the header of later requests on the same plaintext connection, and the audit names it${kernelSkip ? ` (skipped: ${kernelSkip})` : ''}`, async () => {
    const urls = Array.from({ length: 60 }, (_, i) => `http://${f.host.ipv4}/kernel-kv/${i}`);
    const loop = runInCgroup(app, 'curl', ['-sS', '--fail', '--rate', '10/s', '-w', '%{local_port} %{http_code}\n', ...urls.flatMap((u) => ['-o', '/dev/null', u])]);
    const loopRequests = () => plain.requests.filter((x) => x.target.startsWith('/kernel-kv/')).length;
    await waitFor(() => loopRequests() >= 10, 'the first ten requests of the loop upstream', 30_000);
    const version = await bao.writeKv('app', { token: v3 });
    current = v3;
    const r = await loop;
    expect(r.stderr).toBe('');
    const lines = r.stdout.trim().split('\n').map((l) => l.split(' '));
    expect(lines.map((l) => l[1])).toEqual(Array(60).fill('200'));
    // One keep-alive connection: every request on curl's own socket.
    const ports = new Set(lines.map((l) => Number(l[0])));
    expect(ports.size).toBe(1);
    const recs = await plain.from([...ports][0] as number, 60);
    const seen = recs.map((x) => x.apiKey[0]);
    const old = sha256(v2);
    const next = sha256(v3);
    expect(seen.every((a) => a === old || a === next)).toBe(true);
    const firstNew = seen.indexOf(next);
    expect(firstNew).toBeGreaterThan(0);
    expect(seen.slice(firstNew).every((a) => a === next)).toBe(true);
    // The audit's default grain: an inject line per connection and credential
    // version, so the connection's switch to the new version has a line of its own.
    const kernelAudit = () => readFileSync(f.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.datapath === 'kernel' && l.service === 'internal' && l.decision === 'inject');
    await waitFor(() => kernelAudit().some((l) => l.credentialVersion === String(version)), 'an inject line naming the new version', 30_000);
    expect(kernelAudit().filter((l) => l.credentialVersion === String(version))).toHaveLength(1);
  });

  it('the AWS CLI (sts, s3 mb, a multi-part cp and back) succeeds with keys issued by the AWS secrets engine, which it never sees', async () => {
    const hosts = path.join(f.shared, 'aws-hosts');
    writeFileSync(hosts, `127.0.0.1 localhost\n${AWS_HOSTS.map((h) => `${awsHost.ipv4} ${h}`).join('\n')}\n`);
    const config = path.join(f.shared, 'aws-config');
    writeFileSync(config, '[default]\ns3 =\n  addressing_style = path\n');
    const opts = { venv, hostsFile: hosts, ca: f.wirekeyCa, home: f.dir, configFile: config };
    const r = await awsCli(cli, opts, ['sts', 'get-caller-identity', '--output', 'json']);
    expect(r.stderr).toBe('');
    const identity = JSON.parse(r.stdout) as { Arn: string };
    // Vault's AWS engine names the users it creates vault-<...>.
    expect(identity.Arn).toMatch(/:user\/vault-/);
    // The same S3 calls as with a file credential, on the leased keys.
    const file = path.join(f.dir, 'object.bin');
    writeFileSync(file, randomBytes(21 * 1024 * 1024));
    for (const args of [['s3', 'mb', 's3://vault-keys'], ['s3', 'cp', file, 's3://vault-keys/object.bin', '--only-show-errors'],
      ['s3', 'cp', 's3://vault-keys/object.bin', `${file}.back`, '--only-show-errors']]) {
      const step = await awsCli(cli, opts, args);
      expect(step.stderr, args.join(' ')).toBe('');
      expect(step.code, args.join(' ')).toBe(0);
    }
    expect(readFileSync(`${file}.back`).equals(readFileSync(file))).toBe(true);
    const line = readFileSync(f.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>)
      .find((l) => l.credential === 'aws-cli');
    expect(line?.leaseId).toMatch(/^aws\/creds\/cli\//);
    expect(line?.accessKeyId).toMatch(/^AKIA/);
  });

  it('Vault down: requests keep their cached credential; Vault back: no restart needed', async () => {
    const get = async (p: string) => {
      const before = f.upstream.records.length;
      const r = await f.curl(app, ['--cacert', f.wirekeyCa, '--fail', '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}${p}`]);
      return { code: r.stdout, auth: (await f.recordsSince(before))[0]?.authorization[0] };
    };
    /**
     * Requests (each must be served with the value held now) until the
     * agent's output matches `line`, then one more: requests are what make
     * a KV source read Vault again.
     */
    const requestsUntil = async (p: string, line: RegExp, what: string) => {
      const deadline = Date.now() + 30_000;
      while (!line.test(f.agent?.output() ?? '')) {
        if (Date.now() > deadline) throw new Error(`timed out after 30000ms waiting for ${what}; the agent's output ends:\n${f.agent?.output().slice(-3000)}`);
        expect(await get(p)).toEqual({ code: '200', auth: sha256(`Bearer ${current}`) });
      }
      expect(await get(p)).toEqual({ code: '200', auth: sha256(`Bearer ${current}`) });
    };
    await bao.stop();
    // The agent tries Vault at its next KV refresh, fails, and serves the cached value.
    await requestsUntil('/vault-down', /credential app-token: .*serving cached version \d+ until Vault answers/, 'the agent to find Vault down');
    await bao.start();
    await requestsUntil('/vault-back', /credential app-token: Vault readable again/, 'the agent to read Vault again');
  });

  it('stopping the agent revokes its AWS lease', async () => {
    const leaseId = readFileSync(f.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>)
      .find((l) => l.credential === 'aws-cli')?.leaseId as string;
    expect((await bao.raw('PUT', 'sys/leases/lookup', { lease_id: leaseId })).status).toBe(200);
    expect(await f.agent?.stop()).toBe(0);
    f.agentStopped = true;
    expect((await bao.raw('PUT', 'sys/leases/lookup', { lease_id: leaseId })).status).toBe(400);
    expect(f.agent?.output()).not.toContain(v1);
    expect(f.agent?.output()).not.toContain(v2);
    expect(f.agent?.output()).not.toContain(v3);
  });
});
