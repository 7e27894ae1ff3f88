/**
 * No agent, no injection: what a workload's open plaintext connection gets
 * from the kernel datapath when the agent is killed, restarted and stopped,
 * through real `wirekey run` processes, against the strict plain-HTTP
 * upstream (and, for the proxy datapath, the TLS upstream). A connection is
 * a Python client in the bound cgroup that sends one GET per line it reads
 * on stdin and reports the status, or the errno that stopped it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, sha256 } from '../support/e2e-fixture.js';
import { PlainUpstream } from '../support/plain-upstream.js';
import { eventually, waitFor } from '../support/wait.js';
import { kernelHttpSkipReason } from '../support/requirements.js';
import { runInCgroup } from '../support/cgroup.js';
import { wirekeyBin, type RunningAgent } from '../support/agent.js';
import { must, run } from '../support/shell.js';
import { native } from '../../controller/datapath/native.js';
import { decodeHttpConfig, encodeU32 } from '../../controller/datapath/layout.js';

const skip = kernelHttpSkipReason();
const EACCES = 13;

const CLIENT = String.raw`
import json, socket, ssl, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
host = 'u'
if len(sys.argv) > 3:
    host = sys.argv[4]
    s = ssl.create_default_context(cafile=sys.argv[3]).wrap_socket(s, server_hostname=host)
print(json.dumps({'port': s.getsockname()[1]}), flush=True)
buf = b''
def response():
    global buf
    while b'\r\n\r\n' not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError('closed')
        buf += chunk
    head, _, rest = buf.partition(b'\r\n\r\n')
    lines = head.decode('latin1').split('\r\n')
    cl = 0
    for l in lines[1:]:
        k, _, v = l.partition(':')
        if k.strip().lower() == 'content-length':
            cl = int(v.strip())
    while len(rest) < cl:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError('closed in body')
        rest += chunk
    buf = rest[cl:]
    return int(lines[0].split(' ')[1])
for line in sys.stdin:
    try:
        s.sendall(('GET %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (line.strip(), host)).encode())
        print(json.dumps({'status': response()}), flush=True)
    except OSError as e:
        print(json.dumps({'error': e.errno}), flush=True)
    except EOFError as e:
        print(json.dumps({'error': str(e)}), flush=True)
`;

type Reply = { status?: number; error?: number | string };

/** One keep-alive connection of a bound process, driven request by request. */
class Connection {
  readonly #child: ChildProcess;
  readonly #lines: string[] = [];
  #waiting: ((line: string) => void) | null = null;
  #failed: ((err: Error) => void) | null = null;
  port = 0;

  private constructor(child: ChildProcess) {
    this.#child = child;
    child.once('exit', () => this.#failed?.(new Error('the client exited')));
    let buffered = '';
    child.stdout?.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const w = this.#waiting;
        if (w) {
          this.#waiting = null;
          w(line);
        } else {
          this.#lines.push(line);
        }
      }
    });
  }

  /** Plain HTTP to port 80, or with `tls`, HTTPS to port 443 trusting `ca` for `servername`. */
  static async open(cg: string, address: string, tls?: { ca: string; servername: string }): Promise<Connection> {
    const args = tls ? [address, '443', tls.ca, tls.servername] : [address, '80'];
    const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg, 'python3', '-c', CLIENT, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
    const c = new Connection(child);
    c.port = (JSON.parse(await c.#next()) as { port: number }).port;
    return c;
  }

  #next(): Promise<string> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.#child.exitCode !== null) return Promise.reject(new Error('the client exited'));
    return new Promise((resolve, reject) => {
      this.#waiting = resolve;
      this.#failed = reject;
    });
  }

  async get(target: string): Promise<Reply> {
    this.#child.stdin?.write(`${target}\n`);
    return JSON.parse(await this.#next()) as Reply;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#child.exitCode !== null || this.#child.signalCode !== null) return resolve();
      this.#child.once('exit', () => resolve());
      this.#child.stdin?.end();
    });
  }
}

describe.skipIf(skip)(`the datapaths without an agent (killed, restarted, stopped)${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let plain: PlainUpstream;
  let bound: string;
  const connections: Connection[] = [];
  const agents: RunningAgent[] = [];
  const auth = () => sha256(`Bearer ${f.token}`);

  const open = async (tls?: { ca: string; servername: string }) => {
    const c = await Connection.open(bound, f.host.ipv4, tls);
    connections.push(c);
    return c;
  };
  /** Starts an agent with the given heartbeat timeout (seconds). */
  const start = async (timeout: number) => {
    const agent = await f.startAgent({ extraArgs: ['--kernel-alive-timeout', String(timeout)] });
    agents.push(agent);
    f.agentStopped = false;
    return agent;
  };
  const draining = () => `${f.pinDir}-draining`;
  const drainingEntries = () => (existsSync(draining()) ? readdirSync(draining()) : []);
  /** Every request the upstream has answered on this connection carried the credential once. */
  const neverBare = async (c: Connection) => {
    await plain.sync();
    const recs = plain.byPort(c.port);
    for (const r of recs) expect(r.authorization).toEqual([auth()]);
    return recs.map((r) => r.target);
  };
  /** The ids of the wk_http_hdr maps on this host (pinned or not, this test's or another's) that hold `secret`. */
  const headerMapsHolding = async (secret: string): Promise<number[]> => {
    const maps = JSON.parse((await must('bpftool', ['-j', 'map', 'show'])) || '[]') as { id: number; name?: string }[];
    const needle = Buffer.from(secret);
    const ids: number[] = [];
    for (const m of maps.filter((x) => x.name === 'wk_http_hdr')) {
      let map;
      try {
        map = native().openMapById(m.id);
      } catch {
        continue; // freed meanwhile
      }
      if (map.keys().some((key) => map.lookup(key)?.includes(needle))) ids.push(m.id);
    }
    return ids;
  };
  const anyHeaderMapHolds = async (secret: string) => (await headerMapsHolding(secret)).length > 0;

  beforeAll(async () => {
    await f.setUp();
    bound = f.cgroup('bound');
    plain = await PlainUpstream.start(f.host);
    f.onClose(async () => {
      for (const c of connections) await c.close();
      for (const a of agents) await a.stop();
      await plain?.stop();
    });
    f.writePolicy(`apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: plain}
spec: {addresses: [${f.host.ipv4}], port: 80, tls: false}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: ${f.cgBase}/bound}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-plain}
spec: {workload: app, service: plain, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-api}
spec: {workload: app, service: api, inject: {bearer: {credential: api-token}}}
`);
  });

  afterAll(() => f.close());

  it('the agent is not dumpable: a process of its uid and capabilities cannot read its fds or memory (it can an ordinary one\'s)', async () => {
    // Without CAP_SYS_PTRACE on either side, so that dumpability is what decides
    // (a reader must otherwise hold every capability its target holds).
    const noPtrace = ['setpriv', '--inh-caps=-sys_ptrace', '--bounding-set=-sys_ptrace'];
    const agent = await f.startAgent({ wrapper: noPtrace, extraArgs: ['--kernel-alive-timeout', '5'] });
    agents.push(agent);
    f.agentStopped = false;
    const probe = String.raw`
import json, os, sys
out = {}
for name in ['fd/0', 'mem']:
    p = '/proc/%s/%s' % (sys.argv[1], name)
    try:
        os.readlink(p) if name == 'fd/0' else open(p, 'rb').close()
        out[name] = 'ok'
    except OSError as e:
        out[name] = e.strerror
print(json.dumps(out))
`;
    const read = async (pid: number) => JSON.parse((await must(noPtrace[0] as string, [...noPtrace.slice(1), 'python3', '-c', probe, String(pid)])).trim()) as Record<string, string>;
    const ordinary = spawn(noPtrace[0] as string, [...noPtrace.slice(1), 'sleep', '60'], { stdio: 'ignore' });
    try {
      await waitFor(() => existsSync(`/proc/${ordinary.pid}/fd/0`), 'the ordinary process');
      expect(await read(ordinary.pid as number)).toEqual({ 'fd/0': 'ok', mem: 'ok' });
    } finally {
      ordinary.kill();
    }
    expect(await read(agent.pid)).toEqual({ 'fd/0': 'Permission denied', mem: 'Permission denied' });
    expect(await agent.stop()).toBe(0);
  });

  it('kill -9: an open connection gets the header until the heartbeat lapses, then is refused (EACCES), never sent bare; new connections go out untouched', async () => {
    const agent = await start(1);
    const c = await open();
    expect(await c.get('/killed/0')).toEqual({ status: 200 });
    await agent.kill();
    // Requests go on with the header for at most the timeout, then the next is refused.
    let i = 0;
    const refused = await eventually(async () => {
      const r = await c.get(`/killed/${++i}`);
      return r.error !== undefined && r;
    }, 15_000, 'a request refused after the heartbeat lapsed');
    expect(refused.error).toBe(EACCES);
    await waitFor(() => plain.byPort(c.port).length >= i, 'the requests sent before the refusal');
    // Every request before the refused one arrived with the header; the refused one did not arrive.
    expect(await neverBare(c)).toEqual(Array.from({ length: i }, (_, n) => `/killed/${n}`));
    // Refused for good: the connection takes no more writes.
    expect(await c.get('/killed/after')).toEqual({ error: EACCES });
    // Counted, in the pins the dead agent left.
    // Not running (exit 3), and what the dead agent's pins show: the refusals.
    const dead = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(dead.code).toBe(3);
    expect(dead.stdout).toMatch(/^wirekey is not running: agent pid \d+ has exited; what its pins still show:/);
    expect(dead.stdout).toMatch(/agent-gone [1-9]/);
    // Its cgroup programs died with it: a new connection is not bound at all.
    const fresh = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '10', '-o', '/dev/null', '-w', '%{local_port} %{http_code}', `http://${f.host.ipv4}/fresh`]);
    const [port, code] = fresh.stdout.split(' ').map(Number);
    expect(code).toBe(200);
    expect((await plain.from(port as number, 1))[0]?.authorization).toEqual([]);
    await c.close();
  });

  it('kill -9, proxy datapath: an open proxied connection is closed with the proxy; its programs stay attached, so a new one is refused, never sent direct; the next agent takes over and injects', async () => {
    const agent = await start(5);
    const t = await open({ ca: f.bothCas, servername: HOST });
    const before = f.upstream.records.length;
    expect(await t.get('/proxied/0')).toEqual({ status: 200 });
    await waitFor(() => f.upstream.records.length > before, 'the proxied request');
    expect(f.upstream.records.slice(before).map((r) => r.authorization)).toEqual([[f.expectedAuth]]);
    await agent.kill();
    const gone = await t.get('/proxied/1');
    expect(gone.error).toBeDefined();
    // Its links are pinned: connect() still redirects to the proxy port, where
    // nothing listens. curl (which trusts only the upstream's CA) is refused.
    const refused = await f.curl(bound, ['--cacert', f.pki.caCert, '-o', '/dev/null', `https://${HOST}/while-dead`]);
    expect(refused.code).toBe(7); // couldn't connect
    expect(f.upstream.records.some((r) => r.url === '/while-dead' || r.url === '/proxied/1')).toBe(false);
    const dead = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(dead.code).toBe(3);
    expect(dead.stdout).toMatch(/programs still attached: \d+ \(restricted workloads' egress rules stay enforced/);
    expect(readdirSync(path.join(f.pinDir, 'links'))).toEqual(expect.arrayContaining(['wk_bind4', 'wk_bind6', 'wk_connect4', 'wk_connect6', 'wk_exec', 'wk_sendmsg4']));
    // Nor may another user take the proxy port meanwhile (it would be handed
    // the redirected connections, and the next agent could not listen).
    const squat = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3', '-c',
      `import socket\ns = socket.socket()\ns.bind(('127.0.0.1', ${f.proxyPort}))\ns.listen()`]);
    expect(squat.code).not.toBe(0);
    expect(squat.stderr).toContain('PermissionError: [Errno 1]');
    const counted = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(counted.stdout).toContain('binds to the proxy port refused (uid other than 0): 1\n');
    await t.close();

    // The next agent attaches its own, then releases the dead one's.
    const next = await start(5);
    expect(next.output()).toMatch(/took over from the previous agent: its \d+ program\(s\), attached while no agent ran/);
    expect(existsSync(path.join(f.pinDir, 'links-previous'))).toBe(false);
    const after = f.upstream.records.length;
    const injected = await f.curl(bound, ['--cacert', f.bothCas, '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}/after-takeover`]);
    expect(injected.stdout).toBe('200');
    await waitFor(() => f.upstream.records.length > after, 'the request after the takeover');
    expect(f.upstream.records.find((r) => r.url === '/after-takeover')?.authorization).toEqual([f.expectedAuth]);
    expect(await next.stop()).toBe(0);
    // A clean stop unpins them: nothing of wirekey stays attached.
    expect(existsSync(f.pinDir)).toBe(false);
  });

  it('a stuck agent (SIGSTOP): open and new connections are refused once the heartbeat lapses, never sent bare; after SIGCONT new ones are injected and the refusals are audited', async () => {
    const agent = await start(1);
    const c = await open();
    expect(await c.get('/stuck/0')).toEqual({ status: 200 });
    process.kill(agent.pid, 'SIGSTOP');
    try {
      // Its lock is still held: status must not call it running and fine.
      const hung = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir, '--timeout', '1s']);
      expect(hung.code).toBe(5);
      expect(hung.stdout).toMatch(/^agent pid \d+: NOT READY: it does not answer on its control socket \S+agent\.sock within 1s/);
      let i = 0;
      const refused = await eventually(async () => {
        const r = await c.get(`/stuck/${++i}`);
        return r.error !== undefined && r;
      }, 15_000, 'a request refused after the heartbeat lapsed');
      expect(refused.error).toBe(EACCES);
      // Its programs are still attached: a new connection is bound, and refused at its first request.
      const fresh = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '10', `http://${f.host.ipv4}/stuck/fresh`]);
      expect(fresh.code).not.toBe(0);
      expect(fresh.stderr).toMatch(/Send failure|Failed sending|Permission denied|Recv failure/i);
      await waitFor(() => plain.byPort(c.port).length >= i, 'the requests sent before the refusal');
      expect(await neverBare(c)).toEqual(Array.from({ length: i }, (_, n) => `/stuck/${n}`));
      expect(plain.requests.some((r) => r.target === '/stuck/fresh')).toBe(false);
    } finally {
      process.kill(agent.pid, 'SIGCONT');
    }
    // Running again: the heartbeat is back for new connections (the refused one stays refused).
    const port = await eventually(async () => {
      const r = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '10', '-o', '/dev/null', '-w', '%{local_port}', `http://${f.host.ipv4}/stuck/after`]);
      return r.code === 0 && Number(r.stdout);
    }, 15_000, 'a request injected after SIGCONT');
    expect((await plain.from(port, 1))[0]?.authorization).toEqual([auth()]);
    expect(await c.get('/stuck/again')).toEqual({ error: EACCES });
    const audited = () => readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.datapath === 'kernel' && l.reason === 'agent-gone');
    await waitFor(() => audited().length >= 2, 'the agent-gone audit lines');
    expect(audited().every((l) => l.decision === 'deny' && l.workload === 'app' && l.service === 'plain')).toBe(true);
    await c.close();
    expect(await agent.stop()).toBe(0);
  });

  it('restart: the new agent refuses the connections the old one left open at once, never sends them bare, injects new ones, and sweeps the old sockhash once they close', async () => {
    // A timeout long enough that only the new agent can be what refuses.
    const first = await start(600);
    const c = await open();
    expect(await c.get('/restart/0')).toEqual({ status: 200 });
    await first.kill();
    expect(await c.get('/restart/1')).toEqual({ status: 200 });
    // The dead agent's header map still holds the line (its sockhash keeps it alive).
    const dead = await headerMapsHolding(f.token);
    expect(dead).toHaveLength(1);

    const second = await start(600);
    expect(second.output()).toMatch(/the previous agent left 1 connection\(s\) open: refused from their next request \(its heartbeat set to 0, 1 header line\(s\) wiped\); draining at \S+socks-\d+/);
    expect(drainingEntries()).toHaveLength(1);
    // Wiped by the new agent: only its own map holds the line now.
    const live = await headerMapsHolding(f.token);
    expect(live).toHaveLength(1);
    expect(live).not.toContain(dead[0]);
    expect(await c.get('/restart/2')).toEqual({ error: EACCES });
    expect(await neverBare(c)).toEqual(['/restart/0', '/restart/1']);

    // New connections belong to the new agent, on both datapaths.
    const d = await open();
    expect(await d.get('/restart/new')).toEqual({ status: 200 });
    expect(await neverBare(d)).toEqual(['/restart/new']);
    const proxied = await f.curl(bound, ['--cacert', f.wirekeyCa, '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}/restart/proxied`]);
    expect(proxied.stdout).toBe('200');
    await waitFor(() => f.upstream.records.some((r) => r.url === '/restart/proxied'), 'the proxied request');
    expect(f.upstream.records.find((r) => r.url === '/restart/proxied')?.authorization).toEqual([f.expectedAuth]);

    const status = await must(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(status).toMatch(/draining \S+socks-\d+: 1 connection\(s\) of a previous agent, each refused at its next request; agent-gone 1/);

    await c.close();
    await waitFor(() => /swept \S+socks-\d+: its last connection closed \(1 request\(s\) refused without an agent\)/.test(second.output()), 'the drained sockhash to be swept');
    expect(existsSync(draining())).toBe(false);
    await d.close();
  });

  it('clean stop: open connections are refused at once, no header map holds the credential, and their sockhash drains under one pin until the next agent sweeps it', async () => {
    const agent = agents.at(-1) as RunningAgent;
    const c = await open();
    expect(await c.get('/stop/0')).toEqual({ status: 200 });
    // The positive control for the search below.
    expect(await anyHeaderMapHolds(f.token)).toBe(true);

    expect(await agent.stop()).toBe(0);
    f.agentStopped = true;
    // The timeout is 600 s: only the stop itself can refuse this.
    expect(await c.get('/stop/1')).toEqual({ error: EACCES });
    expect(await neverBare(c)).toEqual(['/stop/0']);
    expect(agent.output()).toMatch(/1 connection\(s\) still open; each is refused from its next request, and their sockhash stays pinned at \S+socks-\d+/);

    // Nothing is left in the pin directory; one sockhash drains, with its
    // config (heartbeat 0) and counters, and no header map anywhere holds the secret.
    expect(existsSync(f.pinDir)).toBe(false);
    const entries = drainingEntries();
    expect(entries).toHaveLength(1);
    const dir = path.join(draining(), entries[0] as string);
    expect(readdirSync(dir).sort()).toEqual(['wk_http_config', 'wk_http_socks', 'wk_http_stats']);
    const config = native().openPinnedMap(path.join(dir, 'wk_http_config')).lookup(encodeU32(0));
    expect(decodeHttpConfig(config as Buffer).aliveUntil).toBe(0n);
    expect(await anyHeaderMapHolds(f.token)).toBe(false);

    await c.close();
    const next = await start(5);
    expect(next.output()).toMatch(/swept \S+socks-\d+: its last connection closed/);
    expect(existsSync(draining())).toBe(false);
    const d = await open();
    expect(await d.get('/stop/next')).toEqual({ status: 200 });
    expect(await neverBare(d)).toEqual(['/stop/next']);
    await d.close();
  });

  it('a stopped agent leaves no header line in any map, also with no connection open', async () => {
    const agent = agents.at(-1) as RunningAgent;
    writeFileSync(f.tokenFile, `${f.token}\n`, { mode: 0o600 });
    expect(await anyHeaderMapHolds(f.token)).toBe(true);
    expect(await agent.stop()).toBe(0);
    f.agentStopped = true;
    expect(await anyHeaderMapHolds(f.token)).toBe(false);
    expect(existsSync(f.pinDir)).toBe(false);
    expect(existsSync(draining())).toBe(false);
  });
});
