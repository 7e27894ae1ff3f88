/**
 * What setEgress() writes into the kernel, computed without a kernel
 * (controller/datapath/egress.ts planEgress): each prefix entry with the
 * ports of every rule prefix that contains it, protocols and families kept
 * apart, ranges merged, and a policy that does not fit refused whole. The
 * encodings are checked against the layouts shared with bpf/wirekey.h.
 */
import { describe, expect, it } from 'vitest';
import { EgressTooLargeError, mergeRanges, planEgress, type EgressWorkload, type PlannedEgress } from '../../controller/datapath/egress.js';
import { parseAddressPrefix, prefixesOverlap } from '../../controller/addresses.js';
import { canonicalCidr, egressAllowsAddress, mergePorts } from '../../controller/policy/egress.js';
import {
  LAYOUTS,
  WK_EGRESS_AUDIT,
  WK_EGRESS_MAX_PREFIXES,
  WK_EGRESS_MAX_RANGES,
  WK_EGRESS_RESTRICTED,
  WK_EGRESS_TCP,
  WK_EGRESS_UDP,
  decodeEgressEvent,
  decodeEgressKey,
  decodeEgressVal,
  egressStatIndex,
  egressStatRefusal,
  encodeEgressKey,
  encodeEgressVal,
} from '../../controller/datapath/layout.js';
import type { PlanEgressRule } from '../../controller/policy/types.js';

function rule(id: number, cidrs: string[], ports: [number, number][], protocol: PlanEgressRule['protocol'] = 'tcp'): PlanEgressRule {
  return { id, label: `allow[${id}]`, source: { file: 'p.yaml', line: id, column: 1 }, cidrs, hosts: [], ports, protocol, tls: false };
}

const one = (rules: PlanEgressRule[], mode: 'enforce' | 'audit' = 'enforce'): EgressWorkload[] => [{ id: 1, name: 'app', egress: { mode, rules } }];
const show = (w: EgressWorkload[]) =>
  planEgress(w)[0]?.entries.map((e) => `${e.protocol === WK_EGRESS_TCP ? 'tcp' : 'udp'} ${e.text} ${e.ranges.map((r) => `${r.lo}-${r.hi}#${r.ruleId}`).join(',')}`);

describe('egress plan for the kernel', () => {
  it("a longer prefix's entry also holds the ports of every rule prefix that contains it", () => {
    expect(show(one([rule(1, ['10.0.0.0/8'], [[80, 80]]), rule(2, ['10.1.0.0/16'], [[443, 443]]), rule(3, ['10.1.2.3/32'], [[22, 22]]), rule(4, ['192.168.0.0/16'], [[53, 53]])]))).toEqual([
      'tcp 10.0.0.0/8 80-80#1',
      'tcp 10.1.0.0/16 80-80#1,443-443#2',
      'tcp 192.168.0.0/16 53-53#4',
      'tcp 10.1.2.3 22-22#3,80-80#1,443-443#2',
    ]);
  });

  it('protocols are kept apart; "any" is written for TCP and UDP; IPv4 and IPv6 are one address space, as the policy matches them', () => {
    const plan = planEgress(one([rule(1, ['0.0.0.0/0'], [[443, 443]]), rule(2, ['::/0'], [[53, 53]], 'any'), rule(3, ['::ffff:10.0.0.0/104'], [[80, 80]], 'udp'), rule(4, ['2001:db8::/32'], [[22, 22]])]))[0];
    const entries = plan?.entries.map((e) => `${e.protocol} ${e.text} ${e.ranges.map((r) => r.lo).join(',')}`);
    // ::/0 contains every IPv4 address (::ffff:0:0/96): its ports are under each IPv4 entry too.
    expect(entries).toEqual([
      `${WK_EGRESS_TCP} ::/0 53`,
      `${WK_EGRESS_TCP} 2001:db8::/32 22,53`,
      `${WK_EGRESS_TCP} 0.0.0.0/0 53,443`,
      `${WK_EGRESS_UDP} ::/0 53`,
      `${WK_EGRESS_UDP} 10.0.0.0/8 53,80`,
    ]);
  });

  it('mode and restriction flags; name rules and unrestricted workloads write no entries', () => {
    const plan = planEgress([
      { id: 1, name: 'a', egress: { mode: 'audit', rules: [{ ...rule(1, [], [[443, 443]]), hosts: ['api.example.com'], tls: true }] } },
      { id: 2, name: 'b' },
    ]);
    expect(plan).toEqual([{ id: 1, name: 'a', flags: WK_EGRESS_RESTRICTED | WK_EGRESS_AUDIT, entries: [] }]);
  });

  it('overlapping and adjacent ranges merge, under the lowest rule id', () => {
    expect(mergeRanges([{ lo: 10, hi: 20, ruleId: 3 }, { lo: 21, hi: 30, ruleId: 2 }, { lo: 5, hi: 8, ruleId: 1 }, { lo: 40, hi: 50, ruleId: 4 }, { lo: 45, hi: 46, ruleId: 5 }])).toEqual([
      { lo: 5, hi: 8, ruleId: 1 },
      { lo: 10, hi: 30, ruleId: 2 },
      { lo: 40, hi: 50, ruleId: 4 },
    ]);
  });

  it('more ranges than an entry holds is refused, naming workload, prefix and how many over', () => {
    const ports = (n: number, from: number) => Array.from({ length: n }, (_, i): [number, number] => [from + 2 * i, from + 2 * i]);
    expect(() => planEgress(one([rule(1, ['10.0.0.0/8'], ports(WK_EGRESS_MAX_RANGES, 1000))]))).not.toThrow();
    let err: unknown;
    try {
      planEgress(one([rule(1, ['10.0.0.0/8'], ports(10, 1000)), rule(2, ['10.9.0.0/16'], ports(WK_EGRESS_MAX_RANGES - 10 + 3, 2000))]));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EgressTooLargeError);
    expect(err).toMatchObject({ code: 'WK_EGRESS_TOO_LARGE', workload: 'app', over: 3 });
    expect((err as Error).message).toContain('workload "app": egress to 10.9.0.0/16 (tcp) needs 19 separate port ranges');
  });

  it('more prefix entries than the kernel holds, all workloads together, is refused with the largest named', () => {
    const many = (n: number, b: number) => rule(1, Array.from({ length: n }, (_, i) => `10.${b}.${i >> 8}.${i & 255}`), [[80, 80]]);
    const half = WK_EGRESS_MAX_PREFIXES / 2;
    expect(() => planEgress([{ id: 1, name: 'a', egress: { mode: 'enforce', rules: [many(half, 1)] } }, { id: 2, name: 'b', egress: { mode: 'enforce', rules: [many(half, 2)] } }])).not.toThrow();
    expect(() =>
      planEgress([{ id: 1, name: 'a', egress: { mode: 'enforce', rules: [many(half, 1)] } }, { id: 2, name: 'b', egress: { mode: 'enforce', rules: [many(half + 2, 2)] } }]),
    ).toThrow(/need 8194 kernel prefix entries.*\(2 over\)\. Largest: "b" 4098, "a" 4096/);
  });

  it('ids, prefixes and ports are checked before anything is planned', () => {
    expect(() => planEgress([{ id: 0, name: 'z' }])).toThrow(RangeError);
    expect(() => planEgress([{ id: 257, name: 'z' }])).toThrow(/outside 1\.\.256/);
    expect(() => planEgress([{ id: 1, name: 'a' }, { id: 1, name: 'b' }])).toThrow(/given twice/);
    expect(() => planEgress(one([rule(1, ['10.0.0.0/33'], [[80, 80]])]))).toThrow(/not an address prefix/);
    expect(() => planEgress(one([rule(1, ['10.0.0.0/8'], [[80, 70000]])]))).toThrow(/port range/);
  });

  it('keys, values and events encode as bpf/wirekey.h lays them out', () => {
    const [entry] = planEgress(one([rule(7, ['192.0.2.0/24'], [[443, 443]], 'udp')]))[0]?.entries ?? [];
    const key = encodeEgressKey(9, WK_EGRESS_UDP, entry!.prefix);
    expect(key.length).toBe(LAYOUTS.wk_egress_key.size);
    expect(key.readUInt32LE(0)).toBe(64 + 96 + 24);
    expect(decodeEgressKey(key)).toEqual({ setId: 9, protocol: WK_EGRESS_UDP, bits: 120, address: '192.0.2.0' });
    const val = encodeEgressVal(entry!.ranges);
    expect(val.length).toBe(LAYOUTS.wk_egress_val.size);
    expect(decodeEgressVal(val)).toEqual([{ lo: 443, hi: 443, ruleId: 7 }]);

    const ev = Buffer.alloc(LAYOUTS.wk_egress_event.size);
    ev.writeBigUInt64LE(123n, 0);
    ev.writeBigUInt64LE(77n, 8);
    Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]).copy(ev, 16);
    ev.writeUInt16LE(443, 32);
    ev[34] = 17;
    ev[35] = 1;
    ev[36] = 2;
    ev[37] = 2;
    ev[38] = 10;
    ev.writeUInt32LE(4242, 40);
    ev.writeUInt32LE(1000, 44);
    ev.writeUInt32LE(3, 48);
    ev.writeUInt32LE(9, 52);
    expect(decodeEgressEvent(ev)).toEqual({
      verdict: 'refused', hook: 'sendmsg', protocol: 17, socketType: 2, family: 'ipv6', pid: 4242, uid: 1000, workloadId: 3, setId: 9,
      address: '192.0.2.1', port: 443, cgroupId: 77n, monotonicNs: 123n,
    });
    // socket(): no destination, whatever the record's bytes there.
    ev[34] = 1;
    ev[36] = 3;
    ev[37] = 3;
    ev[38] = 2;
    expect(decodeEgressEvent(ev)).toEqual({
      verdict: 'refused', hook: 'socket', protocol: 1, socketType: 3, family: 'ipv4', pid: 4242, uid: 1000, workloadId: 3, setId: 9,
      cgroupId: 77n, monotonicNs: 123n,
    });
    // route: a packet's first hop, no port; setsockopt()'s (all zero) no destination.
    ev[34] = 17;
    ev[36] = 4;
    ev[37] = 2;
    expect(decodeEgressEvent(ev)).toMatchObject({ hook: 'route', protocol: 17, address: '192.0.2.1' });
    expect(decodeEgressEvent(ev).port).toBeUndefined();
    ev.fill(0, 16, 32);
    expect(decodeEgressEvent(ev).address).toBeUndefined();
    ev[38] = 1;
    expect(() => decodeEgressEvent(ev)).toThrow(/family 1/);
    ev[38] = 2;
    ev[36] = 5;
    expect(() => decodeEgressEvent(ev)).toThrow(/hook 5/);
    ev[36] = 3;
    ev[35] = 9;
    expect(() => decodeEgressEvent(ev)).toThrow(/unknown verdict 9/);
    expect(() => decodeEgressEvent(ev.subarray(0, 40))).toThrow(/40 bytes/);
  });

  it('counters: per workload, named as refusals like the rest', () => {
    expect(egressStatIndex(2, 'wouldRefuse')).toBe(2 * 3 + 1);
    expect(egressStatRefusal('refused')).toBe('egress-not-allowed');
    expect(egressStatRefusal('eventsLost')).toBeNull();
  });
});

/**
 * The kernel's answer, computed from the planned entries as bpf/egress.bpf.h
 * computes it: the longest prefix of the protocol's entries that holds the
 * address, then its port ranges.
 */
function kernelAllows(entries: PlannedEgress['entries'], address: string, port: number, protocol: 'tcp' | 'udp'): boolean {
  const a = parseAddressPrefix(address);
  if (!a) throw new Error(address);
  const proto = protocol === 'tcp' ? WK_EGRESS_TCP : WK_EGRESS_UDP;
  let best: PlannedEgress['entries'][number] | undefined;
  for (const e of entries) {
    if (e.protocol !== proto || !prefixesOverlap({ text: '', bits: e.prefix.bits, bytes: e.prefix.bytes }, a)) continue;
    if (!best || e.prefix.bits > best.prefix.bits) best = e;
  }
  return !!best?.ranges.some((r) => port >= r.lo && port <= r.hi);
}

describe('the kernel plan and the policy matcher agree', () => {
  it('on random policies and destinations (IPv4, IPv6, IPv4-mapped; TCP, UDP; nested prefixes)', () => {
    let seed = 0x5eed;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    // A small world, so that prefixes nest and destinations hit them.
    const v4 = () => `10.${rnd(2)}.${rnd(3)}.${rnd(4)}`;
    const v6 = () => (rnd(3) === 0 ? `::ffff:${v4()}` : `2001:db8:${rnd(2)}::${rnd(4)}`);
    const cidr = () => {
      const r = rnd(10);
      if (r === 0) return rnd(2) ? '0.0.0.0/0' : '::/0';
      if (r < 6) return `${v4()}/${[8, 15, 16, 24, 30, 32][rnd(6)]}`;
      return `${v6()}/${[32, 47, 48, 64, 96, 120, 126, 128][rnd(8)]}`;
    };
    const ports = (): [number, number][] => {
      const out: [number, number][] = [];
      for (let i = 0; i <= rnd(2); i++) {
        const lo = 1 + rnd(20);
        out.push([lo, lo + rnd(5)]);
      }
      return mergePorts(out.map(([lo, hi]) => `${lo}-${hi}`), [1, 65535]) as [number, number][];
    };
    const seen = { allowed: 0, refused: 0 };
    for (let round = 0; round < 300; round++) {
      const rules = Array.from({ length: 1 + rnd(6) }, (_, i) => {
        const p = parseAddressPrefix(cidr());
        return rule(i + 1, [canonicalCidr(p!)], ports(), (['tcp', 'udp', 'any'] as const)[rnd(3)]);
      });
      const egress = { mode: 'enforce' as const, rules };
      const plan = planEgress([{ id: 1, name: 'w', egress }])[0]!;
      for (let d = 0; d < 40; d++) {
        const address = rnd(2) ? v4() : v6();
        const port = 1 + rnd(28);
        const protocol = rnd(2) ? 'tcp' : 'udp';
        const want = egressAllowsAddress(egress, { address, port, protocol }) !== undefined;
        const got = kernelAllows(plan.entries, address, port, protocol);
        seen[got ? 'allowed' : 'refused']++;
        if (got !== want) throw new Error(`round ${round}: ${protocol} ${address}:${port}: kernel ${got}, matcher ${want}; rules ${JSON.stringify(rules.map((r) => [r.cidrs, r.ports, r.protocol]))}`);
      }
    }
    // Both answers were exercised, not one.
    expect(seen.allowed).toBeGreaterThan(1000);
    expect(seen.refused).toBeGreaterThan(1000);
  });
});
