/**
 * The feature probes against the real kernel, and what Datapath.open makes
 * of their answers: only a negative probe is "not supported"; a load that
 * fails on a kernel the probes cleared is a BpfError carrying libbpf's log.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Datapath } from '../../controller/datapath/datapath.js';
import { probeFeatures, type Prober } from '../../controller/datapath/features.js';
import { KernelHttp, PUSH_WATCH_PROGRAM } from '../../controller/datapath/kernel-http.js';
import { bpfCall, native, repoRoot } from '../../controller/datapath/native.js';
import { findCgroup2Root } from '../../controller/cgroup.js';
import { encodeU32, encodeU64, verifyContract } from '../../controller/datapath/layout.js';
import { processStartTicks } from '../../controller/identity/process-start.js';
import { BpfError, NotSupportedError } from '../../controller/errors.js';
import { kernelSkipReason } from '../support/requirements.js';

const skip = kernelSkipReason();
const objectPath = path.join(repoRoot, 'build/bpf/wirekey.bpf.o');

/** The real kernel, except that `edit` overrides some answers. */
function kernelWith(edit: Partial<Prober>): Prober {
  const real = native();
  return {
    probeProgType: (t) => real.probeProgType(t),
    probeMapType: (t) => real.probeMapType(t),
    probeHelper: (t, h) => real.probeHelper(t, h),
    probeLoad: (o) => real.probeLoad(o),
    ...edit,
  };
}

describe.skipIf(skip)(`feature probes on the real kernel${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const opened: Datapath[] = [];
  const dirs: string[] = [];

  const open = (prober?: Prober) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-features-'));
    dirs.push(dir);
    const dp = Datapath.open({ cgroupRoot: findCgroup2Root(), pinDir: `/sys/fs/bpf/wirekey-test-features-${randomBytes(3).toString('hex')}`, proxyPort: 1, prober });
    opened.push(dp);
    return dp;
  };

  afterEach(() => {
    for (const dp of opened.splice(0)) dp.close();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('a helper no program type has is reported missing, although libbpf 1.1 says yes on new kernels', () => {
    const bogus = kernelWith({
      // bpf_xdp_adjust_head (44) instead of bpf_loop (181): sk_msg programs can never call it.
      probeHelper: (t, h) => native().probeHelper(t, h === 181 ? 44 : h),
      probeLoad: (o) => native().probeLoad({ ...o, helper: o.helper === 181 ? 44 : o.helper }),
    });
    const m = probeFeatures('kernelHttp', bogus);
    expect(m?.feature).toBe('bpf_loop in sk_msg programs');
    // Which probe says no depends on the kernel's wording: libbpf's own
    // (older kernels), or the trial load's verifier log naming the helper.
    expect(m?.detail).toMatch(/bpf_xdp_adjust_head#44|libbpf_probe_bpf_helper: the verifier does not know it/);
  });

  it('the trampoline probe agrees with loading the failed-push watch itself', () => {
    const missing = probeFeatures('pushWatch');
    const o = bpfCall(() => new (native().BpfObject)(objectPath));
    try {
      verifyContract(o);
      KernelHttp.enable(o);
      o.setGlobal('agent_tgid', encodeU32(process.pid));
      o.setGlobal('agent_start_ticks', encodeU64(processStartTicks()));
      o.setGlobal('host_netns_cookie', encodeU64(native().netnsCookie()));
      let loaded = true;
      try {
        bpfCall(() => o.load());
      } catch (err) {
        loaded = false;
        // Refused by the kernel, with libbpf's account of it: never a bare errno.
        expect(err).toBeInstanceOf(BpfError);
        expect((err as BpfError).libbpfLog).toContain(PUSH_WATCH_PROGRAM);
      }
      expect(loaded, missing ? `probe: ${missing.detail}` : 'probe: trampolines work').toBe(missing === null);
    } finally {
      o.close();
    }
  });

  it('Datapath.open loads what the probes allow: everything here but what they find missing', () => {
    const dp = open();
    expect(dp.kernelHttpUnavailable).toBeNull();
    expect(dp.kernelHttpError).toBeNull();
    const watch = probeFeatures('pushWatch');
    expect(dp.pushWatchUnavailable).toBe(watch ? `this kernel lacks BPF trampolines (fexit/tcp_bpf_push): ${watch.detail}` : null);
  });

  it('a negative probe for the kernel HTTP datapath leaves it out, naming the feature and the minimum kernel', () => {
    const old = kernelWith({ probeLoad: (o) => (o.helper === 181 ? { loaded: false, attached: false, errno: 22, log: 'invalid func unknown#181' } : native().probeLoad(o)) });
    const dp = open(old);
    expect(dp.kernelHttpUnavailable).toBe('this kernel lacks bpf_loop in sk_msg programs (Linux 5.17 or newer is needed): invalid func unknown#181');
    expect(dp.kernelHttpError).toBeNull();
    // identity (3 tracepoints, 2 iterators), redirect (connect4/6, getpeername4/6, sockops, bind4/6) and egress (sendmsg4/6, sock_create, setsockopt, cgroup_skb egress), no kernel HTTP program
    expect(dp.programIds()).toHaveLength(17);
  });

  it('a negative probe for the redirect programs fails the open with NotSupportedError (feature, minimum kernel)', () => {
    const old = kernelWith({ probeLoad: (o) => (o.helper === 122 && o.progType === 18 ? { loaded: false, attached: false, errno: 22, log: 'unknown func bpf_get_netns_cookie#122' } : native().probeLoad(o)) });
    let err: unknown;
    try {
      open(old);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NotSupportedError);
    expect(err).toMatchObject({ feature: 'bpf_get_netns_cookie in cgroup/connect programs', minimumKernel: '5.14' });
    expect((err as Error).message).toMatch(/requires Linux 5\.14/);
  });

  it('a kernel HTTP load failure on a kernel the probes cleared is a BpfError with the log, not an old kernel', (ctx) => {
    // A probe that wrongly clears trampolines makes the real load fail where fexit does not load.
    if (!probeFeatures('pushWatch')) ctx.skip('this kernel has BPF trampolines, so a wrong trampoline probe cannot make the load fail');
    const lying = kernelWith({ probeLoad: (o) => (o.attach ? { loaded: true, attached: true } : native().probeLoad(o)) });
    const dp = open(lying);
    expect(dp.kernelHttpError).toBeInstanceOf(BpfError);
    expect(dp.kernelHttpError?.libbpfLog).toContain(PUSH_WATCH_PROGRAM);
    expect(dp.kernelHttpUnavailable).toMatch(/^the kernel refused its programs although it has every feature they use \(a wirekey bug/);
    expect(dp.kernelHttpUnavailable).not.toMatch(/5\.17/);
    // identity (3 tracepoints, 2 iterators), redirect (connect4/6, getpeername4/6, sockops, bind4/6) and egress (sendmsg4/6, sock_create, setsockopt, cgroup_skb egress), no kernel HTTP program
    expect(dp.programIds()).toHaveLength(17);
  });
});
