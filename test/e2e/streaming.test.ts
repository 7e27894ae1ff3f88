/**
 * Streamed responses and Expect: 100-continue through the proxy, with real
 * clients in a bound cgroup, each also run direct.
 *
 * Server-sent events: the test upstream sends event k+1 only when told to,
 * and the test tells it only after the client has printed event k; so a
 * client that gets every event proves that nothing between it and the
 * upstream waited for more bytes (or for the end) before passing them on.
 * No sleeps, no clocks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import https from 'node:https';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../support/agent.js';
import { kernelSkipReason } from '../support/requirements.js';
import { must } from '../support/shell.js';
import { E2eFixture, HOST, OTHER } from '../support/e2e-fixture.js';
import { waitFor } from '../support/wait.js';

const skip = kernelSkipReason();
const EVENTS = 5;

describe.skipIf(skip)(`server-sent events and 100-continue through the proxy${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let unbound: string;
  let venv: string;
  let streams = 0;

  /** `cmd args` in cgroup `cg`, its stdout readable as it comes. */
  const streamed = (cg: string, cmd: string, args: string[]) => {
    const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = { stdout: '', stderr: '' };
    child.stdout.on('data', (d: Buffer) => (out.stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out.stderr += d.toString()));
    const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? -1)));
    f.onClose(async () => {
      child.kill('SIGKILL');
      await exited;
    });
    return { out, exited };
  };

  /** Tells the upstream to send the stream's next event (or, with `last`, to end it): straight to it, from outside any workload. */
  const next = (id: string, last?: number) =>
    new Promise<void>((resolve, reject) => {
      https
        .get({ host: f.host.ipv4, port: 443, servername: HOST, ca: readFileSync(f.pki.caCert), agent: false,
          path: `/sse-next/${id}${last !== undefined ? `?n=${last}` : ''}`, headers: { host: HOST } }, (res) => {
          expect(res.statusCode).toBe(200);
          res.resume();
          res.once('end', resolve);
        })
        .once('error', reject);
    });

  /** Reads a stream event by event; returns the client's output once it exits. */
  const readEvents = async (cg: string, client: 'curl' | 'python', ca: string): Promise<{ id: string; stdout: string }> => {
    const id = `s${++streams}`;
    const url = `https://${HOST}/sse/${id}`;
    const run = client === 'curl'
      ? streamed(cg, 'curl', ['-N', '-sS', '--max-time', '30', '--resolve', `${HOST}:443:${f.host.ipv4}`, '--cacert', ca, url])
      : streamed(cg, path.join(venv, 'bin/python'), [path.join(repoRoot, 'test/support/clients/sse-client.py'), HOST, f.host.ipv4, ca, `/sse/${id}`]);
    for (let k = 1; k <= EVENTS; k++) {
      await waitFor(() => run.out.stdout.includes(`data: {"n":${k}}`) || run.out.stderr !== '', `event ${k} from ${client}`);
      expect(run.out.stderr).toBe('');
      // The upstream has not been told to send k+1 yet: nothing can be ahead.
      expect(run.out.stdout).not.toContain(`data: {"n":${k + 1}}`);
      await next(id, k === EVENTS ? EVENTS : undefined);
    }
    expect(await run.exited).toBe(0);
    expect(run.out.stderr).toBe('');
    return { id, stdout: run.out.stdout };
  };

  beforeAll(async () => {
    venv = (await must(path.join(repoRoot, 'scripts/python-tools'), [path.join(repoRoot, 'scripts/protocol-clients-requirements.txt')])).trim();
    await f.setUp();
    bound = f.writeBoundPolicy();
    unbound = f.cgroup('unbound');
    await f.startAgent({ cgroup: bound });
  });

  afterAll(() => f.close());

  for (const client of ['curl', 'python'] as const) {
    it(`${client}: server-sent events arrive one by one, each before the upstream sends the next, as direct`, async () => {
      const before = f.upstream.records.length;
      const direct = await readEvents(unbound, client, f.pki.caCert);
      const via = await readEvents(bound, client, f.wirekeyCa);
      const events = (s: string) => s.split('\n').filter((l) => l.startsWith('data: ') || l.startsWith('event: ') || l.startsWith('id: '));
      expect(events(via.stdout)).toEqual(events(direct.stdout));
      expect(events(via.stdout)).toContain('data: end');
      if (client === 'python') expect(via.stdout.split('\n')[0]).toBe('status 200');
      const recs = (await f.recordsSince(before)).filter((r) => r.url.startsWith('/sse/'));
      expect(recs.map((r) => [r.url, r.authorization])).toEqual([
        [`/sse/${direct.id}`, []],
        [`/sse/${via.id}`, [f.expectedAuth]],
      ]);
    });
  }

  // HTTP/1.1 to the proxy: what HTTP/2 does with Expect is the HTTP/2 front's (README, HTTP/2 and gRPC).
  it('Expect: 100-continue: the upstream\'s 100 reaches curl, which only then sends its body', async () => {
    const upload = path.join(f.dir, 'continue.bin');
    writeFileSync(upload, randomBytes(2 * 1024 * 1024 + 5));
    const hash = createHash('sha256').update(readFileSync(upload)).digest('hex');
    const before = f.upstream.records.length;
    // curl waits up to --expect100-timeout for the 100 before sending anyway: long
    // enough that only a relayed 100 gets the body sent within --max-time.
    const r = await f.curl(bound, ['-v', '--http1.1', '--cacert', f.wirekeyCa, '-H', 'Expect: 100-continue', '--expect100-timeout', '60',
      '--data-binary', `@${upload}`, '-o', '/dev/null', '-w', '%{http_code} %{size_upload}', `https://${HOST}/upload`]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/< HTTP\/1\.1 100 Continue/);
    expect(r.stdout).toBe(`200 ${2 * 1024 * 1024 + 5}`);
    const [rec] = await f.recordsSince(before);
    expect(rec).toMatchObject({ url: '/upload', bodyLength: 2 * 1024 * 1024 + 5, bodySha256: hash, authorization: [f.expectedAuth] });
    expect(rec?.headerNames).toContain('expect');
  });

  it('Expect: 100-continue on a refused request: the refusal at once, no 100, the body never sent, the connection closed', async () => {
    const upload = path.join(f.dir, 'refused.bin');
    writeFileSync(upload, randomBytes(1024 * 1024));
    const before = f.upstream.records.length;
    const r = await f.curl(bound, ['-v', '--http1.1', '--cacert', f.wirekeyCa, '-H', 'Expect: 100-continue', '--expect100-timeout', '60',
      '-H', `Host: ${OTHER}`, '--data-binary', `@${upload}`, '-o', '/dev/null', '-w', '%{http_code} %{size_upload}', `https://${HOST}/upload`]);
    expect(r.stdout).toBe('421 0');
    expect(r.stderr).not.toMatch(/100 Continue/);
    expect(r.stderr).toMatch(/x-wirekey-error: host-mismatch/i);
    expect(r.stderr).toMatch(/connection: close/i);
    expect(await f.recordsSince(before)).toEqual([]);
  });
});
