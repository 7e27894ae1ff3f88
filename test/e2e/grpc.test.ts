/**
 * gRPC through the proxy, end to end, with grpcio on both sides: a server
 * in the test network namespace, a client in a bound cgroup. Unary and
 * bidirectional streaming calls, the bearer injected in the
 * `authorization` metadata (the workload's own dropped), trailers
 * (grpc-status, grpc-message, custom trailing metadata) intact, the
 * client's deadline (grpc-timeout) reaching the server, a call the client
 * cancels or whose deadline passes ending on the server too, and an 8 MiB
 * message both ways.
 * The same client direct, for comparison.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { E2eFixture, OTHER, sha256 } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { h2Venv, hostsFile, runWithHosts } from '../support/h2-clients.js';
import { repoRoot } from '../support/paths.js';
import { waitFor } from '../support/wait.js';

const skip = kernelSkipReason();
const GRPC_PORT = 9443;
const script = path.join(repoRoot, 'test/support/clients/grpc-echo.py');

type Line = Record<string, unknown>;

describe.skipIf(skip)(`gRPC through the proxy${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let unbound: string;
  let venv: string;
  let hosts: string;
  let server: ChildProcess;
  const served: Line[] = [];

  beforeAll(async () => {
    venv = await h2Venv();
    await f.setUp();
    server = spawn('ip', ['netns', 'exec', f.host.ns, path.join(venv, 'bin/python'), script, 'server', f.pki.serverCert, f.pki.serverKey, String(GRPC_PORT)],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    f.onClose(() => new Promise<void>((resolve) => {
      if (server.exitCode !== null || server.signalCode !== null) return resolve();
      server.once('exit', () => resolve());
      server.kill('SIGKILL');
    }));
    let buffered = '';
    server.stdout?.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        served.push(JSON.parse(buffered.slice(0, nl)) as Line);
        buffered = buffered.slice(nl + 1);
      }
    });
    await waitFor(() => served.some((l) => l.listening), 'the gRPC server to listen', 30_000);
    unbound = f.cgroup('unbound');
    bound = f.writeBoundPolicy(`apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: grpcapi}
spec: {hosts: [${OTHER}], port: ${GRPC_PORT}, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-grpc}
spec: {workload: app, service: grpcapi, inject: {bearer: {credential: api-token}}}
`);
    hosts = hostsFile(f.dir, f.host.ipv4, [OTHER]);
    await f.startAgent();
  });

  afterAll(() => f.close());

  const runClient = async (cg: string, ca: string) => {
    const before = served.length;
    // The native resolver reads /etc/hosts (the private one naming the test host).
    const r = await runWithHosts(cg, hosts, path.join(venv, 'bin/python'), [script, 'client', `${OTHER}:${GRPC_PORT}`, ca],
      { ...process.env, GRPC_DNS_RESOLVER: 'native' }, 120_000);
    expect(r.code, r.stderr).toBe(0);
    const calls = Object.fromEntries(r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Line).map((l) => [l.call as string, l]));
    // The held call's end is recorded once the server sees it cancelled.
    await waitFor(() => served.slice(before).some((l) => l.held === 'ended'), 'the server to see the held call end');
    // The cancelled call ends on the server too: the proxy does not hold its stream open.
    await waitFor(() => served.slice(before).some((l) => l.held === 'cancelled-stream'), 'the server to see the cancelled call end');
    return { calls, served: served.slice(before) };
  };

  it('unary and bidi calls, metadata, trailers, deadlines and an 8 MiB message: the same through wirekey as direct, plus the credential', async () => {
    const through = await runClient(bound, f.wirekeyCa);
    const direct = await runClient(unbound, f.pki.caCert);
    for (const [name, got] of [['through wirekey', through], ['direct', direct]] as const) {
      const { calls } = got;
      expect(calls.Unary, name).toMatchObject({ body: 'hello', code: 'OK', trailers: { 'x-trailer': 'trailing-value', 'x-deadline': 'set' } });
      expect(calls.Big, name).toMatchObject({ size: 8 * 1024 * 1024, same: true, code: 'OK' });
      expect(calls.Fail, name).toMatchObject({ code: 'INVALID_ARGUMENT', details: 'bad input: 100% wrong ünicode' });
      expect(calls.Bidi, name).toMatchObject({ replies: 20, same: true });
      expect(calls.Hold, name).toMatchObject({ code: 'DEADLINE_EXCEEDED' });
      expect(calls.Cancel, name).toMatchObject({ first: 'first', code: 'CANCELLED' });
    }
    // What the server saw: the injected bearer through wirekey, none direct; the rest of the metadata alike.
    const auth = (g: typeof through) => g.served.filter((l) => l.method).map((l) => l.authorization);
    for (const a of auth(through)) expect(a).toEqual([f.expectedAuth]);
    for (const a of auth(direct)) expect(a).toEqual([sha256('Bearer workload-own')]);
    const meta = (g: typeof through) => g.served.filter((l) => l.method).map((l) => [l.method, l.requestId, (l.metadata as string[]).filter((k) => k !== 'user-agent')]);
    expect(meta(through)).toEqual(meta(direct));
    // The client's deadline reached the server (grpc-timeout) through wirekey.
    for (const l of through.served.filter((x) => x.method)) expect(l.deadline, String(l.method)).not.toBeNull();
    expect(through.served.find((l) => l.method === 'Unary' && l.size === 8 * 1024 * 1024)?.sha256).toBeDefined();
  });
});
