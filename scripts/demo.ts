/**
 * The demo behind `npm run demo`: runs policies/demo.yaml for real on this
 * host. An upstream HTTPS API and a plaintext internal API live in a network
 * namespace of their own; a process in the cgroup /wirekey-demo/app calls
 * them with curl and no key. The proxy injects the token from
 * /run/wirekey-demo/api-token into the HTTPS call; the kernel (sk_msg)
 * injects the key from /run/wirekey-demo/inventory-key into the plaintext
 * one, on curl's own connection. Everything the demo creates is removed when
 * it ends.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createTestHost, type TestHost } from '../test/support/netns.js';
import { createTestPki } from '../test/support/test-pki.js';
import { startUpstream, type Upstream } from '../test/support/upstream.js';
import { PlainUpstream } from '../test/support/plain-upstream.js';
import { createCgroup, removeCgroupTree, runInCgroup } from '../test/support/cgroup.js';
import { freePort, startAgent, wirekeyBin, type RunningAgent } from '../test/support/agent.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { repoRoot } from '../test/support/paths.js';
import { must } from '../test/support/shell.js';
import { findCgroup2Root } from '../controller/cgroup.js';

const HOST = 'api.wirekey.demo';
const say = (s: string) => process.stdout.write(`${s}\n`);
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

async function main(): Promise<void> {
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the demo ${unmet}`);

  const work = mkdtempSync(path.join(tmpdir(), 'wirekey-demo-'));
  const cgRoot = findCgroup2Root();
  const cgDemo = path.join(cgRoot, 'wirekey-demo');
  let host: TestHost | undefined;
  let upstream: Upstream | undefined;
  let inventory: PlainUpstream | undefined;
  let agent: RunningAgent | undefined;
  try {
    say('== setting up: an HTTPS API and a plaintext API in a network namespace, two key files, a workload cgroup');
    host = await createTestHost('demo');
    const pki = await createTestPki(work, [HOST]);
    upstream = await startUpstream(host, pki.serverCert, pki.serverKey);
    const token = `demo-${randomBytes(12).toString('hex')}`;
    mkdirSync('/run/wirekey-demo', { recursive: true, mode: 0o700 });
    writeFileSync('/run/wirekey-demo/api-token', `${token}\n`, { mode: 0o600 });
    const inventoryKey = `inv-${randomBytes(12).toString('hex')}`;
    writeFileSync('/run/wirekey-demo/inventory-key', `${inventoryKey}\n`, { mode: 0o600 });
    inventory = await PlainUpstream.start(host);
    const app = createCgroup(cgRoot, 'wirekey-demo/app');
    const other = createCgroup(cgRoot, 'wirekey-demo/other');
    say(`   api ${HOST} at ${host.ipv4}:443 and a plaintext API at ${host.ipv4}:80 (namespace ${host.ns})`);
    say('   keys in /run/wirekey-demo/api-token and /run/wirekey-demo/inventory-key (0600)');

    // A copy the demo's root owns: the agent refuses a policy file another user could change, as a clone of this repository may be.
    const policy = path.join(work, 'demo.yaml');
    copyFileSync(path.join(repoRoot, 'policies/demo.yaml'), policy);
    say(`\n== starting wirekey run --policy ${policy} (a copy of policies/demo.yaml)`);
    const stateDir = path.join(work, 'state');
    const audit = path.join(work, 'audit.log');
    agent = await startAgent({
      policy,
      stateDir,
      pinDir: '/sys/fs/bpf/wirekey-demo',
      proxyPort: await freePort(),
      audit,
      upstreamCa: pki.caCert,
      logLevel: 'info',
    });
    for (const line of agent.output().trim().split('\n')) say(`   ${line}`);
    const wirekeyCa = path.join(work, 'wirekey-ca.pem');
    writeFileSync(wirekeyCa, await must(process.execPath, [wirekeyBin, 'ca', 'cert', '--create', '--state-dir', stateDir]));

    const curl = ['curl', '-sS', '--resolve', `${HOST}:443:${host.ipv4}`, '--cacert', wirekeyCa, `https://${HOST}/v1/hello`];
    say(`\n== a process in /wirekey-demo/app runs, with no token anywhere:\n   ${curl.join(' ')}`);
    const r = await runInCgroup(app, curl[0] as string, curl.slice(1));
    say(`   -> ${r.stdout.trim() || r.stderr.trim()}`);
    const seen = upstream.records.at(-1);
    const injected = seen?.authorization[0] === sha256(`Bearer ${token}`);
    say(`   the API received Authorization: Bearer <token from the file>: ${injected ? 'yes' : 'NO'}`);

    const plainUrl = 'http://inventory.demo/v1/items';
    const resolve = `inventory.demo:80:${host.ipv4}`;
    say(`\n== the same process calls the plaintext API:\n   curl -sS --resolve ${resolve} ${plainUrl}`);
    const p = await runInCgroup(app, 'curl', ['-sS', '--resolve', resolve, '-o', '/dev/null', '-w', '%{http_code} %{local_port}', plainUrl]);
    const [status, localPort] = p.stdout.trim().split(' ').map(Number);
    const rec = (await inventory.from(localPort as number, 1))[0];
    const keyed = rec?.apiKey[0] === sha256(inventoryKey);
    say(`   -> ${status}; the API received X-Api-Key: <key from the file>: ${keyed ? 'yes' : 'NO'}`);
    say(`   curl's port ${localPort}, the API's peer port ${rec?.remotePort}: the kernel added the header on curl's own connection, no proxy`);

    say('\n== the same HTTPS request from a process outside the bound cgroup (it trusts the API\'s own CA):');
    const before = upstream.records.length;
    await runInCgroup(other, 'curl', ['-sS', '--resolve', `${HOST}:443:${host.ipv4}`, '--cacert', pki.caCert, `https://${HOST}/v1/hello`]);
    const plain = upstream.records.slice(before)[0];
    say(`   the API received an Authorization header: ${plain?.authorization.length ? 'yes' : 'no'}`);

    // The kernel datapath's lines are read from its ring every 100 ms and its
    // usage counts at stop: stopping first puts every line in the log.
    say('\n== stopping wirekey (SIGTERM); it writes the kernel\'s usage counts as it stops');
    const code = await agent.stop();
    if (code !== 0) throw new Error(`wirekey run exited ${code} on SIGTERM:\n${agent.output()}`);

    say('\n== audit log: the proxy\'s line per request, the kernel\'s line per connection and its usage count:');
    for (const line of readFileSync(audit, 'utf8').trim().split('\n')) say(`   ${line}`);
    if (!injected || r.code !== 0) throw new Error('the token was not injected');
    if (!keyed || rec?.remotePort !== localPort) throw new Error('the kernel did not inject the key');
    say('\ndemo: ok');
  } finally {
    await agent?.stop();
    await upstream?.stop();
    await inventory?.stop();
    await host?.destroy();
    removeCgroupTree(cgRoot, cgDemo);
    rmSync('/run/wirekey-demo', { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
