/**
 * The kernel HTTP datapath on the real kernel: bpf/http-inject.bpf.c,
 * driven through controller/datapath/kernel-http.ts, attached to a test
 * cgroup only, against a strict plain-HTTP upstream in a test network
 * namespace that records (and hashes) exactly what reached it.
 *
 * Layout: programs attach to <top>; workload 1 is <top>/bound; processes
 * in <top>/other run under the same programs but belong to no workload.
 * Service 7 is the upstream's IPv4 and IPv6 address on port 80; port 8080
 * is not pinned.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native, bpfCall, repoRoot, type NativeObject } from '../../controller/datapath/native.js';
import { encodeAny, encodeMask, encodeU32, encodeU64, verifyContract } from '../../controller/datapath/layout.js';
import { processStartTicks } from '../../controller/identity/process-start.js';
import { cgroupId, findCgroup2Root } from '../../controller/cgroup.js';
import { KERNEL_HTTP_PROGRAMS, KernelHttp, headerLine, type KernelHttpStats } from '../../controller/datapath/kernel-http.js';
import { kernelHttpSkipReason, pushWatchSkipReason } from '../support/requirements.js';
import { createCgroup, removeCgroupTree, runInCgroup } from '../support/cgroup.js';
import { startDriven } from '../support/driven.js';
import { createTestHost, type TestHost } from '../support/netns.js';
import { run } from '../support/shell.js';
import { PlainUpstream } from '../support/plain-upstream.js';
import { prng, randomPieces, requestHeads } from '../support/http-reference.js';
import { sleep, waitFor } from '../support/wait.js';

const skip = kernelHttpSkipReason();
const objectPath = path.join(repoRoot, 'build/bpf/wirekey.bpf.o');
const WORKLOAD = 1;
const SERVICE = 7;
const EACCES = 13;

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');
const CANARY = `wk-canary-${randomBytes(16).toString('hex')}`;
const AUTH = `Bearer ${CANARY}`;
const AUTH_HASH = sha256(AUTH);

/**
 * The BPF object with the kernel HTTP programs, loaded as the agent loads
 * it (its contract checked first) for the agent `agent` (this process
 * unless said). With `bound`, workload WORKLOAD is the processes of that
 * cgroup. Closed again if anything fails.
 */
function loadObject(opts: { pushWatch: boolean; bound?: string; agent?: { pid: number; startTicks: bigint } }): NativeObject {
  const o = bpfCall(() => new (native().BpfObject)(objectPath));
  try {
    verifyContract(o);
    KernelHttp.enable(o, { pushWatch: opts.pushWatch });
    bpfCall(() => {
      o.setGlobal('agent_tgid', encodeU32(opts.agent?.pid ?? process.pid));
      o.setGlobal('agent_start_ticks', encodeU64(opts.agent?.startTicks ?? processStartTicks()));
      o.setGlobal('host_netns_cookie', encodeU64(native().netnsCookie()));
      o.load();
    });
    if (opts.bound) {
      o.map('wk_cgroup_mask').update(encodeU64(cgroupId(opts.bound) as bigint), encodeMask([WORKLOAD]));
      o.map('wk_any').update(encodeU32(0), encodeAny({ cgroup: [], exe: [WORKLOAD], uid: [WORKLOAD] }));
    }
  } catch (err) {
    o.close();
    throw err;
  }
  return o;
}

/* ---- clients ------------------------------------------------------------- */

/**
 * A raw-socket client: connects, then runs steps (send bytes, whole, one
 * byte per send() or in given pieces; send a generated body, plain or
 * chunked; read N responses; wait for a file; send urgent data). Prints
 * its local port, the errno that stopped it, and the statuses it read.
 */
const RAW_CLIENT = String.raw`
import base64, hashlib, json, os, random, socket, sys, time
spec = json.loads(sys.stdin.read())
host, port = spec['host'], spec['port']
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(spec.get('timeout', 20))
if spec.get('blocking'):
    s.settimeout(None)
if spec.get('fastopen'):
    s.setsockopt(socket.IPPROTO_TCP, 30, 1)  # TCP_FASTOPEN_CONNECT
out = {'localPort': None, 'error': None, 'errorStep': None, 'connectError': None, 'statuses': [], 'bodies': []}
try:
    s.connect((host, port))
except OSError as e:
    out['connectError'] = e.errno
    print(json.dumps(out))
    sys.exit(0)
out['localPort'] = s.getsockname()[1]
buf = b''
def response():
    global buf
    while True:
        while b'\r\n\r\n' not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError('closed')
            buf += chunk
        head, _, rest = buf.partition(b'\r\n\r\n')
        lines = head.decode('latin1').split('\r\n')
        status = int(lines[0].split(' ')[1])
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
        if status != 100:
            return status
try:
    for i, step in enumerate(spec['steps']):
        out['errorStep'] = i
        op = step['op']
        if op == 'send':
            data = base64.b64decode(step['data'])
            if step.get('byByte'):
                for i in range(len(data)):
                    s.send(data[i:i + 1])
            elif step.get('pieces'):
                at = 0
                for n in step['pieces']:
                    s.sendall(data[at:at + n])
                    at += n
                if at < len(data):
                    s.sendall(data[at:])
            else:
                s.sendall(data)
        elif op == 'body':
            data = random.Random(step['seed']).randbytes(step['size'])
            out['bodies'].append(hashlib.sha256(data).hexdigest())
            s.sendall(step.get('prefix', '').encode('latin1') + data)
        elif op == 'chunked':
            # A chunked body of generated data: chunk-size line (with the
            # extension), data, CRLF for each size, the last chunk, the
            # trailers, the final CRLF. 'whole': one sendall(); 'pieces':
            # one per size line, data and CRLF.
            rnd = random.Random(step['seed'])
            ext = step.get('ext', '').encode('latin1')
            h = hashlib.sha256()
            parts = [step.get('prefix', '').encode('latin1')]
            for n in step['sizes']:
                data = rnd.randbytes(n)
                h.update(data)
                parts += [b'%x%s\r\n' % (n, ext), data, b'\r\n']
            parts.append(b'0%s\r\n%s\r\n' % (ext, step.get('trailers', '').encode('latin1')))
            out['bodies'].append(h.hexdigest())
            if step.get('mode') == 'pieces':
                for p in parts:
                    if p:
                        s.sendall(p)
            else:
                s.sendall(b''.join(parts))
        elif op == 'recv':
            # A blocking recv() on a socket in a sockmap can fail with EAGAIN
            # when a write-space wake-up (the send buffer draining after a
            # large upload) arrives before the response: the kernel's
            # tcp_bpf_recvmsg waits once and gives up. Reads wait in poll().
            s.settimeout(spec.get('timeout', 20))
            for _ in range(step['count']):
                out['statuses'].append(response())
            if spec.get('blocking'):
                s.settimeout(None)
        elif op == 'finish':
            # Half-close, then read whatever comes back until the upstream closes.
            s.shutdown(socket.SHUT_WR)
            s.settimeout(spec.get('timeout', 20))
            while s.recv(65536):
                pass
        elif op == 'waitFile':
            while not os.path.exists(step['path']):
                time.sleep(0.01)
        elif op == 'oob':
            s.send(base64.b64decode(step['data']), socket.MSG_OOB)
        elif op == 'fastopen':
            # MSG_FASTOPEN on a connected socket: the kernel may fail the
            # write (EISCONN) after the program passed it. Its errno is
            # recorded, and the steps go on.
            try:
                s.sendmsg([base64.b64decode(step['data'])], [], socket.MSG_FASTOPEN)
                out['fastopen'] = 0
            except OSError as e:
                out['fastopen'] = e.errno
        elif op == 'shutWr':
            s.shutdown(socket.SHUT_WR)
except OSError as e:
    out['error'] = e.errno
except EOFError as e:
    out['error'] = str(e)
else:
    out['errorStep'] = None
s.close()
print(json.dumps(out))
`;

type Step =
  | { op: 'send'; data: Buffer | string; byByte?: boolean; pieces?: number[] }
  | { op: 'body'; size: number; seed: number; prefix?: string }
  | { op: 'chunked'; sizes: number[]; seed: number; prefix?: string; ext?: string; trailers?: string; mode?: 'whole' | 'pieces' }
  | { op: 'recv'; count: number }
  | { op: 'finish' }
  | { op: 'waitFile'; path: string }
  | { op: 'oob'; data: string }
  | { op: 'fastopen'; data: string }
  | { op: 'shutWr' };

interface RawResult {
  localPort: number;
  error: number | string | null;
  /** The index of the step that failed. */
  errorStep: number | null;
  connectError: number | null;
  statuses: number[];
  bodies: string[];
  /** The errno of the 'fastopen' step's write (0: it succeeded). */
  fastopen?: number;
}

async function raw(
  cg: string | null,
  host: string,
  port: number,
  steps: Step[],
  opts: { blocking?: boolean; fastopen?: boolean; memcg?: string; timeoutSeconds?: number } = {},
): Promise<RawResult> {
  const spec = JSON.stringify({
    host,
    port,
    blocking: opts.blocking ?? false,
    fastopen: opts.fastopen ?? false,
    ...(opts.timeoutSeconds ? { timeout: opts.timeoutSeconds } : {}),
    steps: steps.map((s) => ('data' in s ? { ...s, data: Buffer.from(s.data).toString('base64') } : s)),
  });
  // With `memcg`, the client also joins that cgroup v1 memory cgroup (its sockets are charged there).
  const [cmd, args] = opts.memcg
    ? ['sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', opts.memcg, 'python3', '-c', RAW_CLIENT]]
    : ['python3', ['-c', RAW_CLIENT]];
  const r = cg ? await runInCgroup(cg, cmd, args, { input: spec, timeoutMs: 60_000 }) : await run(cmd, args, { input: spec, timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`raw client failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as RawResult;
}

/** This process's cgroup v1 memory cgroup, when the v1 memory controller (with kmem.tcp) is mounted; else null. */
function v1MemoryCgroup(): string | null {
  const line = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => /^\d+:memory:/.test(l));
  if (!line) return null;
  const dir = path.join('/sys/fs/cgroup/memory', line.slice(line.indexOf(':memory:') + ':memory:'.length));
  return existsSync(path.join(dir, 'memory.kmem.tcp.limit_in_bytes')) ? dir : null;
}

const get = (target: string, extra = '') => `GET ${target} HTTP/1.1\r\nHost: upstream\r\n${extra}\r\n`;
const post = (target: string, body: string | Buffer, extra = '') =>
  Buffer.concat([Buffer.from(`POST ${target} HTTP/1.1\r\nHost: upstream\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n`), Buffer.from(body)]);

interface ChunkedOpts {
  /** After every chunk-size, the last chunk's too: ";name=value". */
  ext?: string;
  /** Trailer lines, each with its CRLF. */
  trailers?: string;
  /** Header lines added to the head. */
  extra?: string;
}
/** A chunked body: each chunk's size line, data and CRLF; the last chunk; the trailers; the final CRLF. */
const chunkedBody = (chunks: (string | Buffer)[], { ext = '', trailers = '' }: ChunkedOpts = {}) =>
  Buffer.concat([
    ...chunks.flatMap((c) => [Buffer.from(`${Buffer.byteLength(c).toString(16)}${ext}\r\n`), Buffer.from(c), Buffer.from('\r\n')]),
    Buffer.from(`0${ext}\r\n${trailers}\r\n`),
  ]);
const chunkedHead = (target: string, extra = '') => `POST ${target} HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n${extra}\r\n`;
const chunkedPost = (target: string, chunks: (string | Buffer)[], opts: ChunkedOpts = {}) =>
  Buffer.concat([Buffer.from(chunkedHead(target, opts.extra)), chunkedBody(chunks, opts)]);
/** SHA-256 of what a chunked body decodes to. */
const decodedHash = (chunks: (string | Buffer)[]) => sha256(Buffer.concat(chunks.map((c) => Buffer.from(c))));

/**
 * Whether `received` is exactly the first P bytes of `stream`, for some P,
 * with `line` after the request line of every head complete in them: the
 * header where a request starts, and nowhere else.
 */
function isInjectedPrefix(stream: Buffer, received: { bytes: number; sha256: string }, line: Buffer): boolean {
  const heads = requestHeads(stream);
  for (let P = 0; P <= stream.length; P++) {
    const at = heads.filter((h) => h.headEnd <= P).map((h) => h.rlEnd);
    if (P + at.length * line.length !== received.bytes) continue;
    const parts: Buffer[] = [];
    let from = 0;
    for (const rl of at) {
      parts.push(stream.subarray(from, rl), line);
      from = rl;
    }
    parts.push(stream.subarray(from, P));
    if (sha256(Buffer.concat(parts)) === received.sha256) return true;
  }
  return false;
}

function delta(before: KernelHttpStats, after: KernelHttpStats): Partial<Record<keyof KernelHttpStats, number>> {
  const out: Partial<Record<keyof KernelHttpStats, number>> = {};
  for (const k of Object.keys(after) as (keyof KernelHttpStats)[]) {
    const d = Number(after[k] - before[k]);
    if (d) out[k] = d;
  }
  return out;
}

describe.skipIf(skip)(`kernel HTTP datapath (sk_msg)${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let cgRoot: string;
  let top: string;
  let bound: string;
  let other: string;
  let host: TestHost;
  let upstream: PlainUpstream;
  let obj: NativeObject;
  let kh: KernelHttp;
  let dir: string;
  let v4: string;
  let v6: string;
  /** Why the failed-push watch (fexit) is not loaded: the trampoline probe failed. Null when it is. */
  const pushWatchRefused: string | null = pushWatchSkipReason() ?? null;

  beforeAll(async () => {
    cgRoot = findCgroup2Root();
    top = createCgroup(cgRoot, `wirekey-test-http-${randomBytes(3).toString('hex')}`);
    bound = createCgroup(cgRoot, path.relative(cgRoot, path.join(top, 'bound')));
    other = createCgroup(cgRoot, path.relative(cgRoot, path.join(top, 'other')));
    dir = mkdtempSync(path.join(tmpdir(), 'wirekey-http-'));
    host = await createTestHost('hi');
    v4 = host.ipv4;
    v6 = host.ipv6;
    upstream = await PlainUpstream.start(host);

    // With the failed-push watch where the probe finds BPF trampolines, as the
    // agent does; any load failure here fails the suite. Workload 1:
    // processes in <top>/bound, any executable, any user.
    obj = loadObject({ pushWatch: pushWatchRefused === null, bound });

    kh = KernelHttp.attach(obj, top);
    kh.setDestinations([
      { address: v4, port: 80, serviceId: SERVICE },
      { address: v6, port: 80, serviceId: SERVICE },
    ]);
    kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
  });

  afterAll(async () => {
    // Every step runs even when an earlier one fails: nothing may outlive the suite.
    const steps: (() => unknown)[] = [
      () => kh?.close(),
      () => obj?.close(),
      () => upstream?.stop(),
      () => host?.destroy(),
      () => top && removeCgroupTree(cgRoot, top),
      () => dir && rmSync(dir, { recursive: true, force: true }),
    ];
    const errors: unknown[] = [];
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length) throw errors[0];
  });

  it('is left out of a load unless enabled, so the agent loads exactly what it did before', () => {
    const o = new (native().BpfObject)(objectPath);
    try {
      o.setGlobal('agent_tgid', encodeU32(process.pid));
      o.setGlobal('agent_start_ticks', encodeU64(processStartTicks()));
      o.load();
      const loaded = o.programs().filter((p) => p.id).map((p) => p.name);
      for (const p of KERNEL_HTTP_PROGRAMS) expect(loaded).not.toContain(p);
      expect(() => KernelHttp.attach(o, top)).toThrow(/call KernelHttp.enable\(\) before load/);
    } finally {
      o.close();
    }
  });

  it('loads on this kernel and attaches only to the test cgroup', async () => {
    const r = await run('bpftool', ['-j', 'cgroup', 'show', top]);
    const names = (JSON.parse(r.stdout) as { name: string }[]).map((p) => p.name).sort();
    expect(names).toEqual(['wk_http_connect4', 'wk_http_connect6', 'wk_http_sockops']);
    const rootProgs = (await run('bpftool', ['-j', 'cgroup', 'show', cgRoot])).stdout.trim();
    expect(rootProgs ? (JSON.parse(rootProgs) as { name: string }[]).map((p) => p.name) : []).not.toContain('wk_http_connect4');
  });

  it('curl: each request carries the header once, on the workload\'s own connection', async () => {
    const urls = [1, 2, 3].flatMap((i) => ['-o', '/dev/null', `http://${v4}/curl/${i}`]);
    const r = await runInCgroup(bound, 'curl', ['-sS', '--fail', '-w', '%{local_port}\\n', ...urls]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const ports = r.stdout.trim().split('\n').map(Number);
    expect(new Set(ports).size).toBe(1); // one keep-alive connection
    const recs = await upstream.from(ports[0] as number, 3);
    expect(recs.map((x) => x.target)).toEqual(['/curl/1', '/curl/2', '/curl/3']);
    for (const rec of recs) {
      expect(rec.authorization).toEqual([AUTH_HASH]);
      expect(rec.headerNames.filter((h) => h === 'authorization')).toHaveLength(1);
      // Injected right after the request line.
      expect(rec.headerNames[0]).toBe('authorization');
      // The workload's own connection: its address and port, no proxy hop.
      expect(rec.remoteAddress).toBe(`::ffff:${v4.replace(/\.2$/, '.1')}`);
      expect(rec.localPort).toBe(80);
    }
  });

  it('curl over IPv6 (connect6) gets the header too', async () => {
    const r = await runInCgroup(bound, 'curl', ['-sS', '--fail', '-g', '-o', '/dev/null', '-w', '%{local_port}', `http://[${v6}]/curl6`]);
    expect(r.code).toBe(0);
    const [rec] = await upstream.from(Number(r.stdout), 1);
    expect(rec?.target).toBe('/curl6');
    expect(rec?.authorization).toEqual([AUTH_HASH]);
  });

  it('a WebSocket upgrade is injected once; the connection then passes through: later requests carry no header', async () => {
    const before = kh.stats();
    const upgrade = get('/ws', 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n');
    // The strict upstream answers it as a plain GET (no 101): whatever comes next on the connection goes out as written.
    const r = await raw(bound, v4, 80, [{ op: 'send', data: upgrade + get('/pipelined') }, { op: 'recv', count: 2 },
      { op: 'send', data: get('/after') }, { op: 'recv', count: 1 }]);
    expect(r.error).toBeNull();
    expect(r.statuses).toEqual([200, 200, 200]);
    const recs = await upstream.from(r.localPort, 3);
    expect(recs.map((x) => [x.target, x.authorization])).toEqual([['/ws', [AUTH_HASH]], ['/pipelined', []], ['/after', []]]);
    const d = delta(before, kh.stats());
    expect(d).toMatchObject({ injected: 1, passThrough: 1 });
  });

  it('an IPv4-mapped IPv6 connect (::ffff:a.b.c.d) to a pinned IPv4 address gets the header too', async () => {
    const r = await raw(bound, `::ffff:${v4}`, 80, [{ op: 'send', data: get('/mapped') }, { op: 'recv', count: 1 }]);
    expect(r.error).toBeNull();
    const [rec] = await upstream.from(r.localPort, 1);
    expect(rec?.target).toBe('/mapped');
    expect(rec?.authorization).toEqual([AUTH_HASH]);
  });

  it('Python http.client: several requests on one keep-alive connection, each with the header once', async () => {
    const script = `
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], 80, timeout=20)
ports, statuses = [], []
for i in range(5):
    if i == 2:
        c.request('POST', '/py/%d' % i, body=b'p' * 3000, headers={'Content-Type': 'application/octet-stream'})
    else:
        c.request('GET', '/py/%d' % i)
    r = c.getresponse()
    r.read()
    statuses.append(r.status)
    ports.append(c.sock.getsockname()[1])
print(json.dumps({'ports': ports, 'statuses': statuses}))
`;
    const r = await runInCgroup(bound, 'python3', ['-c', script, v4]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { ports: number[]; statuses: number[] };
    expect(out.statuses).toEqual([200, 200, 200, 200, 200]);
    expect(new Set(out.ports).size).toBe(1);
    const recs = await upstream.from(out.ports[0] as number, 5);
    expect(recs).toHaveLength(5);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    expect(recs[2]?.bodySha256).toBe(sha256(Buffer.alloc(3000, 'p')));
  });

  it('Node fetch: each request carries the header once', async () => {
    const script = `
const out = [];
for (let i = 0; i < 3; i++) {
  const r = await fetch(process.argv[1] + '/fetch/' + i, i === 1 ? { method: 'POST', body: 'hello '.repeat(200) } : {});
  out.push(r.status);
  await r.text();
}
console.log(JSON.stringify(out));
`;
    const before = upstream.requests.length;
    const r = await runInCgroup(bound, process.execPath, ['--input-type=module', '-e', script, `http://${v4}`]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([200, 200, 200]);
    await waitFor(() => upstream.requests.slice(before).filter((x) => x.target.startsWith('/fetch/')).length >= 3, 'three fetches');
    const recs = upstream.requests.slice(before).filter((x) => x.target.startsWith('/fetch/'));
    expect(recs.map((x) => x.target)).toEqual(['/fetch/0', '/fetch/1', '/fetch/2']);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    expect(recs[1]?.bodySha256).toBe(sha256('hello '.repeat(200)));
  });

  it('every allowed method (GET HEAD POST PUT PATCH DELETE OPTIONS, exactly so spelled) gets the header once', async () => {
    const methods = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
    const burst = methods.map((m) => `${m} /method/${m} HTTP/1.1\r\nHost: upstream\r\nContent-Length: 0\r\n\r\n`).join('') +
      'OPTIONS * HTTP/1.1\r\nHost: upstream\r\n\r\n';
    const r = await raw(bound, v4, 80, [{ op: 'send', data: burst }, { op: 'recv', count: methods.length + 1 }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, methods.length + 1);
    expect(recs.map((x) => x.method)).toEqual([...methods, 'OPTIONS']);
    expect(recs.at(-1)?.target).toBe('*');
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
  });

  it('pipelined requests in one write each get the header exactly once', async () => {
    const body = randomBytes(5000);
    const burst = Buffer.concat([Buffer.from(get('/pipe/1')), post('/pipe/2', body), Buffer.from(get('/pipe/3')), post('/pipe/4', ''), Buffer.from(get('/pipe/5'))]);
    const r = await raw(bound, v4, 80, [{ op: 'send', data: burst }, { op: 'recv', count: 5 }]);
    expect(r.error).toBeNull();
    expect(r.statuses).toEqual([200, 200, 200, 200, 200]);
    const recs = await upstream.from(r.localPort, 5);
    expect(recs.map((x) => x.target)).toEqual(['/pipe/1', '/pipe/2', '/pipe/3', '/pipe/4', '/pipe/5']);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    expect(recs[1]?.bodySha256).toBe(sha256(body));
    expect(recs[3]?.bodyLength).toBe(0);
  });

  it('single-write requests of every shape around the one-piece rebuild (sizes about 512 bytes, long request lines, no header lines) arrive byte for byte with the line after the request line', async () => {
    const line = headerLine({ name: 'Authorization', value: AUTH }).line;
    const withLine = (req: Buffer) => {
      const rl = req.indexOf('\r\n') + 2;
      return Buffer.concat([req.subarray(0, rl), line, req.subarray(rl)]);
    };
    // A POST padded to exactly `size` bytes, head and body in one write.
    const sized = (size: number, target: string) => {
      const bare = post(target, '').length;
      let body = 'b'.repeat(Math.max(0, size - bare));
      while (post(target, body).length > size) body = body.slice(1);
      return post(target, body);
    };
    const reqs = [
      Buffer.from(get('/s')),
      ...[300, 504, 511, 512, 513, 520, 1500].map((n) => sized(n, `/size/${n}`)),
      Buffer.from(get(`/long/${'t'.repeat(480)}`)),
      Buffer.from(get(`/longer/${'t'.repeat(600)}`)),
    ];
    const r = await raw(bound, v4, 80, [...reqs.map((data) => ({ op: 'send' as const, data })), { op: 'recv', count: reqs.length }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, reqs.length);
    expect(recs.map((x) => x.rawSha256)).toEqual(reqs.map((q) => sha256(withLine(q))));
    // No header line at all: what follows the request line is its CRLF only.
    const bare = Buffer.from('GET /bare HTTP/1.0\r\n\r\n');
    const b = await raw(bound, v4, 80, [{ op: 'send', data: bare }, { op: 'recv', count: 1 }]);
    expect(b.error).toBeNull();
    expect((await upstream.from(b.localPort, 1))[0]?.rawSha256).toBe(sha256(withLine(bare)));
  });

  it('a request written one byte at a time gets the header once', async () => {
    const before = kh.stats();
    const req = post('/bytewise', 'body sent byte by byte too', 'X-Slow: yes\r\n');
    const r = await raw(bound, v4, 80, [{ op: 'send', data: req, byByte: true }, { op: 'send', data: get('/after-bytewise') }, { op: 'recv', count: 2 }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, 2);
    expect(recs.map((x) => x.target)).toEqual(['/bytewise', '/after-bytewise']);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    expect(recs[0]?.bodySha256).toBe(sha256('body sent byte by byte too'));
    expect(delta(before, kh.stats()).corked).toBeGreaterThan(10);
  });

  it('heads up to 8 KiB are injected; a longer head is refused and nothing of it is sent', async () => {
    const padTo = (total: number, target: string) => {
      const fixed = get(target, 'X-Pad: \r\n');
      return get(target, `X-Pad: ${'p'.repeat(total - fixed.length)}\r\n`);
    };
    const exact = padTo(8192, '/near-limit');
    expect(exact.length).toBe(8192);
    const ok = await raw(bound, v4, 80, [{ op: 'send', data: exact }, { op: 'send', data: padTo(8000, '/near-limit-2'), byByte: false }, { op: 'recv', count: 2 }]);
    expect(ok.error).toBeNull();
    const recs = await upstream.from(ok.localPort, 2);
    expect(recs.map((x) => x.target)).toEqual(['/near-limit', '/near-limit-2']);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);

    const before = kh.stats();
    const big = await raw(bound, v4, 80, [{ op: 'send', data: padTo(8193, '/too-big') }, { op: 'recv', count: 1 }]);
    expect(big.error).toBe(EACCES);
    expect(delta(before, kh.stats())).toMatchObject({ refusedHeadSize: 1 });
    const closed = await upstream.closedFor(big.localPort);
    expect(closed.bytes).toBe(0);
  });

  it('a body that contains a request line is never taken for one', async () => {
    const evil = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';
    const body = `${evil}${evil}tail`;
    const r = await raw(bound, v4, 80, [{ op: 'send', data: Buffer.concat([post('/carrier', body), Buffer.from(get('/next'))]) }, { op: 'recv', count: 2 }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, 2);
    expect(recs.map((x) => x.target)).toEqual(['/carrier', '/next']);
    expect(recs[0]?.bodySha256).toBe(sha256(body));
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);

    // The same, with the body written in its own small writes.
    const r2 = await raw(bound, v4, 80, [
      { op: 'send', data: post('/carrier2', body).subarray(0, -body.length) },
      { op: 'send', data: evil, byByte: true },
      { op: 'send', data: `${evil}tail` },
      { op: 'send', data: get('/next2') },
      { op: 'recv', count: 2 },
    ]);
    expect(r2.error).toBeNull();
    const recs2 = await upstream.from(r2.localPort, 2);
    expect(recs2.map((x) => x.target)).toEqual(['/carrier2', '/next2']);
    expect(recs2[0]?.bodySha256).toBe(sha256(body));
    for (const rec of recs2) expect(rec.authorization).toEqual([AUTH_HASH]);
  });

  /* ---- chunked request bodies ------------------------------------------- */

  const LINE_LEN = () => headerLine({ name: 'Authorization', value: AUTH }).line.length;

  it('a chunked upload arrives intact (decoded body checked by hash) with the header once, several chunks in one write', async () => {
    const chunks = ['hello', ' ', randomBytes(300), 'world', randomBytes(4000)];
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [{ op: 'send', data: chunkedPost('/chunked/one-write', chunks) }, { op: 'recv', count: 1 }, { op: 'send', data: get('/chunked/after') }, { op: 'recv', count: 1 }]);
    expect(r.error).toBeNull();
    expect(r.statuses).toEqual([200, 200]);
    const recs = await upstream.from(r.localPort, 2);
    expect(recs.map((x) => x.target)).toEqual(['/chunked/one-write', '/chunked/after']);
    for (const rec of recs) {
      expect(rec.authorization).toEqual([AUTH_HASH]);
      expect(rec.headerNames.filter((h) => h === 'authorization')).toHaveLength(1);
    }
    expect(recs[0]).toMatchObject({ chunked: true, chunks: 5, trailerNames: [], bodyLength: 4311, bodySha256: decodedHash(chunks) });
    const d = delta(before, kh.stats());
    expect(d).toMatchObject({ injected: 2 });
    expect(Object.keys(d).filter((k) => k.startsWith('refused'))).toEqual([]);
    const closed = await upstream.closedFor(r.localPort);
    expect(closed.pending).toBeNull();
    expect(closed.leftover).toBe(0);
  });

  it('many small chunks in one 16 KiB write: framing falls across the 4 KiB scan windows at every offset', async () => {
    const rnd = prng(7);
    const chunks = Array.from({ length: 1300 }, () => randomBytes(1 + Math.floor(rnd() * 19)));
    const req = chunkedPost('/chunked/many', chunks, { ext: ';i', trailers: 'X-N: 1300\r\n' });
    expect(req.length).toBeGreaterThan(16384);
    const r = await raw(bound, v4, 80, [{ op: 'send', data: req }, { op: 'recv', count: 1 }, { op: 'send', data: get('/chunked/many-after') }, { op: 'recv', count: 1 }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, 2);
    expect(recs.map((x) => x.target)).toEqual(['/chunked/many', '/chunked/many-after']);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    expect(recs[0]).toMatchObject({ chunked: true, chunks: 1300, trailerNames: ['x-n'], bodySha256: decodedHash(chunks) });
  });

  it('chunked: head, framing and data written one byte per write, then a request on the same connection', async () => {
    const chunks = ['abc', 'x'.repeat(17), '\r\n', '0'];
    const req = chunkedPost('/chunked/bytewise', chunks, { ext: ';a=b', trailers: 'X-Sum: 1\r\n' });
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [{ op: 'send', data: req, byByte: true }, { op: 'send', data: get('/chunked/bytewise-after'), byByte: true }, { op: 'recv', count: 2 }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, 2);
    expect(recs.map((x) => x.target)).toEqual(['/chunked/bytewise', '/chunked/bytewise-after']);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    expect(recs[0]).toMatchObject({ chunked: true, chunks: 4, trailerNames: ['x-sum'], bodySha256: decodedHash(chunks) });
    // The heads are corked byte by byte; the chunked body never is.
    const d = delta(before, kh.stats());
    expect(d.injected).toBe(2);
    expect(d.corked).toBe(Buffer.byteLength(chunkedHead('/chunked/bytewise')) - 1 + Buffer.byteLength(get('/chunked/bytewise-after')) - 1);
  });

  it('chunk extensions and trailers pass through untouched, and accepted spellings of the header', async () => {
    const chunks = ['first', randomBytes(1000), 'last'];
    const reqs = [
      chunkedPost('/chunked/ext', chunks, { ext: ';name=value;flag', trailers: 'X-Checksum: abc\r\nX-Other:\t1 2 \r\n' }),
      Buffer.concat([Buffer.from('POST /chunked/spelling HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding:   CHUNKED \t\r\n\r\n'), chunkedBody(chunks)]),
      Buffer.concat([Buffer.from('POST /chunked/spelling2 HTTP/1.1\r\nHost: upstream\r\ntransfer-encoding: Chunked\r\nX-After: y\r\n\r\n'), chunkedBody(chunks)]),
    ];
    const r = await raw(bound, v4, 80, [{ op: 'send', data: Buffer.concat(reqs) }, { op: 'recv', count: 3 }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, 3);
    expect(recs.map((x) => x.target)).toEqual(['/chunked/ext', '/chunked/spelling', '/chunked/spelling2']);
    for (const rec of recs) {
      expect(rec.authorization).toEqual([AUTH_HASH]);
      expect(rec).toMatchObject({ chunked: true, chunks: 3, bodySha256: decodedHash(chunks) });
    }
    expect(recs[0]?.trailerNames).toEqual(['x-checksum', 'x-other']);
    // Byte for byte what the client sent, plus the injected line after each request line.
    const line = headerLine({ name: 'Authorization', value: AUTH }).line;
    const withLine = (req: Buffer) => {
      const rl = req.indexOf('\r\n') + 2;
      return Buffer.concat([req.subarray(0, rl), line, req.subarray(rl)]);
    };
    expect(recs.map((x) => x.rawSha256)).toEqual(reqs.map((q) => sha256(withLine(q))));
  });

  it('chunk data that looks like framing and like a request is never taken for either', async () => {
    const evil = '\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
    const chunks = [evil, `0\r\n\r\n${evil}`, 'tail'];
    const cases: Step[][] = [
      [{ op: 'send', data: Buffer.concat([chunkedPost('/chunked/evil', chunks), Buffer.from(get('/chunked/evil-next'))]) }],
      // The data written byte by byte, framing in its own writes.
      [
        { op: 'send', data: chunkedHead('/chunked/evil') },
        ...chunks.flatMap((c): Step[] => [
          { op: 'send', data: `${Buffer.byteLength(c).toString(16)}\r\n` },
          { op: 'send', data: c, byByte: true },
          { op: 'send', data: '\r\n' },
        ]),
        { op: 'send', data: '0\r\n\r\n' },
        { op: 'send', data: get('/chunked/evil-next') },
      ],
    ];
    for (const steps of cases) {
      const r = await raw(bound, v4, 80, [...steps, { op: 'recv', count: 2 }]);
      expect(r.error).toBeNull();
      const recs = await upstream.from(r.localPort, 2);
      expect(recs.map((x) => x.target)).toEqual(['/chunked/evil', '/chunked/evil-next']);
      for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
      expect(recs[0]?.bodySha256).toBe(decodedHash(chunks));
      const closed = await upstream.closedFor(r.localPort);
      expect(closed.pending).toBeNull();
    }
    expect(upstream.requests.filter((x) => x.target === '/smuggled')).toEqual([]);
  });

  it('pipelined requests around chunked ones, in one write: each gets the header once', async () => {
    // Small enough for the send buffer: a head queued behind a large body
    // in the same write is refused (refusedBusy; see "pipelining behind a large body").
    const a = ['one', randomBytes(1500)];
    const b = [randomBytes(2000), 'z'];
    const burst = Buffer.concat([
      chunkedPost('/cpipe/1', a, { trailers: 'X-T: 1\r\n' }),
      Buffer.from(get('/cpipe/2')),
      post('/cpipe/3', 'plain body'),
      chunkedPost('/cpipe/4', []),
      chunkedPost('/cpipe/5', b, { ext: ';e' }),
      Buffer.from(get('/cpipe/6')),
    ]);
    const r = await raw(bound, v4, 80, [{ op: 'send', data: burst }, { op: 'recv', count: 6 }]);
    expect(r.error).toBeNull();
    const recs = await upstream.from(r.localPort, 6);
    expect(recs.map((x) => x.target)).toEqual(['/cpipe/1', '/cpipe/2', '/cpipe/3', '/cpipe/4', '/cpipe/5', '/cpipe/6']);
    for (const rec of recs) {
      expect(rec.authorization).toEqual([AUTH_HASH]);
      expect(rec.headerNames.filter((h) => h === 'authorization')).toHaveLength(1);
    }
    expect(recs[0]).toMatchObject({ chunked: true, bodySha256: decodedHash(a), trailerNames: ['x-t'] });
    expect(recs[2]).toMatchObject({ chunked: false, bodySha256: sha256('plain body') });
    expect(recs[3]).toMatchObject({ chunked: true, chunks: 0, bodyLength: 0 });
    expect(recs[4]).toMatchObject({ chunked: true, bodySha256: decodedHash(b) });
  });

  it('a stream of chunked and other requests cut at random places: every request arrives whole with its header once', async () => {
    for (const seed of [1, 2, 3, 4, 5, 6, 7, 8, 9]) {
      const rnd = prng(seed);
      const reqs: { target: string; bytes: Buffer; body: string; chunked: boolean }[] = [];
      for (let i = 0; i < 12; i++) {
        const target = `/rand/${seed}/${i}`;
        const kind = Math.floor(rnd() * 3);
        if (kind === 0) {
          const chunks = Array.from({ length: Math.floor(rnd() * 6) }, () => randomBytes(1 + Math.floor(rnd() * 300)));
          const ext = rnd() < 0.3 ? ';x=1' : '';
          const trailers = rnd() < 0.3 ? 'X-T: a\r\nX-U: b\r\n' : '';
          reqs.push({ target, bytes: chunkedPost(target, chunks, { ext, trailers }), body: decodedHash(chunks), chunked: true });
        } else if (kind === 1) {
          const body = randomBytes(Math.floor(rnd() * 500));
          reqs.push({ target, bytes: post(target, body), body: sha256(body), chunked: false });
        } else {
          reqs.push({ target, bytes: Buffer.from(get(target)), body: sha256(''), chunked: false });
        }
      }
      const stream = Buffer.concat(reqs.map((q) => q.bytes));
      // Tiny writes, small ones, and writes longer than a 4 KiB scan window.
      const pieces = randomPieces(stream.length, [7, 64, 6000][seed % 3] as number, rnd);
      const r = await raw(bound, v4, 80, [{ op: 'send', data: stream, pieces }, { op: 'recv', count: reqs.length }]);
      expect({ seed, error: r.error }).toEqual({ seed, error: null });
      const recs = await upstream.from(r.localPort, reqs.length);
      expect(recs.map((x) => x.target)).toEqual(reqs.map((q) => q.target));
      recs.forEach((rec, i) => {
        expect(rec.authorization).toEqual([AUTH_HASH]);
        expect(rec.bodySha256).toBe(reqs[i]?.body);
        expect(rec.chunked).toBe(reqs[i]?.chunked);
      });
      const closed = await upstream.closedFor(r.localPort);
      expect(closed.bytes).toBe(stream.length + reqs.length * LINE_LEN());
    }
  });

  it('one byte changed anywhere in a stream of chunked and other requests, cut at random: the upstream gets a prefix of it with the header after request lines only, and never malformed framing', async () => {
    const odd = Buffer.from('\r\n0aF;:= \t"G\x00\x7f-x', 'latin1');
    const line = headerLine({ name: 'Authorization', value: AUTH }).line;
    // The check itself: the line after the request line passes, the line in the body does not.
    const probe = chunkedPost('/probe', ['abc']);
    const withLineAt = (pos: number) => {
      const b = Buffer.concat([probe.subarray(0, pos), line, probe.subarray(pos)]);
      return { bytes: b.length, sha256: sha256(b) };
    };
    const probeStream = Buffer.concat([probe, Buffer.from(get('/probe2'))]);
    expect(isInjectedPrefix(probeStream, withLineAt(probe.indexOf('\r\n') + 2), line)).toBe(true);
    expect(isInjectedPrefix(probeStream, withLineAt(probe.indexOf('abc')), line)).toBe(false);
    expect(isInjectedPrefix(probeStream, withLineAt(probe.length), line)).toBe(false);
    const outcomes = { refused: 0, through: 0 };
    for (let seed = 100; seed < 140; seed++) {
      const rnd = prng(seed);
      const stream = Buffer.concat([
        chunkedPost(`/fuzz/${seed}/0`, [randomBytes(40), 'abc', 'x'.repeat(17)], { ext: ';k=v', trailers: 'X-T: 1\r\n' }),
        Buffer.from(get(`/fuzz/${seed}/1`)),
        chunkedPost(`/fuzz/${seed}/2`, ['y'.repeat(30)]),
        post(`/fuzz/${seed}/3`, 'body'),
        Buffer.from(get(`/fuzz/${seed}/4`)),
      ]);
      stream[Math.floor(rnd() * stream.length)] = odd[Math.floor(rnd() * odd.length)] as number;
      const pieces = randomPieces(stream.length, 24, rnd);
      const r = await raw(bound, v4, 80, [{ op: 'send', data: stream, pieces }, { op: 'finish' }]);
      expect({ seed, error: r.error === null || r.error === EACCES }).toEqual({ seed, error: true });
      outcomes[r.error === null ? 'through' : 'refused']++;
      const closed = await upstream.closedFor(r.localPort);
      expect({ seed, errors: upstream.errors.filter((e) => e.conn === closed.conn) }).toEqual({ seed, errors: [] });
      for (const rec of upstream.byPort(r.localPort)) {
        expect(rec.authorization).toEqual([AUTH_HASH]);
        expect(rec.headerNames[0]).toBe('authorization');
      }
      expect({ seed, prefix: isInjectedPrefix(stream, closed, line) }).toEqual({ seed, prefix: true });
    }
    // Both outcomes were exercised.
    expect(outcomes.refused).toBeGreaterThan(3);
    expect(outcomes.through).toBeGreaterThan(3);
  });

  it.each([
    ['a non-blocking', false],
    ['a blocking', true],
  ] as const)('a large chunked upload (6 MiB, big chunks, extensions, trailers) from %s writer arrives intact, and the connection stays in step', async (_kind, blocking) => {
    const sizes = [1 << 20, 2 * (1 << 20) + 3, 65536, 1, 3 * (1 << 20) - 7];
    const total = sizes.reduce((a, b) => a + b, 0);
    for (const mode of ['pieces', 'whole'] as const) {
      const r = await raw(
        bound,
        v4,
        80,
        [
          { op: 'chunked', sizes, seed: 11, prefix: chunkedHead(`/chunked/large-${mode}`), ext: ';part=x', trailers: 'X-Digest: y\r\n', mode },
          { op: 'recv', count: 1 },
          { op: 'send', data: get('/chunked/after-large') },
          { op: 'recv', count: 1 },
        ],
        { blocking },
      );
      expect({ error: r.error, step: r.errorStep }).toEqual({ error: null, step: null });
      const recs = await upstream.from(r.localPort, 2);
      expect(recs.map((x) => x.target)).toEqual([`/chunked/large-${mode}`, '/chunked/after-large']);
      expect(recs[0]).toMatchObject({ chunked: true, chunks: sizes.length, bodyLength: total, bodySha256: r.bodies[0], trailerNames: ['x-digest'] });
      for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    }
  });

  it.each<[string, string, number?]>([
    ['a non-hex chunk-size', '5x\r\nhello\r\n0\r\n\r\n'],
    ['an empty chunk-size line', '\r\nhello\r\n0\r\n\r\n'],
    ['a "0x" chunk-size', '0x5\r\nhello\r\n0\r\n\r\n'],
    ['a signed chunk-size', '+5\r\nhello\r\n0\r\n\r\n'],
    ['whitespace before the chunk-size', ' 5\r\nhello\r\n0\r\n\r\n'],
    ['whitespace after the chunk-size', '5 \r\nhello\r\n0\r\n\r\n'],
    ['16 hex digits', '0000000000000005\r\nhello\r\n0\r\n\r\n'],
    ['a bare LF after the chunk-size', '5\nhello\r\n0\r\n\r\n'],
    ['a bare CR after the chunk-size', '5\rhello\r\n0\r\n\r\n'],
    ['no CRLF after the data', '5\r\nhelloX\r\n0\r\n\r\n'],
    ['a bare LF after the data', '5\r\nhello\n0\r\n\r\n'],
    ['data longer than its size', '3\r\nhello\r\n0\r\n\r\n'],
    ['a control byte in an extension', '5;a\u0001b\r\nhello\r\n0\r\n\r\n'],
    ['a bare LF in an extension', '5;a\nb\r\nhello\r\n0\r\n\r\n'],
    ['a quoted extension value', '5;a="b"\r\nhello\r\n0\r\n\r\n'],
    ['an extension over 1 KiB', `5;${'e'.repeat(1100)}\r\nhello\r\n0\r\n\r\n`],
    ['an obs-folded trailer', '0\r\nX-A: 1\r\n 2\r\n\r\n'],
    ['a trailer without a colon', '0\r\nX-A\r\n\r\n'],
    ['a trailer with a bare LF', '0\r\nX-A: 1\n\r\n'],
    ['a NUL in a trailer', '0\r\nX-A: 1\u00002\r\n\r\n'],
    ['a space before a trailer colon', '0\r\nX-A : 1\r\n\r\n'],
    // Framing is scanned 4 KiB a run: the first two windows of these
    // trailers were still within 8 KiB, so they went out before the rest was refused.
    ['trailers over 8 KiB', `0\r\nX-Pad: ${'p'.repeat(8200)}\r\n\r\n`, 8192],
    ['a bare LF ending the body', '0\r\n\n'],
  ])('malformed chunked framing (%s) is refused (EACCES): the head went out, nothing from the refused framing on', async (_name, framing, through = 0) => {
    const head = chunkedHead('/chunked/bad');
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [{ op: 'send', data: head + framing }, { op: 'send', data: get('/never') }, { op: 'recv', count: 1 }]);
    expect(r.error).toBe(EACCES);
    const d = delta(before, kh.stats());
    expect(d).toMatchObject({ injected: 1, refusedChunked: 1 });
    const closed = await upstream.closedFor(r.localPort);
    expect(upstream.byPort(r.localPort)).toEqual([]);
    // The head and its line: the framing was dropped with the write (from its last 4 KiB window).
    expect(closed.bytes).toBe(Buffer.byteLength(head) + LINE_LEN() + through);
    expect(closed.pending).toMatchObject({ target: '/chunked/bad', bodyLength: 0 });
  });

  it('malformed framing in a later write: what was accounted before goes out, nothing after', async () => {
    const head = chunkedHead('/chunked/bad-later');
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [
      { op: 'send', data: `${head}5\r\nhel` },
      { op: 'send', data: 'lo' },
      { op: 'send', data: 'X\r\n0\r\n\r\n' },
      { op: 'send', data: get('/never') },
      { op: 'recv', count: 1 },
    ]);
    expect(r.error).toBe(EACCES);
    expect(r.errorStep).toBe(2);
    expect(delta(before, kh.stats())).toMatchObject({ injected: 1, refusedChunked: 1 });
    const closed = await upstream.closedFor(r.localPort);
    expect(upstream.byPort(r.localPort)).toEqual([]);
    expect(closed.bytes).toBe(Buffer.byteLength(`${head}5\r\nhello`) + LINE_LEN());
    expect(closed.pending).toMatchObject({ target: '/chunked/bad-later', bodyLength: 5 });
  });

  it('a trailer named like the injected header is refused (EACCES): it is never doubled', async () => {
    for (const trailer of ['Authorization: Bearer own', 'authorization:x']) {
      const before = kh.stats();
      const head = chunkedHead('/chunked/own-auth');
      const r = await raw(bound, v4, 80, [{ op: 'send', data: `${head}0\r\n${trailer}\r\n\r\n` }, { op: 'recv', count: 1 }]);
      expect(r.error).toBe(EACCES);
      expect(delta(before, kh.stats())).toMatchObject({ injected: 1, refusedHeaderPresent: 1 });
      expect((await upstream.closedFor(r.localPort)).bytes).toBe(Buffer.byteLength(head) + LINE_LEN());
    }
    // A trailer that merely starts like it is fine.
    const ok = await raw(bound, v4, 80, [{ op: 'send', data: chunkedPost('/chunked/similar', ['x'], { trailers: 'Authorization-Hint: x\r\n' }) }, { op: 'recv', count: 1 }]);
    expect(ok.error).toBeNull();
    expect((await upstream.from(ok.localPort, 1))[0]).toMatchObject({ authorization: [AUTH_HASH], trailerNames: ['authorization-hint'] });
  });

  it.each([
    ['a non-blocking', false],
    ['a blocking', true],
  ] as const)('a large upload with Content-Length (9 MiB) from %s writer arrives intact, and the connection stays in step', async (_kind, blocking) => {
    const size = 9 * 1024 * 1024 + 13;
    const r = await raw(
      bound,
      v4,
      80,
      [
        { op: 'send', data: `POST /large HTTP/1.1\r\nHost: upstream\r\nContent-Length: ${size}\r\n\r\n` },
        { op: 'body', size, seed: 42 },
        { op: 'recv', count: 1 },
        { op: 'send', data: get('/after-large') },
        { op: 'recv', count: 1 },
      ],
      { blocking },
    );
    expect({ error: r.error, step: r.errorStep }).toEqual({ error: null, step: null });
    const recs = await upstream.from(r.localPort, 2);
    expect(recs.map((x) => x.target)).toEqual(['/large', '/after-large']);
    expect(recs[0]?.bodyLength).toBe(size);
    expect(recs[0]?.bodySha256).toBe(r.bodies[0]);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
  });

  it('pipelining behind a large body: every request that arrives has its header once, or the rest is refused whole', async () => {
    const size = 4 * 1024 * 1024;
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [
      { op: 'send', data: `POST /large-pipe HTTP/1.1\r\nHost: upstream\r\nContent-Length: ${size}\r\n\r\n` },
      { op: 'body', size, seed: 3 },
      { op: 'send', data: Buffer.concat([Buffer.from(get('/behind/1')), post('/behind/2', 'x'.repeat(100)), Buffer.from(get('/behind/3'))]) },
      { op: 'recv', count: 4 },
    ]);
    const closed = await upstream.closedFor(r.localPort);
    const recs = upstream.byPort(r.localPort);
    expect(recs[0]?.target).toBe('/large-pipe');
    expect(recs[0]?.bodySha256).toBe(r.bodies[0]);
    for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
    // Nothing half-sent: the upstream holds complete requests only.
    expect(closed.pending).toBeNull();
    expect(closed.leftover).toBe(0);
    if (r.error === null) {
      expect(recs.map((x) => x.target)).toEqual(['/large-pipe', '/behind/1', '/behind/2', '/behind/3']);
    } else {
      expect(r.error).toBe(EACCES);
      expect(delta(before, kh.stats()).refusedBusy).toBe(1);
    }
  });

  it('a large upload in one write (head and body together) arrives intact', async () => {
    const size = 8 * 1024 * 1024 + 1;
    const r = await raw(bound, v4, 80, [
      { op: 'body', size, seed: 7, prefix: `POST /large-one HTTP/1.1\r\nHost: upstream\r\nContent-Length: ${size}\r\n\r\n` },
      { op: 'recv', count: 1 },
    ]);
    expect(r.error).toBeNull();
    const [rec] = await upstream.from(r.localPort, 1);
    expect(rec?.target).toBe('/large-one');
    expect(rec?.bodySha256).toBe(r.bodies[0]);
    expect(rec?.authorization).toEqual([AUTH_HASH]);
  });

  it('TCP Fast Open to a pinned destination is refused at connect() (its data would bypass sk_msg)', async () => {
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [{ op: 'send', data: get('/tfo') }, { op: 'recv', count: 1 }], { fastopen: true });
    expect(r.connectError).toBe(1); // EPERM
    const c = await runInCgroup(bound, 'curl', ['-sS', '--tcp-fastopen', '-o', '/dev/null', `http://${v4}/tfo-curl`]);
    expect(c.code).not.toBe(0);
    expect(delta(before, kh.stats())).toMatchObject({ refusedFastOpen: 2 });
    expect(upstream.requests.filter((x) => x.target.startsWith('/tfo'))).toEqual([]);
    // Fast Open to an unpinned destination is none of our business.
    const other = await raw(bound, v4, 8080, [{ op: 'send', data: get('/tfo-unpinned') }, { op: 'recv', count: 1 }], { fastopen: true });
    expect(other.connectError).toBeNull();
    expect(other.statuses).toEqual([200]);
  });

  it('a client that sends Authorization itself is refused (EACCES): its header is never doubled or replaced', async () => {
    for (const name of ['Authorization', 'authorization', 'AUTHORIZATION']) {
      const before = kh.stats();
      const r = await raw(bound, v4, 80, [{ op: 'send', data: get('/own-auth', `${name}: Bearer client-own\r\n`) }, { op: 'recv', count: 1 }]);
      expect(r.error).toBe(EACCES);
      expect(delta(before, kh.stats())).toMatchObject({ refusedHeaderPresent: 1 });
      expect((await upstream.closedFor(r.localPort)).bytes).toBe(0);
    }
    // A header that merely starts like it is fine.
    const ok = await raw(bound, v4, 80, [{ op: 'send', data: get('/similar', 'Authorization-Hint: x\r\nX-Authorization: y\r\n') }, { op: 'recv', count: 1 }]);
    expect(ok.error).toBeNull();
    expect((await upstream.from(ok.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
  });

  it.each([
    ['Upgrade: h2c', get('/h2c-up', 'Upgrade: h2c\r\nConnection: Upgrade\r\n'), 'refusedUpgrade'],
    ['a WebSocket upgrade with a body', get('/ws-body', 'Upgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 2\r\n') + 'hi', 'refusedUpgrade'],
    ['a WebSocket upgrade by POST', 'POST /ws-post HTTP/1.1\r\nHost: u\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n', 'refusedUpgrade'],
    ['two Upgrade lines', get('/ws-two', 'Upgrade: websocket\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'), 'refusedUpgrade'],
    ['Connection: upgrade alone', get('/h2c', 'Connection: keep-alive, UPGRADE\r\n'), 'refusedUpgrade'],
    ['CONNECT', 'CONNECT upstream:443 HTTP/1.1\r\nHost: upstream:443\r\n\r\n', 'refusedMethod'],
    ['obs-fold', get('/fold', 'X-A: one\r\n two\r\n'), 'refusedMalformed'],
    ['bare LF', 'GET /lf HTTP/1.1\nHost: upstream\r\n\r\n', 'refusedMalformed'],
    ['bare CR in a value', get('/cr', 'X-A: a\rb\r\n'), 'refusedMalformed'],
    ['space before the colon', get('/sp', 'X-A : b\r\n'), 'refusedMalformed'],
    ['NUL', get('/nul', 'X-A: a\u0000b\r\n'), 'refusedMalformed'],
    ['HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'refusedMethod'],
    ['a request line in HTTP/2 form', 'GET / HTTP/2.0\r\nHost: u\r\n\r\n', 'refusedMalformed'],
    ['duplicate Content-Length', 'POST /dup HTTP/1.1\r\nHost: u\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx', 'refusedContentLength'],
    ['Content-Length with Transfer-Encoding', 'POST /clte HTTP/1.1\r\nHost: u\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['Transfer-Encoding with Content-Length', 'POST /tecl HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['Transfer-Encoding: gzip, chunked', 'POST /gz HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['Transfer-Encoding: chunked, chunked', 'POST /cc HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['Transfer-Encoding: identity', 'POST /id HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: identity\r\n\r\n', 'refusedTransferEncoding'],
    ['Transfer-Encoding: chunked;q=1', 'POST /param HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['Transfer-Encoding: chunk ed', 'POST /split HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: chunk ed\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['an empty Transfer-Encoding', 'POST /empty HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: \r\n\r\n', 'refusedTransferEncoding'],
    ['two Transfer-Encoding lines', 'POST /two HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['Transfer-Encoding on HTTP/1.0', 'POST /old HTTP/1.0\r\nHost: u\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 'refusedTransferEncoding'],
    ['TRACE', 'TRACE /echo HTTP/1.1\r\nHost: u\r\n\r\n', 'refusedMethod'],
    ['TRACE in lower case', 'trace /echo HTTP/1.1\r\nHost: u\r\n\r\n', 'refusedMethod'],
    ['TRACK', 'TRACK /echo HTTP/1.1\r\nHost: u\r\n\r\n', 'refusedMethod'],
    ['CONNECT in lower case', 'connect upstream:443 HTTP/1.1\r\nHost: upstream:443\r\n\r\n', 'refusedMethod'],
    ['get in lower case (methods are case-sensitive)', 'get /lower HTTP/1.1\r\nHost: u\r\n\r\n', 'refusedMethod'],
    ['Post in mixed case', 'Post /mixed HTTP/1.1\r\nHost: u\r\nContent-Length: 0\r\n\r\n', 'refusedMethod'],
    ['an unknown method (PROPFIND)', 'PROPFIND /dav HTTP/1.1\r\nHost: u\r\n\r\n', 'refusedMethod'],
    ['a method longer than any allowed one', 'OPTIONSX / HTTP/1.1\r\nHost: u\r\n\r\n', 'refusedMethod'],
    ['a method that starts like an allowed one', 'GETS / HTTP/1.1\r\nHost: u\r\n\r\n', 'refusedMethod'],
    ['two Host lines', 'GET /two-hosts HTTP/1.1\r\nHost: upstream\r\nHost: other\r\n\r\n', 'refusedHost'],
    ['Content-Length list', 'POST /list HTTP/1.1\r\nHost: u\r\nContent-Length: 1, 1\r\n\r\nx', 'refusedContentLength'],
    ['negative Content-Length', 'POST /neg HTTP/1.1\r\nHost: u\r\nContent-Length: -1\r\n\r\n', 'refusedContentLength'],
  ] as const)('%s is refused (EACCES) and nothing of it reaches the upstream', async (_name, request, counter) => {
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [{ op: 'send', data: request }, { op: 'send', data: get('/never') }, { op: 'recv', count: 1 }]);
    expect(r.error).toBe(EACCES);
    const d = delta(before, kh.stats());
    expect(d[counter]).toBe(1);
    expect(d.injected).toBeUndefined();
    expect((await upstream.closedFor(r.localPort)).bytes).toBe(0);
  });

  it('rotation under a request loop: every request has exactly one header, entirely old or entirely new', async () => {
    const values = ['short-1', 'b'.repeat(100), 'c'.repeat(300), `long-${'d'.repeat(480)}`, 'e'.repeat(37)].map((v) => `Bearer ${v}`);
    const hashes = new Set(values.map(sha256));
    const requests = 300;
    const loop = `
import json, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=20)
buf = b''
port = s.getsockname()[1]
for i in range(${requests}):
    # every fourth round: three pipelined requests in one write
    n = 3 if i % 4 == 0 else 1
    s.sendall(b''.join(b'GET /rot/%d/%d HTTP/1.1\\r\\nHost: u\\r\\n\\r\\n' % (i, k) for k in range(n)))
    for _ in range(n):
        while b'\\r\\n\\r\\n' not in buf:
            buf += s.recv(65536)
        head, _, buf = buf.partition(b'\\r\\n\\r\\n')
        cl = int([l for l in head.split(b'\\r\\n') if l.lower().startswith(b'content-length')][0].split(b':')[1])
        while len(buf) < cl:
            buf += s.recv(65536)
        buf = buf[cl:]
print(port)
`;
    let done = false;
    let rotations = 0;
    const rotate = (async () => {
      while (!done) {
        kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: values[rotations++ % values.length] as string });
        await new Promise((r) => setImmediate(r));
      }
    })();
    let ports: number[];
    try {
      const results = await Promise.all([1, 2, 3].map(() => runInCgroup(bound, 'python3', ['-c', loop, v4], { timeoutMs: 120_000 })));
      for (const r of results) expect(r.stderr).toBe('');
      ports = results.map((r) => Number(r.stdout.trim()));
    } finally {
      done = true;
      await rotate;
      kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
    }
    expect(rotations).toBeGreaterThan(100);
    const seen = new Set<string>();
    for (const port of ports) {
      const recs = await upstream.from(port, requests + Math.ceil(requests / 4) * 2);
      expect(recs).toHaveLength(requests + Math.ceil(requests / 4) * 2);
      for (const rec of recs) {
        expect(rec.authorization).toHaveLength(1);
        expect(hashes.has(rec.authorization[0] as string)).toBe(true);
        seen.add(rec.authorization[0] as string);
      }
    }
    expect(seen.size).toBeGreaterThan(1);
  });

  it('a process in no workload, under the same programs, sends its bytes untouched', async () => {
    const req = Buffer.concat([post('/unbound', randomBytes(2000), 'Authorization: Bearer its-own\r\n')]);
    const r = await raw(other, v4, 80, [{ op: 'send', data: req }, { op: 'recv', count: 1 }]);
    expect(r.error).toBeNull();
    const [rec] = await upstream.from(r.localPort, 1);
    expect(rec?.rawSha256).toBe(sha256(req));
    expect(rec?.authorization).toEqual([sha256('Bearer its-own')]);
    const closed = await upstream.closedFor(r.localPort);
    expect(closed.sha256).toBe(sha256(req));
  });

  it('a bound process going to an unpinned port or address sends its bytes untouched', async () => {
    const req = Buffer.from(get('/unpinned', 'X-Anything: \u00e9t\u00e9\r\n'), 'latin1');
    for (const [addr, port] of [
      [v4, 8080],
      [v6, 8080],
    ] as const) {
      const r = await raw(bound, addr, port, [{ op: 'send', data: req }, { op: 'recv', count: 1 }]);
      expect(r.error).toBeNull();
      const [rec] = await upstream.from(r.localPort, 1);
      expect(rec?.rawSha256).toBe(sha256(req));
      expect(rec?.authorization).toEqual([]);
    }
  });

  it('a pinned CIDR covers the addresses in it, on its port only', async () => {
    const net4 = `${v4.split('.').slice(0, 3).join('.')}.0/24`;
    kh.setDestinations([
      { address: net4, port: 80, serviceId: SERVICE },
      { address: `${v6}/64`, port: 80, serviceId: SERVICE },
    ]);
    try {
      for (const addr of [v4, v6]) {
        const r = await raw(bound, addr, 80, [{ op: 'send', data: get('/cidr') }, { op: 'recv', count: 1 }]);
        expect(r.error).toBeNull();
        expect((await upstream.from(r.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
      }
      const other = await raw(bound, v4, 8080, [{ op: 'send', data: get('/cidr-other-port') }, { op: 'recv', count: 1 }]);
      expect((await upstream.from(other.localPort, 1))[0]?.authorization).toEqual([]);
    } finally {
      kh.setDestinations([
        { address: v4, port: 80, serviceId: SERVICE },
        { address: v6, port: 80, serviceId: SERVICE },
      ]);
    }
  });

  it('a withheld credential refuses requests; setting it again serves new connections', async () => {
    kh.withhold(WORKLOAD, SERVICE);
    try {
      const before = kh.stats();
      const r = await raw(bound, v4, 80, [{ op: 'send', data: get('/withheld') }, { op: 'recv', count: 1 }]);
      expect(r.error).toBe(EACCES);
      expect(delta(before, kh.stats())).toMatchObject({ refusedCredential: 1 });
      expect((await upstream.closedFor(r.localPort)).bytes).toBe(0);
    } finally {
      kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
    }
    const ok = await raw(bound, v4, 80, [{ op: 'send', data: get('/restored') }, { op: 'recv', count: 1 }]);
    expect(ok.error).toBeNull();
    expect((await upstream.from(ok.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
  });

  it('a head held back across a rotation, a withholding or an unbinding is judged by the line as it is when the head completes', async () => {
    const ROTATED = `Bearer rotated-${CANARY}`;
    for (const change of ['rotate', 'withhold', 'unbind'] as const) {
      const flag = path.join(dir, `held-${change}`);
      const head = get(`/held/${change}`);
      const before = kh.stats();
      // All of the head but its last CRLF: held back (corked) until the rest comes.
      const client = raw(bound, v4, 80, [
        { op: 'send', data: head.slice(0, -2) },
        { op: 'waitFile', path: flag },
        { op: 'send', data: '\r\n' },
        { op: 'recv', count: 1 },
      ]);
      try {
        await waitFor(() => (delta(before, kh.stats()).corked ?? 0) >= 1, `the /held/${change} head held back`);
        if (change === 'rotate') kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: ROTATED });
        else if (change === 'withhold') kh.withhold(WORKLOAD, SERVICE);
        else kh.unbind(WORKLOAD, SERVICE);
        writeFileSync(flag, '');
        const r = await client;
        if (change === 'rotate') {
          expect(r.error).toBeNull();
          expect((await upstream.from(r.localPort, 1))[0]?.authorization).toEqual([sha256(ROTATED)]);
        } else {
          expect(r.error).toBe(EACCES);
          expect(delta(before, kh.stats())).toMatchObject(change === 'withhold' ? { refusedCredential: 1 } : { refusedBinding: 1 });
          expect((await upstream.closedFor(r.localPort)).bytes).toBe(0);
        }
      } finally {
        writeFileSync(flag, '');
        kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
      }
    }
    const ok = await raw(bound, v4, 80, [{ op: 'send', data: get('/held/after') }, { op: 'recv', count: 1 }]);
    expect(ok.error).toBeNull();
    expect((await upstream.from(ok.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
  });

  it('an epoch bump or an unpinned destination refuses the next request on existing connections', async () => {
    for (const change of ['epoch', 'unpin'] as const) {
      const flag = path.join(dir, `go-${change}`);
      const client = raw(bound, v4, 80, [
        { op: 'send', data: get(`/${change}/1`) },
        { op: 'recv', count: 1 },
        { op: 'waitFile', path: flag },
        { op: 'send', data: get(`/${change}/2`) },
        { op: 'recv', count: 1 },
      ]);
      await waitFor(() => upstream.requests.some((x) => x.target === `/${change}/1`), `/${change}/1`);
      const before = kh.stats();
      if (change === 'epoch') kh.bumpEpoch();
      else kh.setDestinations([{ address: v6, port: 80, serviceId: SERVICE }]);
      writeFileSync(flag, '');
      const r = await client;
      if (change === 'unpin') {
        kh.setDestinations([
          { address: v4, port: 80, serviceId: SERVICE },
          { address: v6, port: 80, serviceId: SERVICE },
        ]);
      }
      expect(r.error).toBe(EACCES);
      expect(delta(before, kh.stats())).toMatchObject({ refusedBinding: 1 });
      await upstream.closedFor(r.localPort);
      expect(upstream.byPort(r.localPort).map((x) => x.target)).toEqual([`/${change}/1`]);
    }
    // New connections are bound under the new epoch.
    const ok = await raw(bound, v4, 80, [{ op: 'send', data: get('/new-epoch') }, { op: 'recv', count: 1 }]);
    expect(ok.error).toBeNull();
    expect((await upstream.from(ok.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
  });

  it('a binding whose selection moved on refuses the next request on connections made under the other; a rotation keeps the selection', async () => {
    const header = { name: 'Authorization', value: AUTH };
    const steps = (name: string, flag: string) => [
      { op: 'send', data: get(`/${name}/1`) },
      { op: 'recv', count: 1 },
      { op: 'waitFile', path: flag },
      { op: 'send', data: get(`/${name}/2`) },
      { op: 'recv', count: 1 },
    ] as const;
    const [moved, rotated] = [path.join(dir, 'go-selection'), path.join(dir, 'go-selection-rotated')];
    try {
      const before = raw(bound, v4, 80, [...steps('selection-0', moved)]);
      await waitFor(() => upstream.requests.some((x) => x.target === '/selection-0/1'), '/selection-0/1');
      const stats = kh.stats();
      kh.setBindings([{ workloadId: WORKLOAD, serviceId: SERVICE, header, selection: 1 }]);
      expect(kh.bindings()).toEqual([{ workloadId: WORKLOAD, serviceId: SERVICE, state: 'inject', version: expect.any(Number), selection: 1 }]);
      // A connection made under the new selection, held across a rotation.
      const after = raw(bound, v4, 80, [...steps('selection-1', rotated)]);
      writeFileSync(moved, '');
      const r = await before;
      expect(r.error).toBe(EACCES);
      expect(delta(stats, kh.stats())).toMatchObject({ refusedBinding: 1 });
      await upstream.closedFor(r.localPort);
      expect(upstream.byPort(r.localPort).map((x) => x.target)).toEqual(['/selection-0/1']);
      await waitFor(() => upstream.requests.some((x) => x.target === '/selection-1/1'), '/selection-1/1');
      kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: `${AUTH}-rotated` });
      expect(kh.bindings()[0]?.selection).toBe(1);
      writeFileSync(rotated, '');
      const ok = await after;
      expect(ok.error).toBeNull();
      const recs = await upstream.from(ok.localPort, 2);
      expect(recs.map((x) => x.authorization)).toEqual([[AUTH_HASH], [sha256(`${AUTH}-rotated`)]]);
    } finally {
      kh.setBindings([{ workloadId: WORKLOAD, serviceId: SERVICE, header }]);
    }
  });

  it('removing the binding: new connections are left alone, an existing one has its next request refused', async () => {
    const flag = path.join(dir, 'go-unbind');
    const client = raw(bound, v4, 80, [
      { op: 'send', data: get('/unbind/1') },
      { op: 'recv', count: 1 },
      { op: 'waitFile', path: flag },
      { op: 'send', data: get('/unbind/2') },
      { op: 'recv', count: 1 },
    ]);
    await waitFor(() => upstream.requests.some((x) => x.target === '/unbind/1'), '/unbind/1');
    kh.setBindings([]);
    expect(kh.bindings()).toEqual([{ workloadId: WORKLOAD, serviceId: SERVICE, state: 'unbound', version: expect.any(Number), selection: 0 }]);
    writeFileSync(flag, '');
    try {
      const r = await client;
      expect(r.error).toBe(EACCES);
      const req = Buffer.from(get('/unbound-now'));
      const fresh = await raw(bound, v4, 80, [{ op: 'send', data: req }, { op: 'recv', count: 1 }]);
      expect(fresh.error).toBeNull();
      expect((await upstream.from(fresh.localPort, 1))[0]?.rawSha256).toBe(sha256(req));
      // The tombstone goes once no program can still be reading it.
      kh.collect(Date.now() + 60_000);
      expect(kh.bindings()).toEqual([]);
    } finally {
      kh.setBindings([{ workloadId: WORKLOAD, serviceId: SERVICE, header: { name: 'Authorization', value: AUTH } }]);
    }
    const ok = await raw(bound, v4, 80, [{ op: 'send', data: get('/rebound') }, { op: 'recv', count: 1 }]);
    expect((await upstream.from(ok.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
  });

  it('urgent data (MSG_OOB) on a kernel-path connection refuses its next request', async () => {
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [
      { op: 'send', data: `POST /oob HTTP/1.1\r\nHost: u\r\nContent-Length: 2\r\n\r\nx` },
      { op: 'oob', data: 'y' },
      { op: 'send', data: get('/after-oob') },
      { op: 'recv', count: 1 },
    ]);
    expect(r.error).toBe(EACCES);
    expect(delta(before, kh.stats())).toMatchObject({ injected: 1, refusedStream: 1 });
    await upstream.closedFor(r.localPort);
    expect(upstream.byPort(r.localPort).map((x) => x.target)).not.toContain('/after-oob');
  });

  /**
   * A write the kernel fails after the program passed it leaves the
   * kernel's verdict in place for the writer's next bytes, which then pass
   * unseen in its place. MSG_FASTOPEN on a connected socket can make the
   * push fail at will where tcp_bpf_push goes through tcp_sendmsg_locked
   * with the writer's flags: B's head would then pass unseen in A's place,
   * and a program that went on would take the next GET for a request and
   * inject into what the upstream reads as B's body.
   */
  it('a write the workload makes fail (MSG_FASTOPEN on a connected socket) refuses the connection from its next write', async () => {
    const before = kh.stats();
    const line = `Authorization: ${AUTH}\r\n`;
    const a = get('/tfo/a');
    const next = get('/tfo/next');
    const head = `PUT /tfo/paste HTTP/1.1\r\nHost: u\r\nContent-Length: ${next.length}\r\nX-Pad: `;
    const b = `${head}${'p'.repeat(a.length + line.length - head.length - 4)}\r\n\r\n`;
    expect(b.length).toBe(a.length + line.length);
    const r = await raw(bound, v4, 80, [
      { op: 'send', data: get('/tfo/first') },
      { op: 'recv', count: 1 },
      { op: 'fastopen', data: a },
      { op: 'send', data: b + next },
      { op: 'recv', count: 2 },
    ], { timeoutSeconds: 10 });
    await upstream.closedFor(r.localPort);
    const seen = upstream.byPort(r.localPort);
    if (r.fastopen === 0) {
      // A kernel whose push does not fail on MSG_FASTOPEN: A went out injected, B with `next` as its body.
      expect(r.error).toBeNull();
      expect(r.statuses).toEqual([200, 200, 200]);
      expect(seen.map((x) => [x.target, x.authorization.length])).toEqual([['/tfo/first', 1], ['/tfo/a', 1], ['/tfo/paste', 1]]);
      return;
    }
    expect(r.fastopen).toBeGreaterThan(0);
    expect(r.error).toBe(EACCES);
    expect(r.errorStep).toBe(3);
    expect(delta(before, kh.stats())).toMatchObject({ injected: 1, refusedPush: 1 });
    // Nothing after the failed write carried the line: at most B's head, unseen and without it.
    expect(seen.filter((x) => x.authorization.length).map((x) => x.target)).toEqual(['/tfo/first']);
  });

  // Without the push watch (a kernel without BPF trampolines), urgent data is
  // caught segment by segment instead: the same refusal, on every kernel.
  it('urgent data is refused the same way without the push watch (segments watched)', async () => {
    const tree = createCgroup(cgRoot, `${path.relative(cgRoot, top)}-urg`);
    const treeBound = createCgroup(cgRoot, path.relative(cgRoot, path.join(tree, 'bound')));
    const o3 = loadObject({ pushWatch: false, bound: treeBound });
    let kh3: KernelHttp | undefined;
    try {
      kh3 = KernelHttp.attach(o3, tree);
      expect(kh3.pushWatch).toBe(false);
      kh3.setDestinations([{ address: v4, port: 80, serviceId: SERVICE }]);
      kh3.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
      const before = kh3.stats();
      const r = await raw(treeBound, v4, 80, [
        { op: 'send', data: `POST /oob-seg HTTP/1.1\r\nHost: u\r\nContent-Length: 2\r\n\r\nx` },
        { op: 'oob', data: 'y' },
        { op: 'send', data: get('/after-oob-seg') },
        { op: 'recv', count: 1 },
      ]);
      expect(r.error).toBe(EACCES);
      expect(delta(before, kh3.stats())).toMatchObject({ injected: 1, refusedStream: 1 });
      await upstream.closedFor(r.localPort);
      expect(upstream.byPort(r.localPort).map((x) => x.target)).not.toContain('/after-oob-seg');
    } finally {
      kh3?.close();
      o3.close();
      removeCgroupTree(cgRoot, tree);
    }
  });

  // The agent is exempt by its pid and its start time together. A process
  // with the pid alone is what a crash leaves behind once the pid is given
  // out again, the dead agent's programs still attached: it is judged.
  it('the agent\'s exemption needs its pid and its start time: the same pid with another start time is judged like any workload', async () => {
    const client = String.raw`
import socket, sys
for line in sys.stdin:
    host, target = line.split()
    s = socket.create_connection((host, 80), timeout=10)
    s.sendall(('GET %s HTTP/1.1\r\nHost: u\r\n\r\n' % target).encode())
    status = s.makefile('rb').readline().split()[1].decode()
    print('%s %d' % (status, s.getsockname()[1]), flush=True)
    s.close()
`;
    const tree = createCgroup(cgRoot, `${path.relative(cgRoot, top)}-agent`);
    const treeBound = createCgroup(cgRoot, path.relative(cgRoot, path.join(tree, 'bound')));
    const proc = startDriven(treeBound, '/usr/bin/python3', ['-c', client]);
    const started = processStartTicks(proc.pid);
    const auth: Record<string, string[]> = {};
    try {
      for (const [name, ticks] of [['same-start', started], ['later-start', started + 1n]] as const) {
        const o = loadObject({ pushWatch: pushWatchRefused === null, bound: treeBound, agent: { pid: proc.pid, startTicks: ticks } });
        let k: KernelHttp | undefined;
        try {
          k = KernelHttp.attach(o, tree);
          k.setDestinations([{ address: v4, port: 80, serviceId: SERVICE }]);
          k.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
          const [status, port] = (await proc.send(`${v4} /agent/${name}`)).split(' ');
          expect(status).toBe('200');
          auth[name] = (await upstream.from(Number(port), 1))[0]?.authorization ?? [];
        } finally {
          k?.close();
          o.close();
        }
      }
    } finally {
      proc.kill();
      await proc.exited;
      removeCgroupTree(cgRoot, tree);
    }
    expect(auth).toEqual({ 'same-start': [], 'later-start': [AUTH_HASH] });
  });

  it('bindings and stats never expose the header', () => {
    expect(kh.bindings()).toEqual([{ workloadId: WORKLOAD, serviceId: SERVICE, state: 'inject', version: expect.any(Number), selection: 0 }]);
    expect(JSON.stringify(kh.bindings())).not.toContain(CANARY);
    expect(kh.stats().injected).toBeGreaterThan(0n);
  });

  it('header lines are checked before they reach the kernel', () => {
    expect(() => kh.setHeader(WORKLOAD, SERVICE, { name: 'Bad Name', value: 'x' })).toThrow(/not an HTTP token/);
    let err: unknown;
    try {
      kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: `Bearer ${CANARY}\r\nX-Evil: 1` });
    } catch (e) {
      err = e;
    }
    expect((err as Error).message).toMatch(/control byte/);
    expect((err as Error).message).not.toContain(CANARY);
    expect(() => kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: 'x'.repeat(600) })).toThrow(/at most 512/);
  });

  /* ---- audit events (wk_http_events ring buffer) ------------------------ */

  describe('without an agent (a second object, on a cgroup tree of its own)', () => {
    // Its own tree, so that its programs and kh's never see the same socket.
    let life: string;
    let lifeBound: string;
    let o2: NativeObject;
    let kh2: KernelHttp;
    const events: Parameters<Parameters<KernelHttp['events']>[0]>[0][] = [];

    beforeAll(() => {
      life = createCgroup(cgRoot, `${path.relative(cgRoot, top)}-life`);
      lifeBound = createCgroup(cgRoot, path.relative(cgRoot, path.join(life, 'bound')));
      o2 = loadObject({ pushWatch: pushWatchRefused === null, bound: lifeBound });
      kh2 = KernelHttp.attach(o2, life, { aliveTimeoutMs: 500 });
      kh2.setDestinations([{ address: v4, port: 80, serviceId: SERVICE }]);
      kh2.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
      kh2.events((e) => events.push(e), { drainIntervalMs: 50 });
    });

    afterAll(() => {
      const steps = [() => kh2?.close(), () => o2?.close(), () => life && removeCgroupTree(cgRoot, life)];
      for (const step of steps) {
        try {
          step();
        } catch {
          /* every step runs */
        }
      }
    });

    it('refuses a timeout below 500 ms', () => {
      expect(() => KernelHttp.attach(o2, life, { aliveTimeoutMs: 100 })).toThrow(/below 500 ms/);
    });

    it('a heartbeat that lapses (the event loop stuck past the timeout) refuses the next request of an open connection, counted and evented; never sent bare', async () => {
      const flag = path.join(dir, 'go-lapse');
      const client = raw(lifeBound, v4, 80, [
        { op: 'send', data: get('/lapse/1') },
        { op: 'recv', count: 1 },
        { op: 'waitFile', path: flag },
        { op: 'send', data: get('/lapse/2') },
        { op: 'recv', count: 1 },
      ]);
      await waitFor(() => upstream.requests.some((x) => x.target === '/lapse/1'), '/lapse/1');
      const before = kh2.stats();
      // The heartbeat runs on this event loop: hold it until the deadline has
      // passed and the client's next request has been refused.
      const deadline = kh2.aliveUntil();
      while (process.hrtime.bigint() <= deadline);
      writeFileSync(flag, '');
      const giveUp = process.hrtime.bigint() + 20_000_000_000n;
      while (kh2.stats().refusedAgent === before.refusedAgent && process.hrtime.bigint() < giveUp);
      const r = await client;
      expect(r.error).toBe(EACCES);
      expect(delta(before, kh2.stats())).toEqual({ refusedAgent: 1 });
      await upstream.closedFor(r.localPort);
      const recs = upstream.byPort(r.localPort);
      expect(recs.map((x) => x.target)).toEqual(['/lapse/1']);
      expect(recs[0]?.authorization).toEqual([AUTH_HASH]);
      await waitFor(() => events.some((e) => e.kind === 'refused' && e.reason === 'refusedAgent' && e.port === 80), 'the refusedAgent event');
      // The heartbeat is back: new connections are injected again.
      await waitFor(() => kh2.aliveUntil() > process.hrtime.bigint(), 'the next heartbeat');
      const ok = await raw(lifeBound, v4, 80, [{ op: 'send', data: get('/lapse/after') }, { op: 'recv', count: 1 }]);
      expect(ok.error).toBeNull();
      expect((await upstream.from(ok.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
    });

    it('expire() refuses at once; close() wipes every header line', async () => {
      const flag = path.join(dir, 'go-expire');
      const client = raw(lifeBound, v4, 80, [
        { op: 'send', data: get('/expire/1') },
        { op: 'recv', count: 1 },
        { op: 'waitFile', path: flag },
        { op: 'send', data: get('/expire/2') },
        { op: 'recv', count: 1 },
      ]);
      await waitFor(() => upstream.requests.some((x) => x.target === '/expire/1'), '/expire/1');
      const before = kh2.stats();
      kh2.expire();
      expect(kh2.aliveUntil()).toBe(0n);
      writeFileSync(flag, '');
      const r = await client;
      expect(r.error).toBe(EACCES);
      // A connection made after it is refused at its first request (the programs are still attached).
      const late = await raw(lifeBound, v4, 80, [{ op: 'send', data: get('/expire/late') }, { op: 'recv', count: 1 }]);
      expect(late.error).toBe(EACCES);
      expect(delta(before, kh2.stats())).toEqual({ refusedAgent: 2 });
      expect(upstream.requests.filter((x) => x.target.startsWith('/expire/')).map((x) => x.target)).toEqual(['/expire/1']);

      const hdr = o2.map('wk_http_hdr');
      expect(hdr.keys()).toHaveLength(1);
      expect(hdr.lookup(hdr.keys()[0] as Buffer)?.includes(Buffer.from(CANARY))).toBe(true);
      kh2.close();
      expect(hdr.keys()).toEqual([]);
    });
  });

  it('a write after shutdown(SHUT_WR) is refused: the FIN moved the stream past what the program approved', async () => {
    // The FIN takes a sequence number: the next write finds write_seq ahead
    // of what the program last approved and is refused (stream-desync)
    // before anything of it is injected or sent.
    const before = kh.stats();
    const r = await raw(bound, v4, 80, [
      { op: 'send', data: get('/push/1') },
      { op: 'recv', count: 1 },
      { op: 'shutWr' },
      { op: 'send', data: get('/push/2') },
    ]);
    expect({ error: r.error, step: r.errorStep }).toEqual({ error: EACCES, step: 3 });
    expect(delta(before, kh.stats())).toMatchObject({ injected: 1, refusedStream: 1 });
    const recs = upstream.byPort(r.localPort);
    expect(recs.map((x) => x.target)).toEqual(['/push/1']);
  });

  it('under socket memory pressure, a body upload waits and is never refused or reframed (cgroup v1 tcp limit)', async (ctx) => {
    const memcg = v1MemoryCgroup();
    if (!memcg) ctx.skip('no cgroup v1 memory controller with memory.kmem.tcp here to put a socket under memory pressure');
    const dir = path.join(memcg as string, `wirekey-test-${randomBytes(3).toString('hex')}`);
    mkdirSync(dir);
    try {
      // Far less than a 1 MiB upload needs: its send charges are refused and it waits.
      writeFileSync(path.join(dir, 'memory.kmem.tcp.limit_in_bytes'), String(64 * 1024));
      const before = kh.stats();
      const r = await raw(bound, v4, 80, [
        { op: 'send', data: get('/mem/1') },
        { op: 'recv', count: 1 },
        { op: 'send', data: post('/mem/2', randomBytes(1 << 20)) },
        { op: 'send', data: get('/mem/3') },
        { op: 'recv', count: 2 },
      ], { memcg: dir, timeoutSeconds: 3 });
      // The upload stops where memory ran out (its write times out). Body
      // data only: a push of it that fails cannot move a request boundary,
      // so the connection is not refused for it, and nothing after it was
      // injected: the upstream never sees /mem/3.
      expect(r.errorStep).toBe(2);
      expect(r.error).toBeNull();
      const d = delta(before, kh.stats());
      expect(d.refusedPush).toBeUndefined();
      expect(d.injected).toBe(2);
      expect(upstream.byPort(r.localPort).map((x) => x.target)).toEqual(['/mem/1']);
    } finally {
      rmdirSync(dir);
    }
  });

  describe('a service that lists hosts', () => {
    const HOSTS = ['api.internal', 'alt.internal'];
    const pinned = () => [
      { address: v4, port: 80, serviceId: SERVICE },
      { address: v6, port: 80, serviceId: SERVICE },
    ];
    beforeAll(() => kh.setDestinations(pinned(), [{ serviceId: SERVICE, hosts: HOSTS }]));
    afterAll(() => kh.setDestinations(pinned()));

    const req = (head: string) => `${head}\r\n\r\n`;
    it.each([
      ['a listed host', 'GET /h/listed HTTP/1.1\r\nHost: api.internal'],
      ['the other listed host', 'GET /h/alt HTTP/1.1\r\nHost: alt.internal'],
      ['a listed host in another case', 'GET /h/case HTTP/1.1\r\nHost: API.Internal'],
      ['a listed host with a trailing dot', 'GET /h/dot HTTP/1.1\r\nHost: api.internal.'],
      ["a listed host with the service's port", 'GET /h/port HTTP/1.1\r\nHost: api.internal:80'],
      ['a listed host with whitespace around', 'GET /h/ows HTTP/1.1\r\nHost: \t api.internal \t'],
      ['a listed host on HTTP/1.0', 'GET /h/old HTTP/1.0\r\nHost: api.internal'],
      ['an absolute-form target naming a listed host', 'GET http://api.internal/h/absolute HTTP/1.1\r\nHost: api.internal'],
      ['an absolute-form target with the port and no path', 'OPTIONS HTTP://Api.Internal:80 HTTP/1.1\r\nHost: api.internal'],
      ['OPTIONS * with a listed host', 'OPTIONS * HTTP/1.1\r\nHost: alt.internal'],
    ])('%s gets the header', async (_name, head) => {
      const r = await raw(bound, v4, 80, [{ op: 'send', data: req(head) }, { op: 'recv', count: 1 }]);
      expect(r.error).toBeNull();
      const [rec] = await upstream.from(r.localPort, 1);
      expect(rec?.authorization).toEqual([AUTH_HASH]);
    });

    it.each([
      ['another host', 'GET /h/other HTTP/1.1\r\nHost: other.internal'],
      ['a host that merely starts like a listed one', 'GET /h/prefix HTTP/1.1\r\nHost: api.internal.evil'],
      ['a listed host as a suffix', 'GET /h/suffix HTTP/1.1\r\nHost: evilapi.internal'],
      ['the upstream address itself', () => `GET /h/ip HTTP/1.1\r\nHost: ${v4}`],
      ['no Host on HTTP/1.1', 'GET /h/none HTTP/1.1\r\nX-A: b'],
      ['no Host on HTTP/1.0', 'GET /h/none10 HTTP/1.0\r\nX-A: b'],
      ['an empty Host', 'GET /h/empty HTTP/1.1\r\nHost: '],
      ['two Host lines, both listed', 'GET /h/two HTTP/1.1\r\nHost: api.internal\r\nHost: api.internal'],
      ['another port', 'GET /h/port HTTP/1.1\r\nHost: api.internal:8080'],
      ['an empty port', 'GET /h/colon HTTP/1.1\r\nHost: api.internal:'],
      ['a port of six digits', 'GET /h/long-port HTTP/1.1\r\nHost: api.internal:000080'],
      ['two trailing dots', 'GET /h/dots HTTP/1.1\r\nHost: api.internal..'],
      ['user info', 'GET /h/user HTTP/1.1\r\nHost: me@api.internal'],
      ['percent-encoding', 'GET /h/pct HTTP/1.1\r\nHost: api%2einternal'],
      ['a space inside', 'GET /h/space HTTP/1.1\r\nHost: api internal'],
      ['an IPv6 literal', 'GET /h/v6 HTTP/1.1\r\nHost: [::1]'],
      ['an absolute-form target naming another host', 'GET http://other.internal/h/abs HTTP/1.1\r\nHost: api.internal'],
      ['an absolute-form target with another port', 'GET http://api.internal:8080/h/abs HTTP/1.1\r\nHost: api.internal'],
      ['an absolute-form target with user info', 'GET http://u@api.internal/h/abs HTTP/1.1\r\nHost: api.internal'],
      ['an https absolute-form target', 'GET https://api.internal/h/abs HTTP/1.1\r\nHost: api.internal'],
      ['another scheme', 'GET ftp://api.internal/h/abs HTTP/1.1\r\nHost: api.internal'],
      ['a listed absolute-form target with another Host', 'GET http://api.internal/h/abs HTTP/1.1\r\nHost: other.internal'],
    ] as [string, string | (() => string)][])('%s is refused (EACCES) and nothing of it reaches the upstream', async (_name, head) => {
      const before = kh.stats();
      const r = await raw(bound, v4, 80, [{ op: 'send', data: req(typeof head === 'string' ? head : head()) }, { op: 'recv', count: 1 }]);
      expect(r.error).toBe(EACCES);
      const d = delta(before, kh.stats());
      expect(d.refusedHost).toBe(1);
      expect(d.injected).toBeUndefined();
      expect((await upstream.closedFor(r.localPort)).bytes).toBe(0);
    });

    it('a request naming another host after good ones on the same connection: the good ones arrive, then nothing', async () => {
      const good = 'GET /h/seq/1 HTTP/1.1\r\nHost: api.internal\r\n\r\n';
      const r = await raw(bound, v4, 80, [
        { op: 'send', data: good },
        { op: 'recv', count: 1 },
        { op: 'send', data: 'GET /h/seq/2 HTTP/1.1\r\nHost: other.internal\r\n\r\n' },
        { op: 'send', data: good },
        { op: 'recv', count: 1 },
      ]);
      expect(r.error).toBe(EACCES);
      expect(r.errorStep).toBe(2);
      const closed = await upstream.closedFor(r.localPort);
      expect(upstream.byPort(r.localPort).map((x) => x.target)).toEqual(['/h/seq/1']);
      expect(closed.bytes).toBe(Buffer.byteLength(good) + Buffer.byteLength(`Authorization: ${AUTH}\r\n`));
    });

    it('changing the list applies to the next request of an open connection; no list, no check', async () => {
      const flag = path.join(dir, 'hosts-changed');
      const before = kh.stats();
      const client = raw(bound, v4, 80, [
        { op: 'send', data: 'GET /h/live/1 HTTP/1.1\r\nHost: api.internal\r\n\r\n' },
        { op: 'recv', count: 1 },
        { op: 'waitFile', path: flag },
        { op: 'send', data: 'GET /h/live/2 HTTP/1.1\r\nHost: api.internal\r\n\r\n' },
        { op: 'recv', count: 1 },
      ]);
      try {
        await waitFor(() => upstream.requests.some((x) => x.target === '/h/live/1'), 'the first request');
        kh.setDestinations(pinned(), [{ serviceId: SERVICE, hosts: ['other.internal'] }]);
        writeFileSync(flag, '');
        const out = await client;
        expect({ error: out.error, step: out.errorStep }).toEqual({ error: EACCES, step: 3 });
        expect(delta(before, kh.stats())).toMatchObject({ injected: 1, refusedHost: 1 });
        const ok = await raw(bound, v4, 80, [{ op: 'send', data: 'GET /h/live/3 HTTP/1.1\r\nHost: other.internal\r\n\r\n' }, { op: 'recv', count: 1 }]);
        expect(ok.error).toBeNull();
        kh.setDestinations(pinned());
        const open = await raw(bound, v4, 80, [{ op: 'send', data: 'GET /h/live/4 HTTP/1.1\r\nHost: anything.example\r\n\r\n' }, { op: 'recv', count: 1 }]);
        expect(open.error).toBeNull();
        expect((await upstream.from(open.localPort, 1))[0]?.authorization).toEqual([AUTH_HASH]);
        expect(obj.map('wk_http_host').keys()).toHaveLength(0);
      } finally {
        rmSync(flag, { force: true });
        kh.setDestinations(pinned(), [{ serviceId: SERVICE, hosts: HOSTS }]);
      }
    });

    it('hosts are checked before anything changes: a bad name or too many leave the kernel as it was', () => {
      expect(() => kh.setDestinations(pinned(), [{ serviceId: SERVICE, hosts: ['ok.internal', 'bad host'] }])).toThrow(RangeError);
      expect(() => kh.setDestinations(pinned(), [{ serviceId: SERVICE, hosts: ['x'.repeat(254)] }])).toThrow(RangeError);
      const many = Array.from({ length: 4097 }, (_, i) => `h${i}.internal`);
      expect(() => kh.setDestinations(pinned(), [{ serviceId: SERVICE, hosts: many }])).toThrow(/wk_http_host holds at most 4096 entries; the policy needs 4097/);
      const keys = obj.map('wk_http_host').keys();
      expect(keys).toHaveLength(HOSTS.length);
    });
  });

  describe('audit events', () => {
    type KEvent = Parameters<Parameters<KernelHttp['events']>[0]>[0];
    type KEvents = ReturnType<KernelHttp['events']>;
    const seen: (KEvent & { at: number })[] = [];
    let reader: KEvents | null = null;
    const errors: unknown[] = [];
    /** (Re)opens kh's reader; every event goes into `seen`, stamped with when it arrived. */
    const openReader = (drainIntervalMs: number) => {
      reader?.close();
      reader = kh.events((e) => seen.push({ ...e, at: performance.now() }), { drainIntervalMs, onError: (err) => errors.push(err) });
      return reader;
    };
    const ofPid = (pid: number) => seen.filter((e) => e.pid === pid);
    let fs: typeof import('node:fs');
    let layout: typeof import('../../controller/datapath/layout.js');
    /** epoll instances this process holds: libuv's own, and one per open ring buffer. */
    const eventPollFds = () =>
      fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventpoll]';
        } catch {
          return false;
        }
      }).length;
    /** Python http.client in <top>/bound: `count` GETs on one keep-alive connection; prints its pid and port. */
    const keepAlive = async (addr: string, count: number) => {
      const script = `
import http.client, json, os, sys
c = http.client.HTTPConnection(sys.argv[1], 80, timeout=20)
statuses = []
for i in range(int(sys.argv[2])):
    c.request('GET', '/events/%d' % i)
    r = c.getresponse()
    r.read()
    statuses.append(r.status)
print(json.dumps({'pid': os.getpid(), 'port': c.sock.getsockname()[1], 'statuses': statuses}))
`;
      // 3000 requests take minutes on an emulated CPU.
      const r = await runInCgroup(bound, 'python3', ['-c', script, addr, String(count)], { timeoutMs: 600_000 });
      expect(r.stderr).toBe('');
      return JSON.parse(r.stdout) as { pid: number; port: number; statuses: number[] };
    };
    const sameIp = (a: string, b: string) => new URL(`http://[${a}]/`).hostname === new URL(`http://[${b}]/`).hostname;

    beforeAll(async () => {
      fs = await import('node:fs');
      layout = await import('../../controller/datapath/layout.js');
      // These tests count injections one event each; the default is one per connection and header version.
      kh.setAuditGrain('request');
      // A drain timer too slow to matter: what arrives comes from kernel wake-ups or drain().
      openReader(3_600_000);
      // What earlier tests left in the ring is delivered first.
      await new Promise((r) => setImmediate(r));
      while ((reader as KEvents).drain() > 0);
      seen.length = 0;
    });

    afterAll(() => {
      reader?.close();
      kh.setAuditGrain('connection');
    });

    it('one reader at a time', () => {
      let err: unknown;
      try {
        kh.events(() => {});
      } catch (e) {
        err = e;
      }
      expect((err as { code?: string })?.code).toBe('WK_HTTP_EVENTS_OPEN');
    });

    it('each injected request is one event: the client\'s pid, uid, cgroup, workload, service, destination, socket and header version', async () => {
      const version = kh.bindings()[0]?.version;
      const t0 = process.hrtime.bigint();
      const wall0 = Date.now();
      const c = await keepAlive(v4, 3);
      expect(c.statuses).toEqual([200, 200, 200]);
      const recs = await upstream.from(c.port, 3);
      for (const rec of recs) expect(rec.authorization).toEqual([AUTH_HASH]);
      // Injections do not wake the reader: nothing has arrived before a drain.
      await sleep(50);
      expect(ofPid(c.pid)).toEqual([]);
      expect(reader?.drain()).toBe(3);
      const events = ofPid(c.pid);
      expect(events).toHaveLength(3);
      for (const e of events) {
        expect(e).toMatchObject({
          kind: 'injected',
          reason: 'injected',
          pid: c.pid,
          uid: 0,
          workloadId: WORKLOAD,
          serviceId: SERVICE,
          headerVersion: version,
          address: v4,
          port: 80,
          cgroupId: cgroupId(bound),
        });
        expect(e.monotonicNs).toBeGreaterThan(t0);
        expect(e.monotonicNs).toBeLessThan(process.hrtime.bigint());
        // Wall-clock time converted from the kernel's clock: within the
        // request's own span (give or take the clocks' rounding), however long it took.
        expect(e.time.getTime()).toBeGreaterThanOrEqual(wall0 - 1_000);
        expect(e.time.getTime()).toBeLessThanOrEqual(Date.now() + 1_000);
      }
      // One connection: one socket cookie, in order.
      expect(new Set(events.map((e) => e.cookie)).size).toBe(1);
      expect(events[0]?.cookie).toBeGreaterThan(0n);
      expect(events.map((e) => e.monotonicNs)).toEqual(events.map((e) => e.monotonicNs).sort((a, b) => (a < b ? -1 : 1)));
      // Nothing more comes for them.
      await sleep(50);
      expect(reader?.drain()).toBe(0);
      expect(ofPid(c.pid)).toHaveLength(3);

      // IPv6 (connect6): the address as connect() named it.
      const c6 = await keepAlive(v6, 1);
      reader?.drain();
      const [e6, ...more] = ofPid(c6.pid);
      expect(more).toEqual([]);
      expect(e6).toMatchObject({ kind: 'injected', workloadId: WORKLOAD, serviceId: SERVICE, port: 80 });
      expect(sameIp(e6?.address as string, v6)).toBe(true);
      expect(e6?.cookie).not.toBe(events[0]?.cookie);
      expect(errors).toEqual([]);
    });

    it('a refusal is one event with its reason, and wakes the reader at once', async () => {
      const before = seen.length;
      const trace = 'TRACE /ev-trace HTTP/1.1\r\nHost: upstream\r\n\r\n';
      const r = await raw(bound, v4, 80, [{ op: 'send', data: get('/ev-before') }, { op: 'recv', count: 1 }, { op: 'send', data: trace }, { op: 'send', data: get('/ev-after') }]);
      expect(r.error).toBe(EACCES);
      // No drain() and a timer an hour away: only the kernel's wake-up can deliver it.
      await waitFor(() => seen.slice(before).some((e) => e.kind === 'refused'), 'the refused event');
      const fresh = seen.slice(before);
      // The injection before it came along with the wake-up; the dropped write after it is no event.
      expect(fresh.map((e) => [e.kind, e.reason])).toEqual([
        ['injected', 'injected'],
        ['refused', 'refusedMethod'],
      ]);
      const [inj, ref] = fresh;
      expect(ref).toMatchObject({ workloadId: WORKLOAD, serviceId: SERVICE, address: v4, port: 80, cookie: inj?.cookie, pid: inj?.pid, headerVersion: inj?.headerVersion });

      // Refused at connect() (TCP Fast Open): the same shape, from the connect() program.
      const tfo = await raw(bound, v4, 80, [{ op: 'send', data: get('/ev-tfo') }], { fastopen: true });
      expect(tfo.connectError).toBe(1);
      await waitFor(() => seen.slice(before).some((e) => e.reason === 'refusedFastOpen'), 'the Fast Open event');
      expect(seen.slice(before).filter((e) => e.reason === 'refusedFastOpen')).toEqual([
        expect.objectContaining({ kind: 'refused', workloadId: WORKLOAD, serviceId: SERVICE, address: v4, port: 80, uid: 0, cgroupId: cgroupId(bound) }),
      ]);
    });

    it('quiet periods are flushed by the drain timer', async () => {
      openReader(30);
      const c = await keepAlive(v4, 1);
      await waitFor(() => ofPid(c.pid).length === 1, 'the timer to deliver the injected event');
      expect(ofPid(c.pid)[0]).toMatchObject({ kind: 'injected', pid: c.pid });
    });

    it('with the connection grain, an injection is one event per connection and header version; refusals still each', async () => {
      kh.setAuditGrain('connection');
      try {
        const c = await keepAlive(v4, 4);
        expect(c.statuses).toEqual([200, 200, 200, 200]);
        for (const rec of await upstream.from(c.port, 4)) expect(rec.authorization).toEqual([AUTH_HASH]);
        reader?.drain();
        expect(ofPid(c.pid).map((e) => e.kind)).toEqual(['injected']);

        // A rotation mid-connection: the first request under the new line is reported too.
        const flag = path.join(dir, 'go-grain');
        const before = seen.length;
        const client = raw(bound, v4, 80, [
          { op: 'send', data: get('/grain/1') }, { op: 'recv', count: 1 },
          { op: 'send', data: get('/grain/2') }, { op: 'recv', count: 1 },
          { op: 'waitFile', path: flag },
          { op: 'send', data: get('/grain/3') }, { op: 'recv', count: 1 },
          { op: 'send', data: get('/grain/4') }, { op: 'recv', count: 1 },
        ]);
        await waitFor(() => upstream.requests.some((x) => x.target === '/grain/2'), '/grain/2');
        kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
        const version = kh.bindings()[0]?.version;
        writeFileSync(flag, '');
        expect((await client).error).toBeNull();
        reader?.drain();
        const events = seen.slice(before).filter((e) => e.kind === 'injected');
        expect(events).toHaveLength(2);
        expect(events[1]?.headerVersion).toBe(version);
        expect(events[0]?.cookie).toBe(events[1]?.cookie);

        const r = await raw(bound, v4, 80, [{ op: 'send', data: 'TRACE /grain HTTP/1.1\r\nHost: upstream\r\n\r\n' }]);
        expect(r.error).toBe(EACCES);
        await waitFor(() => seen.some((e) => e.kind === 'refused' && e.reason === 'refusedMethod'), 'the refusal event');
      } finally {
        kh.setAuditGrain('request');
      }
    });

    it('usage: every injected request is counted in wk_http_usage, exactly, per binding and header version, on several connections; the connection grain reports each connection once', async () => {
      kh.setAuditGrain('connection');
      try {
        const version = kh.bindings().find((b) => b.workloadId === WORKLOAD && b.serviceId === SERVICE)?.version as number;
        const epoch = kh.idEpoch();
        const mine = (u: ReturnType<KernelHttp['usage']>) =>
          u.find((e) => e.workloadId === WORKLOAD && e.serviceId === SERVICE && e.headerVersion === version && e.epoch === epoch);
        const before = mine(kh.usage())?.requests ?? 0n;
        const statsBefore = kh.stats();
        const counts = [3, 10, 7, 1];
        const clients = await Promise.all(counts.map((n) => keepAlive(v4, n)));
        for (const c of clients) expect(c.statuses.every((x) => x === 200)).toBe(true);
        const total = counts.reduce((a, b) => a + b, 0);
        const after = mine(kh.usage());
        expect(after && after.requests - before).toBe(BigInt(total));
        expect(after && after.firstNs > 0n && after.firstNs <= after.lastNs && after.lastNs <= process.hrtime.bigint()).toBe(true);
        expect(delta(statsBefore, kh.stats()).injected).toBe(total);
        // One event per connection, not per request.
        reader?.drain();
        for (const c of clients) expect(ofPid(c.pid).map((e) => e.kind)).toEqual(['injected']);
      } finally {
        kh.setAuditGrain('request');
      }
    });

    it('usage: a rotation counts under the new header version; a deleted entry is made again by the next request', async () => {
      const epoch = kh.idEpoch();
      const flag = path.join(dir, 'go-usage');
      const first = kh.bindings().find((b) => b.workloadId === WORKLOAD && b.serviceId === SERVICE)?.version as number;
      const of = (v: number) => kh.usage().find((e) => e.workloadId === WORKLOAD && e.serviceId === SERVICE && e.headerVersion === v && e.epoch === epoch)?.requests ?? 0n;
      const before = of(first);
      const client = raw(bound, v4, 80, [
        { op: 'send', data: get('/usage/1') }, { op: 'recv', count: 1 },
        { op: 'send', data: get('/usage/2') }, { op: 'recv', count: 1 },
        { op: 'waitFile', path: flag },
        { op: 'send', data: get('/usage/3') }, { op: 'recv', count: 1 },
      ]);
      await waitFor(() => upstream.requests.some((x) => x.target === '/usage/2'), '/usage/2');
      const next = kh.setHeader(WORKLOAD, SERVICE, { name: 'Authorization', value: AUTH });
      writeFileSync(flag, '');
      expect((await client).error).toBeNull();
      expect(of(first) - before).toBe(2n);
      expect(of(next)).toBe(1n);
      kh.forgetUsage({ workloadId: WORKLOAD, serviceId: SERVICE, headerVersion: next, epoch });
      expect(of(next)).toBe(0n);
      const c = await keepAlive(v4, 2);
      expect(c.statuses).toEqual([200, 200]);
      expect(of(next)).toBe(2n);
    });

    it('events carry no header bytes: not the injected line, not the client\'s own header', async () => {
      reader?.close();
      const records: Buffer[] = [];
      const ring = new (native().RingBuffer)(obj.map('wk_http_events'), (data, sizes) => {
        let off = 0;
        for (const size of sizes) records.push(data.subarray(off, (off += size)));
      });
      try {
        const ok = await keepAlive(v4, 2);
        expect(ok.statuses).toEqual([200, 200]);
        const own = await raw(bound, v4, 80, [{ op: 'send', data: get('/ev-own', 'Authorization: Bearer client-own-secret\r\n') }, { op: 'recv', count: 1 }]);
        expect(own.error).toBe(EACCES);
        const refusal = (b: Buffer) => layout.decodeHttpEvent(b).reason === 'refusedHeaderPresent';
        await waitFor(() => (ring.consume(), records.some(refusal)), 'the refusal record');
        const mine = records.map((b) => layout.decodeHttpEvent(b)).filter((e) => e.pid === ok.pid || e.reason === 'refusedHeaderPresent');
        expect(mine.map((e) => e.reason)).toEqual(['injected', 'injected', 'refusedHeaderPresent']);
      } finally {
        ring.close();
      }
      const line = headerLine({ name: 'Authorization', value: AUTH }).line;
      for (const rec of records) {
        expect(rec.length).toBe(64);
        // No 6-byte run of the injected line (or of the token alone) anywhere in a record.
        for (let i = 0; i + 6 <= line.length; i++) expect(rec.includes(line.subarray(i, i + 6))).toBe(false);
        expect(rec.includes('client-own')).toBe(false);
        expect(rec.includes('Bearer')).toBe(false);
      }
      openReader(30);
    });

    it('a busy ring wakes the reader by itself; events flow while the JavaScript thread stays responsive; none is lost', async () => {
      // No timer to help: what arrives during the run comes from the kernel's wake-ups.
      openReader(3_600_000);
      const requests = 3000;
      const statsBefore = kh.stats();
      // A timer on the same thread: when it runs says whether the thread was free.
      const tickAt: number[] = [];
      const tick = setInterval(() => tickAt.push(performance.now()), 5);
      let doneAt = 0;
      let c: { pid: number; port: number; statuses: number[] };
      try {
        c = await keepAlive(v4, requests);
        doneAt = performance.now();
        expect(c.statuses.every((s) => s === 200)).toBe(true);
        // Delivered while the client was still sending, not only once it was done.
        const during = ofPid(c.pid).filter((e) => e.at < doneAt).map((e) => e.at);
        expect(during.length).toBeGreaterThan(0);
        // ...in batches with timer runs between them: the reader never held
        // the thread for the whole run (a blocking poll would deliver every
        // batch between the same two ticks). Order only, no durations: the
        // machine may be as slow as it likes.
        const between = new Set<number>();
        let t = 0;
        for (const at of during) {
          while (t < tickAt.length && (tickAt[t] as number) < at) t++;
          between.add(t);
        }
        expect(between.size).toBeGreaterThan(2);
        // Less than the wake-up mark may still wait for a drain.
        reader?.drain();
        expect(ofPid(c.pid).length).toBe(requests);
      } finally {
        clearInterval(tick);
        openReader(30);
      }
      expect(ofPid(c.pid)).toHaveLength(requests);
      expect(new Set(ofPid(c.pid).map((e) => e.cookie)).size).toBe(1);
      const d = delta(statsBefore, kh.stats());
      expect(d.injected).toBe(requests);
      expect(d.eventsLost).toBeUndefined();
    });

    it('close() stops delivery and frees the poll; what was written meanwhile waits in the ring', async () => {
      const pollsOpen = eventPollFds();
      reader?.close();
      reader?.close(); // idempotent
      expect(reader?.closed).toBe(true);
      expect(eventPollFds()).toBe(pollsOpen - 1);
      const n = seen.length;
      const c = await keepAlive(v4, 1);
      const refused = await raw(bound, v4, 80, [{ op: 'send', data: get('/ev-closed', 'Upgrade: x\r\n') }]);
      expect(refused.error).toBe(EACCES);
      await sleep(200);
      expect(seen.length).toBe(n);
      expect(reader?.drain()).toBe(0);
      // A new reader gets them.
      openReader(30);
      expect(eventPollFds()).toBe(pollsOpen);
      await waitFor(() => ofPid(c.pid).length === 1 && seen.slice(n).some((e) => e.reason === 'refusedUpgrade'), 'the events written while closed');
      expect(errors).toEqual([]);
    });

    it('KernelHttp.close() closes its reader (a second object, on an empty cgroup)', () => {
      reader?.close();
      const pollsClosed = eventPollFds();
      const idle = createCgroup(cgRoot, path.relative(cgRoot, path.join(top, 'events-idle')));
      const o2 = loadObject({ pushWatch: pushWatchRefused === null });
      try {
        const kh2 = KernelHttp.attach(o2, idle);
        const r2 = kh2.events(() => {});
        expect(eventPollFds()).toBe(pollsClosed + 1);
        kh2.close();
        expect(r2.closed).toBe(true);
        expect(eventPollFds()).toBe(pollsClosed);
        expect(() => kh2.events(() => {})).toThrow(/closed/);
      } finally {
        o2.close();
      }
    });
  });
});
