/** `wirekey status` output: what an operator reads about the kernel datapath. */
import { describe, expect, it } from 'vitest';
import { formatStatus } from '../../controller/host/status.js';
import { WK_HTTP_STATS, httpStatRefusal } from '../../controller/datapath/layout.js';
import { REFUSAL_CODES } from '../../controller/refusals.js';

describe('wirekey status', () => {
  it('names every kernel datapath counter that moved, the failed-push and Host refusals too', () => {
    const kernelHttp: Record<string, bigint> = Object.fromEntries(WK_HTTP_STATS.map((n) => [n, 0n]));
    Object.assign(kernelHttp, { injected: 5n, refusedMethod: 3n, refusedPush: 1n, refusedHost: 2n });
    const out = formatStatus({ running: true, pid: 1, workloads: [], maps: [], tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n, egress: [], egressEventsLost: 0n, kernelHttp, proxy: null, draining: [], attached: [] });
    expect(out).toContain('kernel datapath: 5 request(s) injected; method-not-allowed 3, push-failed 1, host-mismatch 2\n');
  });

  it('counts binds to the proxy port the kernel refused, and says who may bind it while no agent runs', () => {
    const out = formatStatus({ running: false, pid: 7, workloads: [], maps: [], tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 3n, egress: [], egressEventsLost: 0n,
      kernelHttp: null, proxy: null, draining: [], attached: ['links/wk_bind4', 'links/wk_connect4'] });
    expect(out).toContain('binds to the proxy port refused (uid other than 0): 3\n');
    expect(out).toContain('programs still attached: 2 (');
    expect(out).toContain('only uid 0 may bind that port');
  });

  it('names the proxy\'s open connections and refusals by code', () => {
    const out = formatStatus({ running: true, pid: 1, workloads: [], maps: [], tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n, egress: [], egressEventsLost: 0n, kernelHttp: null,
      proxy: { refused: { 'host-mismatch': 2, 'too-many-handshakes': 1 }, handshakes: 3, connections: { a: 2, b: 1 } }, draining: [], attached: [] });
    expect(out).toContain('proxy: 3 connection(s) open, 3 in handshake; refused: host-mismatch 2, too-many-handshakes 1\n');
  });

  it('names each draining sockhash of a previous agent, its connections and what it refused without an agent', () => {
    const out = formatStatus({ running: true, pid: 1, workloads: [], maps: [], tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n, egress: [], egressEventsLost: 0n, kernelHttp: null, proxy: null,
      draining: [{ dir: '/sys/fs/bpf/wirekey-draining/socks-42', connections: 2, refusedAgent: 3n }], attached: [] });
    expect(out).toContain('draining /sys/fs/bpf/wirekey-draining/socks-42: 2 connection(s) of a previous agent, each refused at its next request; agent-gone 3\n');
  });

  it('a dead agent whose links are still pinned: says its programs are still attached and what that does', () => {
    const out = formatStatus({ running: false, pid: 7, workloads: [], maps: [], tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n, egress: [], egressEventsLost: 0n,
      kernelHttp: null, proxy: null, draining: [], attached: ['links/wk_connect4', 'links/wk_exec'] });
    expect(out).toMatch(/^wirekey is not running: agent pid 7 has exited/);
    expect(out).toContain('programs still attached: 2 (restricted workloads\' egress rules stay enforced');
  });

  it('names each restricted workload\'s egress mode and what the kernel refused or would have, and lost events', () => {
    const out = formatStatus({ running: true, pid: 1, workloads: [], maps: [], tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n, kernelHttp: null, proxy: null, draining: [], attached: [],
      egress: [{ name: 'agent', mode: 'enforce', refused: 4n, wouldRefuse: 0n }, { name: 'rollout', mode: 'audit', refused: 0n, wouldRefuse: 7n }], egressEventsLost: 2n });
    expect(out).toContain('egress agent (enforce): 4 refused (egress-not-allowed), 0 would-refuse in the kernel\n');
    expect(out).toContain('egress rollout (audit): 0 refused (egress-not-allowed), 7 would-refuse in the kernel\n');
    expect(out).toContain('egress events lost (ring buffer full): 2\n');
  });

  it('every kernel refusal counter maps to a code of the list the proxy uses', () => {
    const codes = new Set<string>(REFUSAL_CODES);
    for (const name of WK_HTTP_STATS.filter((n) => n.startsWith('refused') || n === 'storageFailures')) {
      expect(codes.has(httpStatRefusal(name) as string), name).toBe(true);
    }
    expect(httpStatRefusal('injected')).toBeNull();
  });
});
