/**
 * The constants the controller shares with the BPF programs are checked
 * against the object's enums at load (verifyConstants): here against
 * doctored BTF answers, so that a renumbered, reordered, missing or
 * unknown member is refused by name. test/kernel/native.test.ts checks the
 * real object, and an object compiled from a doctored header.
 */
import { describe, expect, it } from 'vitest';
import { CONSTANTS, WK_EGRESS_STATS, WK_MAX_WORKLOADS, WK_HTTP_STATS, verifyConstants } from '../../controller/datapath/layout.js';
import { MAX_WORKLOADS } from '../../controller/policy/precedence.js';
import { BpfError } from '../../controller/errors.js';

/** The BTF answer of an object that agrees with the controller, with `edit` applied to a copy. */
function btf(edit: (enums: Record<string, Record<string, number>>) => void = () => {}) {
  const enums: Record<string, Record<string, number>> = structuredClone(CONSTANTS);
  edit(enums);
  return { btfEnum: (name: string) => enums[name] ?? null, names: () => Object.keys(enums) };
}

function check(answer: ReturnType<typeof btf>): void {
  verifyConstants(answer.btfEnum, answer.names);
}

describe('C/TypeScript constants', () => {
  it('an object that agrees is accepted', () => {
    expect(() => check(btf())).not.toThrow();
  });

  it('every enum the contract shares is checked', () => {
    expect(Object.keys(CONSTANTS).sort()).toEqual([
      'wk_action', 'wk_egress_flag', 'wk_egress_hook', 'wk_egress_limits', 'wk_egress_proto',
      'wk_egress_stat', 'wk_egress_verdict', 'wk_http_cfg_flag', 'wk_http_event_kind', 'wk_http_hdr_state', 'wk_http_hosts',
      'wk_http_limits', 'wk_http_stat', 'wk_limits', 'wk_stat',
    ]);
  });

  it('a reordered audit reason is refused by name, never read under the wrong label', () => {
    // C inserts a reason before REFUSED_HOST and renumbers the rest.
    const answer = btf((e) => {
      const stat = e.wk_http_stat as Record<string, number>;
      stat.WK_HTTP_STAT_REFUSED_PUSH = 20;
      stat.WK_HTTP_STAT_REFUSED_HOST = 19;
    });
    expect(() => check(answer)).toThrow(BpfError);
    expect(() => check(answer)).toThrow(/enum wk_http_stat: WK_HTTP_STAT_REFUSED_PUSH is 20 in the BPF object, controller expects 19/);
  });

  it.each([
    ['wk_action', 'WK_ACTION_PROXY', 2],
    ['wk_stat', 'WK_STAT_STORAGE_FAIL', 0],
    ['wk_limits', 'WK_MAX_WORKLOADS', 512],
    ['wk_http_limits', 'WK_HTTP_LINE_MAX', 1024],
    ['wk_http_limits', 'WK_HTTP_DEST_EXACT', 128],
    ['wk_http_hdr_state', 'WK_HTTP_WITHHOLD', 3],
    ['wk_http_event_kind', 'WK_HTTP_EVENT_REFUSED', 3],
    ['wk_http_cfg_flag', 'WK_HTTP_CFG_AUDIT_REQUESTS', 4],
    ['wk_http_cfg_flag', 'WK_HTTP_CFG_PUSH_WATCH', 1],
    ['wk_http_limits', 'WK_HTTP_MAX_USAGE', 4096],
    ['wk_egress_limits', 'WK_EGRESS_MAX_RANGES', 32],
    ['wk_egress_limits', 'WK_EGRESS_KEY_FIXED', 32],
    ['wk_egress_flag', 'WK_EGRESS_AUDIT', 4],
    ['wk_egress_proto', 'WK_EGRESS_UDP', 6],
    ['wk_egress_verdict', 'WK_EGRESS_WOULD_REFUSE', 1],
    ['wk_egress_hook', 'WK_EGRESS_HOOK_SENDMSG', 3],
    ['wk_egress_stat', 'WK_EGRESS_STAT_WOULD_REFUSE', 0],
  ])('%s: a renumbered %s is refused by name', (name, member, value) => {
    const answer = btf((e) => {
      (e[name] as Record<string, number>)[member] = value;
    });
    expect(() => check(answer)).toThrow(new RegExp(`enum ${name}: ${member} is ${value} in the BPF object, controller expects ${CONSTANTS[name]?.[member]}`));
  });

  it('a member or an enum missing from the object is refused', () => {
    expect(() => check(btf((e) => delete e.wk_http_event_kind?.WK_HTTP_EVENT_INJECTED))).toThrow(/enum wk_http_event_kind: WK_HTTP_EVENT_INJECTED is missing in the BPF object/);
    expect(() => check(btf((e) => delete e.wk_stat))).toThrow(/enum wk_stat is missing from the BPF object's BTF/);
  });

  it('a member or a wk_ enum unknown to the controller is refused; the programs\' own enums are not shared', () => {
    expect(() => check(btf((e) => ((e.wk_stat as Record<string, number>).WK_STAT_NEW = 2)))).toThrow(/enum wk_stat: members unknown to the controller: WK_STAT_NEW/);
    expect(() => check(btf((e) => (e.wk_new_flags = { WK_NEW: 1 })))).toThrow(/enum wk_new_flags in the BPF object is unknown to the controller/);
    expect(() => check(btf((e) => (e.scan_state = { SCAN_METHOD: 0 })))).not.toThrow();
  });

  it('the policy limit on workloads is the kernel mask\'s, and the audit reasons are numbered in order', () => {
    expect(MAX_WORKLOADS).toBe(WK_MAX_WORKLOADS);
    expect(CONSTANTS.wk_limits?.WK_MAX_WORKLOADS).toBe(CONSTANTS.wk_limits?.WK_MASK_WORDS as number * 64);
    expect(CONSTANTS.wk_http_stat?.WK_HTTP_STAT_MAX).toBe(WK_HTTP_STATS.length);
    expect(CONSTANTS.wk_egress_stat?.WK_EGRESS_STAT_MAX).toBe(WK_EGRESS_STATS.length);
  });
});
