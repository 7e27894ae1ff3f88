/**
 * Egress policy on the real kernel: bpf/egress.bpf.c and the connect()
 * hooks of bpf/redirect.bpf.c, driven through Datapath.setEgress(), with
 * real processes in test cgroups making real connect(), send() and
 * sendto() calls to listeners on loopback.
 *
 * Layout: the cgroup programs attach to <top> only. Workload 1 (<top>/enforce)
 * is restricted and enforced, workload 2 (<top>/audit) restricted in audit
 * mode, workload 3 (<top>/free) has no egress section; processes in
 * <top>/none belong to no workload. Ports are picked at random from
 * BASE..BASE+39 per run; listeners on 127.0.0.1, 127.0.0.2 and ::1 answer
 * on them, so that an allowed connect() completes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { randomBytes, randomInt } from 'node:crypto';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { Datapath, type EgressEvent, type EgressEvents, type EgressWorkload } from '../../controller/datapath/datapath.js';
import { cgroupId, findCgroup2Root } from '../../controller/cgroup.js';
import { native } from '../../controller/datapath/native.js';
import { PinnedMaps } from '../../controller/datapath/pinned.js';
import { WK_EGRESS_MAX_PREFIXES, WK_EGRESS_MAX_RANGES } from '../../controller/datapath/layout.js';
import type { PlanEgress, PlanEgressRule } from '../../controller/policy/types.js';
import { WirekeyError } from '../../controller/errors.js';
import { kernelSkipReason } from '../support/requirements.js';
import { createCgroup, removeCgroupTree } from '../support/cgroup.js';
import { startDriven, type DrivenProcess } from '../support/driven.js';
import { createTestHost, type TestHost } from '../support/netns.js';
import { waitFor } from '../support/wait.js';

const skip = kernelSkipReason();
const EPERM = 1;
const ENFORCE = 1;
const AUDIT = 2;
const FREE = 3;
const NOBODY = 65534;
const PYTHON = '/usr/bin/python3';

/**
 * One line in, one line out: "tcp HOST PORT", "tfo HOST PORT" (TCP Fast
 * Open: sendto() with MSG_FASTOPEN, no connect()), "udp HOST PORT"
 * (connect, then send), "sendto HOST PORT" (unconnected UDP). HOST may be "m:a.b.c.d":
 * an AF_INET6 socket to ::ffff:a.b.c.d. "socket 4|6 stream|dgram|raw PROTO"
 * makes a socket and closes it. "route OP tcp|udp HOST PORT" routes by
 * hops of its own: OP ipopt sets IP_OPTIONS (loose source route via
 * 127.0.0.1), ipclear sets none, retopts sends the same option as a control
 * message (IP_RETOPTS), rthdr sets an IPv6 routing header (type 4, one
 * segment, ::1); then a udp socket sends a datagram (the send, not its
 * delivery: a loopback receiver drops source-routed packets) and a tcp one
 * stops there. "bind tcp|udp HOST PORT" binds a socket there and closes
 * it. Answers "ok" or "errno N"; "id" answers "pid N uid N".
 */
const CLIENT = String.raw`
import os, socket, sys
KINDS = {'stream': socket.SOCK_STREAM, 'dgram': socket.SOCK_DGRAM, 'raw': socket.SOCK_RAW}
LSRR = bytes([0x83, 7, 4]) + socket.inet_aton('127.0.0.1') + b'\x00'
SRH = bytes([0, 2, 4, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, '::1')
IP_OPTIONS, IP_RETOPTS, IPV6_RTHDR = 4, 7, 57
for raw in sys.stdin:
    parts = raw.split()
    try:
        if parts[0] == 'id':
            print('pid %d uid %d' % (os.getpid(), os.getuid()), flush=True)
            continue
        if parts[0] == 'route':
            op, kind, host, port = parts[1], parts[2], parts[3], int(parts[4])
            s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM if kind == 'tcp' else socket.SOCK_DGRAM)
            try:
                if op == 'ipopt':
                    s.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, LSRR)
                elif op == 'ipclear':
                    s.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, b'')
                elif op == 'rthdr':
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RTHDR, SRH)
                ancillary = [(socket.IPPROTO_IP, IP_RETOPTS, LSRR)] if op == 'retopts' else []
                if kind == 'udp':
                    s.sendmsg([b'wk-egress'], ancillary, 0, (host, port))
                print('ok', flush=True)
            finally:
                s.close()
            continue
        if parts[0] == 'bind':
            kind, host, port = parts[1], parts[2], int(parts[3])
            s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM if kind == 'tcp' else socket.SOCK_DGRAM)
            try:
                s.bind((host, port))
                print('ok', flush=True)
            finally:
                s.close()
            continue
        if parts[0] == 'socket':
            fam = socket.AF_INET6 if parts[1] == '6' else socket.AF_INET
            socket.socket(fam, KINDS[parts[2]], int(parts[3])).close()
            print('ok', flush=True)
            continue
        op, host, port = parts[0], parts[1], int(parts[2])
        if host.startswith('m:'):
            fam, addr = socket.AF_INET6, '::ffff:' + host[2:]
        else:
            fam, addr = (socket.AF_INET6 if ':' in host else socket.AF_INET), host
        kind = socket.SOCK_STREAM if op in ('tcp', 'tfo') else socket.SOCK_DGRAM
        s = socket.socket(fam, kind)
        s.settimeout(10)
        try:
            if op == 'tcp':
                s.connect((addr, port))
            elif op == 'tfo':
                s.sendto(b'wk-egress', socket.MSG_FASTOPEN, (addr, port))
            elif op == 'udp':
                s.connect((addr, port))
                s.send(b'wk-egress')
            else:
                s.sendto(b'wk-egress', (addr, port))
            print('ok', flush=True)
        finally:
            s.close()
    except OSError as e:
        print('errno %d' % e.errno, flush=True)
`;

const ok = 'ok';
const refused = `errno ${EPERM}`;

function rule(id: number, cidrs: string[], ports: [number, number][], protocol: PlanEgressRule['protocol'] = 'tcp'): PlanEgressRule {
  return { id, label: `allow[${id}]`, source: { file: 'test.yaml', line: id, column: 1 }, cidrs, hosts: [], ports, protocol, tls: false };
}

function nameRule(id: number, hosts: string[]): PlanEgressRule {
  return { id, label: `allow[${id}]`, source: { file: 'test.yaml', line: id, column: 1 }, cidrs: [], hosts, ports: [[443, 443]], protocol: 'tcp', tls: true };
}

describe.skipIf(skip)(`egress policy on the real kernel${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const root = skip ? '' : findCgroup2Root();
  const tag = randomBytes(3).toString('hex');
  const pinDir = `/sys/fs/bpf/wirekey-test-egress-${tag}`;
  let top = '';
  const cg: Record<'enforce' | 'audit' | 'free' | 'none', string> = { enforce: '', audit: '', free: '', none: '' };
  let dp: Datapath | undefined;
  let reader: EgressEvents | undefined;
  const events: EgressEvent[] = [];
  const servers: Server[] = [];
  const udp: UdpSocket[] = [];
  const procs: DrivenProcess[] = [];
  let host: TestHost | undefined;
  const received: { port: number; from: string }[] = [];

  // Ports: A allowed on 127.0.0.1 (TCP), A6 on ::1, B never allowed, U for
  // UDP, R..R+9 a range allowed on all of 127.0.0.0/8, P bound to the proxy.
  let BASE = 0;
  const port = { A: 0, A6: 0, B: 0, U: 0, R: 0, P: 0, proxy: 0 };
  let quicListening = false;

  const enforcedRules = (): PlanEgress => ({
    mode: 'enforce',
    rules: [
      rule(1, ['127.0.0.1/32'], [[port.A, port.A]]),
      rule(2, ['::1/128'], [[port.A6, port.A6]]),
      rule(3, ['127.0.0.0/8'], [[port.R, port.R + 9]]),
      rule(4, ['127.0.5.3/32'], [[53, 53]], 'udp'),
      rule(5, ['127.0.0.1/32'], [[port.U, port.U]], 'udp'),
      rule(6, ['127.0.4.43/32'], [[443, 443]], 'tcp'),
      rule(7, ['::1/128'], [[port.U, port.U]], 'any'),
      nameRule(8, ['api.example.com']),
    ],
  });
  const auditRules = (): PlanEgress => ({ mode: 'audit', rules: [rule(1, ['127.0.0.1/32'], [[port.A, port.A]])] });
  const plan = (enforce: PlanEgress = enforcedRules()): EgressWorkload[] => [
    { id: ENFORCE, name: 'enforced', egress: enforce },
    { id: AUDIT, name: 'audited', egress: auditRules() },
    { id: FREE, name: 'free' },
  ];

  const listen = (hostAddr: string, p: number) =>
    new Promise<Server>((resolve, reject) => {
      const s = createServer((c) => c.destroy());
      s.once('error', reject);
      s.listen({ host: hostAddr, port: p, exclusive: true, ipv6Only: hostAddr.includes(':') }, () => resolve(s));
    });
  const bindUdp = (hostAddr: string, p: number) =>
    new Promise<UdpSocket>((resolve, reject) => {
      const s = createSocket({ type: hostAddr.includes(':') ? 'udp6' : 'udp4', ipv6Only: hostAddr.includes(':') });
      s.on('message', (_m, rinfo) => received.push({ port: p, from: rinfo.address }));
      s.once('error', reject);
      s.bind({ address: hostAddr, port: p, exclusive: true }, () => resolve(s));
    });

  const start = (where: string, opts: { uid?: number; netns?: string } = {}) => {
    let cmd = PYTHON;
    let args = ['-u', '-c', CLIENT];
    if (opts.uid !== undefined) [cmd, args] = ['setpriv', [`--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', cmd, ...args]];
    // Entering the namespace takes root: setpriv runs inside it.
    if (opts.netns) [cmd, args] = ['ip', ['netns', 'exec', opts.netns, cmd, ...args]];
    const p = startDriven(where, cmd, args);
    procs.push(p);
    return p;
  };
  const eventsOf = (pid: number) => events.filter((e) => e.pid === pid);
  const waitEvents = (pid: number, n: number, what: string) => waitFor(() => eventsOf(pid).length >= n, `${n} egress events of pid ${pid} (${what}); got ${eventsOf(pid).length}`);

  beforeAll(async () => {
    top = createCgroup(root, `wirekey-test-egress-${tag}`);
    for (const k of Object.keys(cg) as (keyof typeof cg)[]) cg[k] = createCgroup(top, k);

    // Listeners first: the ports are whatever was free.
    for (let attempt = 0; ; attempt++) {
      BASE = randomInt(20000, 50000);
      Object.assign(port, { A: BASE, A6: BASE + 1, B: BASE + 2, U: BASE + 3, P: BASE + 4, proxy: BASE + 5, R: BASE + 20 });
      try {
        for (const p of [port.A, port.B, port.R + 5, port.P, port.proxy]) servers.push(await listen('127.0.0.1', p));
        for (const p of [port.A]) servers.push(await listen('127.0.0.2', p));
        for (const p of [port.A6, port.B]) servers.push(await listen('::1', p));
        udp.push(await bindUdp('127.0.0.1', port.U), await bindUdp('::1', port.U));
        break;
      } catch (err) {
        for (const s of servers.splice(0)) s.close();
        for (const s of udp.splice(0)) s.close();
        if (attempt > 5) throw err;
      }
    }
    try {
      servers.push(await listen('127.0.4.43', 443));
      quicListening = true;
    } catch {
      /* something listens on every address's 443: an allowed connect() then reaches it, or is refused by it, never EPERM */
    }

    dp = Datapath.open({ cgroupRoot: root, pinDir, proxyPort: port.proxy, kernelHttp: false });
    const id = (dir: string) => cgroupId(dir) as bigint;
    dp.setIdentity({
      cgroups: new Map([
        [id(cg.enforce), [ENFORCE]],
        [id(cg.audit), [AUDIT]],
        [id(cg.free), [FREE]],
      ]),
      exes: [],
      uids: new Map(),
      any: { cgroup: [], exe: [ENFORCE, AUDIT, FREE], uid: [ENFORCE, AUDIT, FREE] },
    });
    dp.setEgress(plan());
    reader = dp.egressEvents((e) => events.push(e), { onError: (err) => events.push(err as EgressEvent) });
    dp.attachRedirect(top);
  });

  afterAll(async () => {
    for (const p of procs) p.kill();
    reader?.close();
    dp?.close();
    for (const s of servers) s.close();
    for (const s of udp) s.close();
    await host?.destroy();
    if (top) removeCgroupTree(root, top);
  });

  it('loads, attaches connect() and sendmsg() hooks, and reports its maps', () => {
    const usage = new Map(dp?.mapUsage().map((u) => [u.name, u]));
    expect(usage.get('wk_egress_rules')).toMatchObject({ capacity: WK_EGRESS_MAX_PREFIXES });
    // Workloads 1 and 2, and key 0 (some workload is restricted).
    expect(usage.get('wk_egress_policy')?.entries).toBe(3);
    // Enforced: 127.0.0.1/32, 127.0.0.0/8, 127.0.4.43/32 and ::1 (TCP); 127.0.5.3, 127.0.0.1 and ::1 (UDP). Audited: one.
    expect(usage.get('wk_egress_rules')?.entries).toBe(8);
    // Read back as `wirekey explain` reads it, from this process and through the pins.
    const installed = dp?.egressOf(ENFORCE);
    expect(installed?.mode).toBe('enforce');
    expect(installed?.entries.map((e) => `${e.protocol} ${e.prefix} ${e.ranges.map((r) => `${r.lo}-${r.hi}#${r.ruleId}`).join(',')}`)).toEqual([
      // Rule 7 (protocol any) is on ::1 for TCP too.
      `tcp ::1 ${port.A6}-${port.A6}#2,${port.U}-${port.U}#7`,
      `tcp 127.0.0.0/8 ${port.R}-${port.R + 9}#3`,
      `tcp 127.0.0.1 ${port.A}-${port.A}#1,${port.R}-${port.R + 9}#3`,
      `tcp 127.0.4.43 443-443#6,${port.R}-${port.R + 9}#3`,
      `udp ::1 ${port.U}-${port.U}#7`,
      `udp 127.0.0.1 ${port.U}-${port.U}#5`,
      'udp 127.0.5.3 53-53#4',
    ]);
    const pinned = new PinnedMaps(pinDir);
    expect(pinned.egress(ENFORCE)).toEqual(installed);
    expect(pinned.egress(AUDIT)?.mode).toBe('audit');
    expect(pinned.egress(FREE)).toBeNull();
    expect(pinned.usage().maps.map((m) => m.name)).toContain('wk_egress_rules');
    // The ring has one read position: a second reader is refused while the first is open.
    expect(() => dp?.egressEvents(() => {})).toThrow(expect.objectContaining({ code: 'WK_EGRESS_EVENTS_OPEN' }));
  });

  it('TCP over IPv4, IPv6 and IPv4-mapped IPv6: allowed destinations connect, others fail with EPERM before any packet', async () => {
    const p = start(cg.enforce);
    const [, pid] = (await p.send('id')).split(' ');
    expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(ok);
    expect(await p.send(`tcp 127.0.0.1 ${port.B}`)).toBe(refused);
    expect(await p.send(`tcp 127.0.0.2 ${port.A}`)).toBe(refused);
    expect(await p.send(`tcp ::1 ${port.A6}`)).toBe(ok);
    expect(await p.send(`tcp ::1 ${port.B}`)).toBe(refused);
    // ::1 is allowed on A6 only, 127.0.0.1 on A only: the families do not mix.
    expect(await p.send(`tcp ::1 ${port.A}`)).toBe(refused);
    expect(await p.send(`tcp m:127.0.0.1 ${port.A}`)).toBe(ok);
    expect(await p.send(`tcp m:127.0.0.1 ${port.B}`)).toBe(refused);
    expect(await p.send(`tcp m:127.0.0.1 ${port.A6}`)).toBe(refused);
    // TCP Fast Open connects from sendto(): judged like connect().
    expect(await p.send(`tfo 127.0.0.1 ${port.A}`)).not.toBe(refused); // EINPROGRESS: a socket with a timeout does not block
    expect(await p.send(`tfo 127.0.0.2 ${port.A}`)).toBe(refused);

    await waitEvents(Number(pid), 7, 'seven refusals');
    const got = eventsOf(Number(pid)).map((e) => `${e.verdict} ${e.hook} ${e.protocol} ${e.address} ${e.port}`);
    expect(got).toEqual([
      `refused connect 6 127.0.0.1 ${port.B}`,
      `refused connect 6 127.0.0.2 ${port.A}`,
      `refused connect 6 ::1 ${port.B}`,
      `refused connect 6 ::1 ${port.A}`,
      `refused connect 6 127.0.0.1 ${port.B}`,
      `refused connect 6 127.0.0.1 ${port.A6}`,
      `refused connect 6 127.0.0.2 ${port.A}`,
    ]);
    const e = eventsOf(Number(pid))[0] as EgressEvent;
    expect(e).toMatchObject({ workloadId: ENFORCE, uid: 0, cgroupId: cgroupId(cg.enforce) });
    expect(e.time).toBeInstanceOf(Date);
  });

  it("a shorter prefix's ports are still allowed under a longer prefix's entry; port ranges are inclusive", async () => {
    const p = start(cg.enforce);
    // 127.0.0.1 has its own entry (/32, port A); the /8's range still applies there.
    expect(await p.send(`tcp 127.0.0.1 ${port.R + 5}`)).toBe(ok);
    expect(await p.send(`tcp 127.0.0.9 ${port.R + 5}`)).not.toBe(refused);
    for (const at of [port.R, port.R + 9]) expect(await p.send(`udp 127.0.0.9 ${at}`)).toBe(refused); // TCP only
    for (const at of [port.R - 1, port.R + 10]) expect(await p.send(`tcp 127.0.0.1 ${at}`)).toBe(refused);
    for (const at of [port.R, port.R + 9]) expect(await p.send(`tcp 127.0.0.1 ${at}`)).not.toBe(refused);
  });

  it('UDP: connected and unconnected (sendto), IPv4, IPv6 and IPv4-mapped', async () => {
    const p = start(cg.enforce);
    const [, pid] = (await p.send('id')).split(' ');
    const before = received.length;
    expect(await p.send(`udp 127.0.0.1 ${port.U}`)).toBe(ok);
    expect(await p.send(`sendto 127.0.0.1 ${port.U}`)).toBe(ok);
    expect(await p.send(`sendto ::1 ${port.U}`)).toBe(ok);
    expect(await p.send(`udp ::1 ${port.U}`)).toBe(ok);
    expect(await p.send(`sendto m:127.0.0.1 ${port.U}`)).toBe(ok);
    await waitFor(() => received.length >= before + 5, 'five datagrams at the UDP listeners');

    // A TCP rule allows no UDP, and no other address.
    expect(await p.send(`udp 127.0.0.1 ${port.A}`)).toBe(refused);
    expect(await p.send(`sendto 127.0.0.1 ${port.A}`)).toBe(refused);
    expect(await p.send(`sendto 127.0.0.2 ${port.U}`)).toBe(refused);
    expect(await p.send(`sendto m:127.0.0.2 ${port.U}`)).toBe(refused);
    expect(await p.send(`sendto ::1 ${port.B}`)).toBe(refused);
    await waitEvents(Number(pid), 5, 'five UDP refusals');
    expect(eventsOf(Number(pid)).map((e) => `${e.hook} ${e.protocol} ${e.address} ${e.port}`)).toEqual([
      `connect 17 127.0.0.1 ${port.A}`,
      `sendmsg 17 127.0.0.1 ${port.A}`,
      `sendmsg 17 127.0.0.2 ${port.U}`,
      `sendmsg 17 127.0.0.2 ${port.U}`,
      `sendmsg 17 ::1 ${port.B}`,
    ]);
  });

  it('DNS to the allowed resolver only; QUIC (UDP 443) refused where TCP 443 is allowed', async () => {
    const p = start(cg.enforce);
    expect(await p.send('sendto 127.0.5.3 53')).toBe(ok);
    expect(await p.send('udp 127.0.5.3 53')).toBe(ok);
    expect(await p.send('sendto 127.0.5.4 53')).toBe(refused);
    expect(await p.send('udp 127.0.5.4 53')).toBe(refused);
    expect(await p.send('tcp 127.0.5.3 53')).toBe(refused);

    expect(await p.send('sendto 127.0.4.43 443')).toBe(refused);
    expect(await p.send('udp 127.0.4.43 443')).toBe(refused);
    const tcp443 = await p.send('tcp 127.0.4.43 443');
    expect(tcp443).not.toBe(refused);
    if (quicListening) expect(tcp443).toBe(ok);
  });

  it("a connect() to a port bound to the proxy for the workload goes to the proxy unchecked (the proxy judges names)", async () => {
    dp?.setPortBindings([{ workloadId: ENFORCE, port: port.P }]);
    try {
      const p = start(cg.enforce);
      const [, pid] = (await p.send('id')).split(' ');
      // 127.0.0.99 is allowed on no port; the proxy's listener answers.
      expect(await p.send(`tcp 127.0.0.99 ${port.P}`)).toBe(ok);
      // Not for UDP, and not for a workload without the binding.
      expect(await p.send(`udp 127.0.0.99 ${port.P}`)).toBe(refused);
      const q = start(cg.audit);
      const [, qpid] = (await q.send('id')).split(' ');
      expect(await q.send(`tcp 127.0.0.99 ${port.P}`)).toBe('errno 111'); // nothing listens there
      await waitEvents(Number(qpid), 1, 'audit would-refuse');
      await waitEvents(Number(pid), 1, 'the UDP refusal');
      expect(eventsOf(Number(pid)).map((e) => `${e.protocol} ${e.port}`)).toEqual([`17 ${port.P}`]);
    } finally {
      dp?.setPortBindings([]);
    }
  });

  it('audit mode refuses nothing and reports every call it would refuse, with pid, uid, workload and destination', async () => {
    const p = start(cg.audit, { uid: NOBODY });
    const [, pidText, , uidText] = (await p.send('id')).split(' ');
    const pid = Number(pidText);
    expect(Number(uidText)).toBe(NOBODY);
    const statsBefore = dp?.egressStats().workloads.get(AUDIT) ?? { refused: 0n, wouldRefuse: 0n };
    expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(ok); // allowed: no event
    expect(await p.send(`tcp 127.0.0.1 ${port.B}`)).toBe(ok);
    expect(await p.send(`tcp ::1 ${port.A6}`)).toBe(ok);
    expect(await p.send(`tcp m:127.0.0.2 ${port.A}`)).toBe(ok);
    expect(await p.send(`udp 127.0.0.1 ${port.U}`)).toBe(ok);
    expect(await p.send(`sendto ::1 ${port.U}`)).toBe(ok);
    await waitEvents(pid, 5, 'five would-refuse events');
    const got = eventsOf(pid);
    expect(got.map((e) => `${e.verdict} ${e.hook} ${e.protocol} ${e.address} ${e.port}`)).toEqual([
      `would-refuse connect 6 127.0.0.1 ${port.B}`,
      `would-refuse connect 6 ::1 ${port.A6}`,
      `would-refuse connect 6 127.0.0.2 ${port.A}`,
      `would-refuse connect 17 127.0.0.1 ${port.U}`,
      `would-refuse sendmsg 17 ::1 ${port.U}`,
    ]);
    for (const e of got) expect(e).toMatchObject({ pid, uid: NOBODY, workloadId: AUDIT, cgroupId: cgroupId(cg.audit) });
    const after = dp?.egressStats().workloads.get(AUDIT);
    expect(after?.wouldRefuse).toBe(statsBefore.wouldRefuse + 5n);
    expect(after?.refused).toBe(statsBefore.refused);
  });

  it('sockets no rule can name (raw, ICMP "ping", UDP-Lite) fail with EPERM at socket() for a restricted workload; audit mode and others may make them', async () => {
    // Ping sockets are open to the groups of net.ipv4.ping_group_range only
    // (before any BPF program runs): let root's group in while this runs.
    const range = '/proc/sys/net/ipv4/ping_group_range';
    const before = readFileSync(range, 'utf8').trim();
    writeFileSync(range, '0 0');
    try {
      const p = start(cg.enforce);
      const pid = Number((await p.send('id')).split(' ')[1]);
      // TCP and UDP however asked for (IPPROTO_IP resolves to them) are judged at connect() and sendmsg().
      for (const kind of ['4 stream 0', '6 stream 0', '4 stream 6', '4 dgram 0', '6 dgram 17']) {
        expect(await p.send(`socket ${kind}`), kind).toBe(ok);
      }
      const others = ['4 raw 1', '4 raw 6', '4 raw 255', '6 raw 58', '4 dgram 1', '6 dgram 58', '4 dgram 136'];
      for (const kind of others) expect(await p.send(`socket ${kind}`), kind).toBe(refused);
      await waitEvents(pid, others.length, 'a refusal per socket');
      expect(eventsOf(pid).map((e) => `${e.verdict} ${e.hook} ${e.family} ${e.socketType} ${e.protocol} ${e.address} ${e.port}`)).toEqual([
        'refused socket ipv4 3 1 undefined undefined',
        'refused socket ipv4 3 6 undefined undefined',
        'refused socket ipv4 3 255 undefined undefined',
        'refused socket ipv6 3 58 undefined undefined',
        'refused socket ipv4 2 1 undefined undefined',
        'refused socket ipv6 2 58 undefined undefined',
        'refused socket ipv4 2 136 undefined undefined',
      ]);
      expect(eventsOf(pid).every((e) => e.workloadId === ENFORCE && e.setId === dp?.egressOf(ENFORCE)?.setId)).toBe(true);

      // Audit mode lets them be made, and reports each.
      const a = start(cg.audit);
      const apid = Number((await a.send('id')).split(' ')[1]);
      for (const kind of ['4 raw 1', '4 dgram 1']) expect(await a.send(`socket ${kind}`), kind).toBe(ok);
      await waitEvents(apid, 2, 'two would-refuse sockets');
      expect(eventsOf(apid).map((e) => `${e.verdict} ${e.hook} ${e.socketType} ${e.protocol}`)).toEqual(['would-refuse socket 3 1', 'would-refuse socket 2 1']);

      // An unrestricted workload and a process of no workload make them all, unreported.
      const free = start(cg.free);
      const none = start(cg.none);
      const quiet: number[] = [];
      for (const q of [free, none]) {
        quiet.push(Number((await q.send('id')).split(' ')[1]));
        for (const kind of others) expect(await q.send(`socket ${kind}`), kind).toBe(ok);
      }
      // An event the enforced process causes after theirs: had theirs been reported, they would be read by now.
      expect(await p.send('socket 4 raw 1')).toBe(refused);
      await waitEvents(pid, others.length + 1, 'the marker refusal');
      for (const q of quiet) expect(eventsOf(q)).toEqual([]);
    } finally {
      writeFileSync(range, before.replace(/\s+/, ' '));
    }
  });

  it('a restricted socket may not route by hops of its own: IP_OPTIONS and IPV6_RTHDR fail with EPERM, a packet carrying options is dropped; audit mode and others may', async () => {
    const asks = [
      `route ipopt udp 127.0.0.1 ${port.U}`,
      `route ipopt tcp 127.0.0.1 ${port.A}`,
      `route retopts udp 127.0.0.1 ${port.U}`,
      `route rthdr udp ::1 ${port.U}`,
    ];
    const p = start(cg.enforce);
    const pid = Number((await p.send('id')).split(' ')[1]);
    for (const ask of asks) expect(await p.send(ask), ask).toBe(refused);
    // Setting no options is not routing by hops of one's own.
    expect(await p.send(`route ipclear udp 127.0.0.1 ${port.U}`)).toBe(ok);
    await waitEvents(pid, asks.length, 'a refusal per route');
    expect(eventsOf(pid).map((e) => `${e.verdict} ${e.hook} ${e.family} ${e.socketType} ${e.protocol} ${e.address} ${e.port}`)).toEqual([
      'refused route ipv4 2 17 undefined undefined',
      'refused route ipv4 1 6 undefined undefined',
      // The packet's: addressed to its first hop.
      'refused route ipv4 2 17 127.0.0.1 undefined',
      'refused route ipv6 2 17 undefined undefined',
    ]);
    expect(eventsOf(pid).every((e) => e.workloadId === ENFORCE && e.setId === dp?.egressOf(ENFORCE)?.setId)).toBe(true);

    // Audit mode lets them through, and reports each.
    const a = start(cg.audit);
    const apid = Number((await a.send('id')).split(' ')[1]);
    for (const ask of asks) expect(await a.send(ask), ask).toBe(ok);
    // One route event per socket, whether its option was set or its packet carried one (its destination may be a sendmsg one of its own).
    const routes = () => eventsOf(apid).filter((e) => e.hook === 'route');
    await waitFor(() => routes().length >= asks.length, 'a would-refuse per route');
    expect(routes().map((e) => `${e.verdict} ${e.hook} ${e.protocol} ${e.address}`)).toEqual([
      'would-refuse route 17 undefined', 'would-refuse route 6 undefined', 'would-refuse route 17 127.0.0.1', 'would-refuse route 17 undefined',
    ]);

    // An unrestricted workload and a process of no workload route as they like, unreported.
    const quiet: number[] = [];
    for (const q of [start(cg.free), start(cg.none)]) {
      quiet.push(Number((await q.send('id')).split(' ')[1]));
      for (const ask of asks) expect(await q.send(ask), ask).toBe(ok);
    }
    // An event the enforced process causes after theirs: had theirs been reported, they would be read by now.
    expect(await p.send(asks[0] as string)).toBe(refused);
    await waitEvents(pid, asks.length + 1, 'the marker refusal');
    for (const q of quiet) expect(eventsOf(q)).toEqual([]);
  });

  it('an unrestricted workload, a process of no workload and a process in another network namespace are left alone', async () => {
    host ??= await createTestHost('eg');
    const free = start(cg.free);
    const none = start(cg.none);
    const elsewhere = start(cg.enforce, { netns: host.ns });
    const pids: number[] = [];
    for (const p of [free, none, elsewhere]) pids.push(Number((await p.send('id')).split(' ')[1]));
    for (const p of [free, none]) {
      expect(await p.send(`tcp 127.0.0.1 ${port.B}`)).toBe(ok);
      expect(await p.send(`sendto 127.0.0.2 ${port.U}`)).toBe(ok);
      expect(await p.send(`udp ::1 ${port.B}`)).toBe(ok);
    }
    // Nothing listens in the test namespace: refused by the peer, not by wirekey.
    expect(await elsewhere.send(`tcp 127.0.0.1 ${port.B}`)).toBe('errno 111');
    expect(await elsewhere.send(`sendto 127.0.0.2 ${port.U}`)).toBe(ok);
    // The enforced workload in the host namespace, as a marker that every event before it has arrived.
    const marker = start(cg.enforce);
    const mpid = Number((await marker.send('id')).split(' ')[1]);
    expect(await marker.send(`tcp 127.0.0.1 ${port.B}`)).toBe(refused);
    await waitEvents(mpid, 1, 'the marker refusal');
    for (const pid of pids) expect(eventsOf(pid)).toEqual([]);
  });

  it('only uid 0 may bind the proxy port in the host namespace (any address, TCP or UDP): others get EPERM, counted; other ports and namespaces are left alone', async () => {
    host ??= await createTestHost('eg');
    const before = dp?.stats().proxyPortBinds ?? 0n;
    const nobody = start(cg.none, { uid: NOBODY });
    const asRoot = start(cg.none);
    const elsewhere = start(cg.none, { uid: NOBODY, netns: host.ns });
    for (const where of ['127.0.0.1', '0.0.0.0', '::1', '::']) expect(await nobody.send(`bind tcp ${where} ${port.proxy}`)).toBe(refused);
    expect(await nobody.send(`bind udp 127.0.0.1 ${port.proxy}`)).toBe(refused);
    // Another port: the kernel's own answer (the test's listener has it), not wirekey's.
    expect(await nobody.send(`bind tcp 127.0.0.1 ${port.A}`)).toBe('errno 98');
    // Root gets past the program to the same answer.
    expect(await asRoot.send(`bind tcp 127.0.0.1 ${port.proxy}`)).toBe('errno 98');
    // In another network namespace the port of that number is not the proxy's.
    expect(await elsewhere.send(`bind tcp 127.0.0.1 ${port.proxy}`)).toBe(ok);
    expect(dp?.stats().proxyPortBinds).toBe(before + 5n);
  });

  it('IPv4 and IPv6 are one address space: ::/0 allows IPv4 too, on IPv4 and IPv6 sockets; a narrower IPv6 prefix does not', async () => {
    const p = start(cg.enforce);
    try {
      dp?.setEgress(plan({ mode: 'enforce', rules: [rule(1, ['::/0'], [[port.A, port.A]]), rule(2, ['2001:db8::/32'], [[port.B, port.B]])] }));
      expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(ok);
      expect(await p.send(`tcp m:127.0.0.2 ${port.A}`)).toBe(ok);
      expect(await p.send(`tcp ::1 ${port.A}`)).not.toBe(refused);
      expect(await p.send(`tcp 127.0.0.1 ${port.B}`)).toBe(refused);
      expect(await p.send(`tcp ::1 ${port.B}`)).toBe(refused);
    } finally {
      dp?.setEgress(plan());
    }
  });

  it("setEgress switches a live process's rules at its next connect(), under a new set, the old one removed", async () => {
    const p = start(cg.enforce);
    expect(await p.send(`tcp 127.0.0.2 ${port.A}`)).toBe(refused);
    expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(ok);
    const rulesMap = native().openPinnedMap(path.join(pinDir, 'wk_egress_rules'));
    const before = rulesMap.keys().length;
    const moved: PlanEgress = { mode: 'enforce', rules: [rule(1, ['127.0.0.2/32'], [[port.A, port.A]])] };
    try {
      dp?.setEgress(plan(moved));
      expect(await p.send(`tcp 127.0.0.2 ${port.A}`)).toBe(ok);
      expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(refused);
      // Enforced: one entry now, audited one: the old set is gone.
      expect(rulesMap.keys().length).toBe(2);
      // Enforce to audit and back, with the same rules: a flip of the workload's entry alone.
      dp?.setEgress(plan({ ...moved, mode: 'audit' }));
      expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(ok);
      dp?.setEgress(plan(moved));
      expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(refused);
      // No egress section: unrestricted at once.
      dp?.setEgress([{ id: ENFORCE, name: 'enforced' }, { id: AUDIT, name: 'audited', egress: auditRules() }]);
      expect(await p.send(`tcp 127.0.0.1 ${port.B}`)).toBe(ok);
      expect(rulesMap.keys().length).toBe(1);
    } finally {
      dp?.setEgress(plan());
    }
    expect(rulesMap.keys().length).toBe(before);
    expect(await p.send(`tcp 127.0.0.2 ${port.A}`)).toBe(refused);
  });

  it('a policy that does not fit is refused whole, naming the workload and how much over, with the maps unchanged', async () => {
    const rulesMap = native().openPinnedMap(path.join(pinDir, 'wk_egress_rules'));
    const policyMap = native().openPinnedMap(path.join(pinDir, 'wk_egress_policy'));
    const snapshot = () => [rulesMap, policyMap].map((m) => m.keys().map((k) => `${k.toString('hex')}=${m.lookup(k)?.toString('hex')}`).sort());
    const before = snapshot();

    // 17 separate ports under one prefix: one more than an entry holds.
    const spread: PlanEgress = { mode: 'enforce', rules: [rule(1, ['10.0.0.0/8'], Array.from({ length: WK_EGRESS_MAX_RANGES + 1 }, (_, i): [number, number] => [1000 + 2 * i, 1000 + 2 * i]))] };
    let err: unknown;
    try {
      dp?.setEgress([...plan(), { id: 4, name: 'spread', egress: spread }]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(WirekeyError);
    expect(err).toMatchObject({ code: 'WK_EGRESS_TOO_LARGE', workload: 'spread', over: 1 });
    expect((err as Error).message).toMatch(/workload "spread": egress to 10\.0\.0\.0\/8 \(tcp\) needs 17 .* at most 16 per prefix \(1 over\)/);

    // Ports inherited from a containing prefix count too: 9 + 8 separate ranges under 10.1.0.0/16.
    const nested: PlanEgress = {
      mode: 'enforce',
      rules: [
        rule(1, ['10.0.0.0/8'], Array.from({ length: 9 }, (_, i): [number, number] => [2000 + 2 * i, 2000 + 2 * i])),
        rule(2, ['10.1.0.0/16'], Array.from({ length: 8 }, (_, i): [number, number] => [3000 + 2 * i, 3000 + 2 * i])),
      ],
    };
    expect(() => dp?.setEgress([...plan(), { id: 4, name: 'nested', egress: nested }])).toThrow(/nested.*10\.1\.0\.0\/16.*needs 17/);

    // More prefixes than the kernel holds, all workloads together.
    const many = (n: number, second: number): PlanEgress => ({
      mode: 'enforce',
      rules: [rule(1, Array.from({ length: n }, (_, i) => `10.${second}.${i >> 8}.${i & 255}/32`), [[80, 80]], 'any')],
    });
    expect(() => dp?.setEgress([...plan(), { id: 4, name: 'big', egress: many(WK_EGRESS_MAX_PREFIXES / 2, 2) }])).toThrow(
      new RegExp(`need ${WK_EGRESS_MAX_PREFIXES + 8} kernel prefix entries.*\\(8 over\\).*"big" ${WK_EGRESS_MAX_PREFIXES}`),
    );
    expect(snapshot()).toEqual(before);

    // And the enforced workload is still enforced by the old rules.
    const p = start(cg.enforce);
    expect(await p.send(`tcp 127.0.0.1 ${port.A}`)).toBe(ok);
    expect(await p.send(`tcp 127.0.0.1 ${port.B}`)).toBe(refused);
  });

  it('counts refusals per workload; the reader saw every event without error', async () => {
    const stats = dp?.egressStats();
    expect(new PinnedMaps(pinDir).egressStats()).toEqual(stats);
    const counted = stats?.workloads.get(ENFORCE)?.refused ?? 0n;
    const delivered = () => events.filter((e) => e.workloadId === ENFORCE && e.verdict === 'refused').length;
    await waitFor(() => BigInt(delivered()) >= counted, `${counted} refusal events of workload ${ENFORCE}; got ${delivered()}`);
    expect(stats?.workloads.get(ENFORCE)?.refused).toBeGreaterThan(0n);
    // One, while the reload test had it in audit mode.
    expect(stats?.workloads.get(ENFORCE)?.wouldRefuse).toBe(1n);
    expect(stats?.workloads.has(FREE)).toBe(false);
    expect(stats?.eventsLost).toBe(0n);
    expect(events.filter((e) => !(typeof e === 'object' && 'verdict' in e))).toEqual([]);
    expect(BigInt(delivered())).toBe(counted);
  });
});
