/**
 * WebSocket through the terminating proxy, end to end: real clients (Node's
 * `ws`, Python's `websockets`) in a bound cgroup against a real WebSocket
 * server (the `ws` package's, in the test upstream), each run through
 * wirekey and direct, comparing what the server received and what the
 * client got. The upgrade request is checked and injected like any request;
 * what follows the 101 passes untouched.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { runInCgroup } from '../support/cgroup.js';
import { repoRoot } from '../support/agent.js';
import { pythonTools } from '../support/aws-upstream.js';
import { kernelSkipReason } from '../support/requirements.js';
import { must } from '../support/shell.js';
import { BOUND_APP, E2eFixture, HOST, OTHER } from '../support/e2e-fixture.js';
import type { UpstreamMessage } from '../support/upstream.js';
import { eventually, waitFor } from '../support/wait.js';

const skip = kernelSkipReason();

interface ClientResult {
  status: number;
  messages?: { binary: boolean; length: number; sha256: string }[];
  error?: string | null;
}

/** Text and binary, small and large (a 5 MiB binary frame, a 200 KiB text frame). */
const PLAN = ['text:5', 'bin:1000', 'text:204800', 'bin:5242880', 'bin:0'];

describe.skipIf(skip)(`WebSocket through the proxy${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let unbound: string;
  let venv: string;
  const nodeClient = path.join(repoRoot, 'test/support/clients/ws-client.mjs');
  const pyClient = path.join(repoRoot, 'test/support/clients/ws-client.py');
  const rawTls = path.join(repoRoot, 'test/support/clients/raw-tls.mjs');

  const client = async (which: 'node' | 'python', cg: string, ca: string, wsPath: string, opts: { host?: string; auth?: string } = {}): Promise<ClientResult> => {
    const env = { ...process.env, ...(opts.auth ? { WS_AUTHORIZATION: opts.auth } : {}) };
    const [cmd, script] = which === 'node' ? [process.execPath, nodeClient] : [path.join(venv, 'bin/python'), pyClient];
    const r = await runInCgroup(cg, cmd, [script, opts.host ?? HOST, f.host.ipv4, ca, wsPath, ...PLAN], { env });
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout.trim()) as ClientResult;
  };
  const audit = () => readFileSync(f.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

  beforeAll(async () => {
    venv = (await must(path.join(repoRoot, 'scripts/python-tools'), [path.join(repoRoot, 'scripts/protocol-clients-requirements.txt')])).trim();
    await f.setUp();
    bound = f.writeBoundPolicy();
    unbound = f.cgroup('unbound');
    await f.startAgent({ cgroup: bound });
  });

  afterAll(() => f.close());

  for (const which of ['node', 'python'] as const) {
    it(`${which}: messages both ways are the same through wirekey as direct; only the upgrade request gains the credential`, async () => {
      const before = f.upstream.records.length;
      const msgBefore = f.upstream.messages.length;
      const direct = await client(which, unbound, f.pki.caCert, '/ws/direct');
      const directMsgs = f.upstream.messages.slice(msgBefore);
      const viaBefore = f.upstream.messages.length;
      const via = await client(which, bound, f.wirekeyCa, '/ws/realtime?model=x', { auth: 'Bearer workload-own' });
      expect(via.status).toBe(101);
      expect(via.messages).toHaveLength(PLAN.length);
      // What the client got back, and what the server received, message for message.
      expect(via.messages).toEqual(direct.messages);
      await f.upstream.sync();
      const viaMsgs = f.upstream.messages.slice(viaBefore);
      const strip = (m: UpstreamMessage[]) => m.map(({ binary, length, sha256 }) => ({ binary, length, sha256 }));
      expect(strip(viaMsgs)).toEqual(strip(directMsgs));
      expect(strip(viaMsgs)).toEqual(via.messages);

      const [d, v] = (await f.recordsSince(before)).filter((r) => r.upgrade);
      expect(d).toMatchObject({ url: '/ws/direct', authorization: [] });
      // The workload's own Authorization is dropped; the bound one is injected.
      expect(v).toMatchObject({ url: '/ws/realtime?model=x', host: HOST, servername: HOST, authorization: [f.expectedAuth] });
      expect(v?.headerNames).toEqual(expect.arrayContaining(['sec-websocket-key', 'sec-websocket-version', 'upgrade', 'connection']));
      // Nothing but the one upgrade request is read as HTTP by the upstream.
      expect(v?.bodyLength).toBe(0);
    });
  }

  it('the upgrade and the close are audited: inject with 101, then bytes each way and the duration', async () => {
    const r = await client('node', bound, f.wirekeyCa, '/ws/audited');
    expect(r.status).toBe(101);
    const close = await eventually(async () => audit().find((l) => l.decision === 'close' && l.path === '/ws/audited'), 10_000, 'the close line');
    const upgrade = audit().find((l) => l.decision === 'inject' && l.path === '/ws/audited');
    expect(upgrade).toMatchObject({ workload: 'app', service: 'api', status: 101, credential: 'api-token', reason: 'websocket' });
    const sent = PLAN.reduce((n, p) => n + Number(p.split(':')[1]), 0);
    // Frames carry headers (and the client's are masked): more bytes than payload each way.
    expect(close.bytesUp).toBeGreaterThan(sent);
    expect(close.bytesDown).toBeGreaterThan(sent);
    expect(typeof close.durationMs).toBe('number');
    expect(readFileSync(f.auditPath, 'utf8')).not.toContain(f.token);
  });

  it('a non-101 answer is forwarded as an ordinary response and the connection closed', async () => {
    const before = f.upstream.records.length;
    for (const which of ['node', 'python'] as const) {
      const r = await client(which, bound, f.wirekeyCa, '/ws/refuse');
      expect(r).toMatchObject({ status: 403 });
    }
    const recs = (await f.recordsSince(before)).filter((x) => x.url === '/ws/refuse');
    expect(recs).toHaveLength(2);
    for (const rec of recs) expect(rec.authorization).toEqual([f.expectedAuth]);
    // Audited once relayed.
    const lines = await eventually(async () => {
      const found = audit().filter((l) => l.path === '/ws/refuse' && l.decision === 'inject');
      return found.length === 2 && found;
    }, 10_000, 'both inject lines');
    expect(lines.map((l) => l.status)).toEqual([403, 403]);
    expect(lines.map((l) => l.masked)).toEqual([undefined, undefined]);
  });

  it('a credential the upstream gives back in its answer to an upgrade is masked, 101 or not, and audited as masked', async () => {
    const ws = 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n';
    const upgrade = (p: string) => `GET ${p} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${ws}\r\n`;
    const r = await runInCgroup(bound, process.execPath, [rawTls, HOST, f.host.ipv4, '443', f.wirekeyCa, 'whole'],
      { input: JSON.stringify([upgrade('/ws/refuse-reflect'), upgrade('/ws/reflect')]) });
    expect(r.stderr).toBe('');
    const [refused, switched] = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as string);
    expect(refused).toMatch(/^HTTP\/1\.1 403 /);
    expect(switched).toMatch(/^HTTP\/1\.1 101 /);
    const stars = '*'.repeat(f.token.length);
    // In the refusal's header and its body; in the 101's header.
    expect(refused).toContain(`x-seen: Bearer ${stars}\r\n`);
    expect(refused).toContain(`"error":"key not allowed: Bearer ${stars}"`);
    expect(switched).toContain(`x-seen: Bearer ${stars}\r\n`);
    for (const text of [refused, switched]) expect(text).not.toContain(f.token);
    const masked = await eventually(async () => {
      const found = audit().filter((l) => l.decision === 'inject' && (l.path === '/ws/refuse-reflect' || l.path === '/ws/reflect'));
      return found.length === 2 && Object.fromEntries(found.map((l) => [l.path, l.masked]));
    }, 10_000, 'both inject lines');
    expect(masked).toEqual({ '/ws/refuse-reflect': 2, '/ws/reflect': 1 });
  });

  it('an unbound server name is relayed untouched: the upgrade reaches the upstream with no credential', async () => {
    const before = f.upstream.records.length;
    const r = await client('node', bound, f.pki.caCert, '/ws/relayed', { host: OTHER });
    expect(r.status).toBe(101);
    const [rec] = (await f.recordsSince(before)).filter((x) => x.upgrade);
    expect(rec).toMatchObject({ servername: OTHER, authorization: [] });
  });

  it('adversarial upgrades are refused with their code and nothing reaches the upstream', async () => {
    const before = f.upstream.records.length;
    const h = `Host: ${HOST}\r\n`;
    const ws = 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n';
    const cases: [string, RegExp][] = [
      // A body on an upgrade request.
      [`GET /ws/body HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket\r\n${ws}Content-Length: 5\r\n\r\nhello`, /^HTTP\/1\.1 501 /],
      [`GET /ws/chunked HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket\r\n${ws}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, /^HTTP\/1\.1 (501|400) /],
      // Other protocols.
      [`GET /h2c HTTP/1.1\r\n${h}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n`, /^HTTP\/1\.1 501 /],
      [`GET /two HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n${ws}\r\n`, /^HTTP\/1\.1 501 /],
      [`GET /list HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n${ws}\r\n`, /^HTTP\/1\.1 501 /],
      [`POST /post HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket\r\n${ws}Content-Length: 0\r\n\r\n`, /^HTTP\/1\.1 501 /],
      [`GET /nokey HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n`, /^HTTP\/1\.1 501 /],
      // Checked like any request: a Host naming another host.
      [`GET /ws/other HTTP/1.1\r\nHost: ${OTHER}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${ws}\r\n`, /^HTTP\/1\.1 421 /],
    ];
    const r = await runInCgroup(bound, process.execPath, [rawTls, HOST, f.host.ipv4, '443', f.wirekeyCa], { input: JSON.stringify(cases.map((c) => c[0])) });
    expect(r.stderr).toBe('');
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(cases.length);
    lines.forEach((line, i) => expect(line, cases[i]?.[0].split('\r\n')[0]).toMatch(cases[i]![1]));
    expect(await f.recordsSince(before)).toEqual([]);
    const denied = audit().filter((l) => l.decision === 'deny' && (l.reason === 'upgrade-unsupported' || l.path === '/ws/other'));
    expect(denied.map((l) => l.path)).toEqual(expect.arrayContaining(['/ws/body', '/h2c', '/two', '/list', '/post', '/nokey', '/ws/other']));
  });

  it('an upgrade pipelined after a request waits for its response, and is then injected like it', async () => {
    const before = f.upstream.records.length;
    const h = `Host: ${HOST}\r\n`;
    const raw = `GET /first HTTP/1.1\r\n${h}\r\n` +
      `GET /ws/refuse HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
    const r = await runInCgroup(bound, process.execPath, [rawTls, HOST, f.host.ipv4, '443', f.wirekeyCa, 'all'], { input: JSON.stringify([raw]) });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toMatch(/^HTTP\/1\.1 200 OK \| HTTP\/1\.1 403 Forbidden$/);
    const recs = await f.recordsSince(before);
    expect(recs.map((x) => x.url)).toEqual(['/first', '/ws/refuse']);
    for (const rec of recs) expect(rec.authorization).toEqual([f.expectedAuth]);
  });

  it('an upgrade pipelined behind a refused request is never sent: the refusal closes the connection', async () => {
    const before = f.upstream.records.length;
    const h = `Host: ${HOST}\r\n`;
    // A chunked upload first, so that Node's server (not the fast path) has the connection.
    const raw = `POST /first-upload HTTP/1.1\r\n${h}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n` +
      `TRACE /traced HTTP/1.1\r\n${h}\r\n` +
      `GET /ws/behind-refusal HTTP/1.1\r\n${h}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
    const r = await runInCgroup(bound, process.execPath, [rawTls, HOST, f.host.ipv4, '443', f.wirekeyCa, 'all'], { input: JSON.stringify([raw]) });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toMatch(/^HTTP\/1\.1 200 OK \| HTTP\/1\.1 405 [^|]*$/);
    expect((await f.recordsSince(before)).map((x) => x.url)).toEqual(['/first-upload']);
    expect(audit().filter((l) => l.path === '/ws/behind-refusal')).toEqual([]);
  });

  it('a reload that removes the binding closes an open WebSocket at its next frame, which never reaches the upstream', async () => {
    const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', bound, process.execPath, nodeClient,
      HOST, f.host.ipv4, f.wirekeyCa, '/ws/reloaded', 'text:5', 'pause', 'text:7'], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    f.onClose(async () => {
      child.kill('SIGKILL');
      await exited;
    });
    try {
      await waitFor(() => out.includes('paused\n'), 'the client to send its first message');
      // The same plan without the binding (the workload stays).
      f.writePolicy(BOUND_APP(f.cgBase).split('---')[0]!);
      expect(await f.agent!.reload()).toBe('reloaded');
      child.stdin.write('go\n');
      await exited;
      const result = JSON.parse(out.split('\n').filter(Boolean).at(-1)!) as ClientResult & { closeCode: number };
      expect(result.messages).toHaveLength(1);
      expect(result.closeCode).toBe(1006);
      const close = await eventually(async () => audit().find((l) => l.decision === 'close' && l.path === '/ws/reloaded'), 10_000, 'the close line');
      expect(close.reason).toBe('binding-changed');
      await f.upstream.sync();
      const conn = f.upstream.records.find((r) => r.url === '/ws/reloaded')?.ws;
      expect(f.upstream.messages.filter((m) => m.wsMessage === conn).map((m) => m.length)).toEqual([5]);
    } finally {
      f.writeBoundPolicy();
      await f.agent!.reload();
    }
  });
});
