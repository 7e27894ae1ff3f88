/** What `wirekey run` says when it lacks the capabilities it needs. */
import { describe, expect, it } from 'vitest';
import { checkCapabilities, effectiveCapabilities } from '../../controller/agent/capabilities.js';

const status = (capEff: string) => `Name:\tnode\nCapEff:\t${capEff}\n`;

describe('capabilities', () => {
  it('reads CapEff bits', () => {
    expect([...effectiveCapabilities(status('000001ffffffffff'))].sort()).toEqual(['CAP_BPF', 'CAP_NET_ADMIN', 'CAP_PERFMON', 'CAP_SYS_ADMIN', 'CAP_SYS_PTRACE']);
    expect(effectiveCapabilities(status('0000000000000000')).size).toBe(0);
  });

  it('names what is missing in one line, and warns without CAP_SYS_PTRACE', () => {
    expect(() => checkCapabilities(effectiveCapabilities(status('0000000000000000'))))
      .toThrow('wirekey run needs CAP_SYS_ADMIN and CAP_NET_ADMIN (this process lacks CAP_SYS_ADMIN, CAP_NET_ADMIN): run it as root, or from packaging/wirekey.service');
    // CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21), no CAP_SYS_PTRACE (19).
    expect(checkCapabilities(effectiveCapabilities(status((2n ** 12n + 2n ** 21n).toString(16))))).toMatch(/CAP_SYS_PTRACE/);
    expect(checkCapabilities(effectiveCapabilities(status('000001ffffffffff')))).toBeUndefined();
  });
});
