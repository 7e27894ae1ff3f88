/**
 * The feature probes' reading of the kernel's answers (controller/datapath/features.ts),
 * against a scripted kernel. test/kernel/features.test.ts asks the real one.
 */
import { describe, expect, it } from 'vitest';
import { describeMissing, helperRefusal, notSupported, probeFeatures, type Prober } from '../../controller/datapath/features.js';
import { BpfError, NotSupportedError } from '../../controller/errors.js';

type LoadOpts = Parameters<Prober['probeLoad']>[0];

/** A kernel that has everything, except what `edit` takes away. */
function kernel(edit: Partial<Prober> = {}): Prober {
  return {
    probeProgType: () => true,
    probeMapType: () => true,
    probeHelper: () => true,
    probeLoad: (o: LoadOpts) =>
      o.helper ? { loaded: false, attached: false, errno: 13, log: 'R1 type=ctx expected=map_ptr\nprocessed 1 insns' } : { loaded: true, attached: !!o.attach },
    ...edit,
  };
}

const BPF_FUNC_LOOP = 181;
const BPF_PROG_TYPE_SK_MSG = 16;

describe('kernel feature probes', () => {
  it('a kernel that has everything lacks nothing', () => {
    for (const set of ['identity', 'redirect', 'kernelHttp', 'pushWatch'] as const) expect(probeFeatures(set, kernel())).toBeNull();
  });

  it('a helper the verifier does not know, in any wording, is missing; refused arguments mean it exists', () => {
    expect(helperRefusal('0: (85) call unknown#181\ninvalid func unknown#181\n')).toBe('invalid func unknown#181');
    expect(helperRefusal('unknown func bpf_loop#181')).toBe('unknown func bpf_loop#181');
    expect(helperRefusal('program of this type cannot use helper bpf_loop#181')).toBe('program of this type cannot use helper bpf_loop#181');
    expect(helperRefusal('R2 !read_ok\nprocessed 1 insns')).toBeNull();
  });

  it('no bpf_loop in sk_msg: the kernel HTTP datapath is not supported (5.17), the rest is', () => {
    const old = kernel({
      probeLoad: (o) =>
        o.helper === BPF_FUNC_LOOP && o.progType === BPF_PROG_TYPE_SK_MSG
          ? { loaded: false, attached: false, errno: 22, log: '0: (85) call bpf_loop#181\nprogram of this type cannot use helper bpf_loop#181\nprocessed 1 insns' }
          : kernel().probeLoad(o),
    });
    expect(probeFeatures('identity', old)).toBeNull();
    expect(probeFeatures('redirect', old)).toBeNull();
    const m = probeFeatures('kernelHttp', old);
    expect(m).toMatchObject({ set: 'kernelHttp', feature: 'bpf_loop in sk_msg programs', minimumKernel: '5.17', detail: 'program of this type cannot use helper bpf_loop#181' });
    expect(describeMissing(m!)).toBe('this kernel lacks bpf_loop in sk_msg programs (Linux 5.17 or newer is needed): program of this type cannot use helper bpf_loop#181');
    const err = notSupported(m!);
    expect(err).toBeInstanceOf(NotSupportedError);
    expect(err).toMatchObject({ code: 'WK_NOT_SUPPORTED', feature: 'bpf_loop in sk_msg programs', minimumKernel: '5.17' });
  });

  it("libbpf's no is final for helpers, program types and map types", () => {
    expect(probeFeatures('kernelHttp', kernel({ probeHelper: (t, h) => h !== BPF_FUNC_LOOP }))?.feature).toBe('bpf_loop in sk_msg programs');
    expect(probeFeatures('kernelHttp', kernel({ probeMapType: (t) => t !== 27 }))?.feature).toBe('BPF ring buffers');
    expect(probeFeatures('redirect', kernel({ probeProgType: (t) => t !== 13 }))).toMatchObject({ feature: 'sockops programs', minimumKernel: '5.14' });
  });

  it('a tracepoint missing from the kernel BTF fails the identity programs', () => {
    const k = kernel({
      probeLoad: (o) => (o.attachTo === 'sched_process_fork' ? { loaded: false, attached: false, errno: 2, log: 'sched_process_fork is not in the kernel\'s BTF' } : kernel().probeLoad(o)),
    });
    expect(probeFeatures('identity', k)).toMatchObject({ feature: 'tp_btf/sched_process_fork programs', detail: "ENOENT (2): sched_process_fork is not in the kernel's BTF" });
  });

  it('BPF trampolines: refused at load, or loaded but not attachable, are both missing; no kernel version brings them for sure', () => {
    const refused = kernel({ probeLoad: (o) => (o.attach ? { loaded: false, attached: false, errno: 1, log: '' } : kernel().probeLoad(o)) });
    expect(probeFeatures('pushWatch', refused)).toMatchObject({ feature: 'BPF trampolines (fexit/tcp_bpf_push)', detail: 'load: EPERM (1)', minimumKernel: undefined });
    const unattachable = kernel({ probeLoad: (o) => (o.attach ? { loaded: true, attached: false, errno: 524 } : kernel().probeLoad(o)) });
    expect(probeFeatures('pushWatch', unattachable)?.detail).toBe('attach: ENOTSUPP (524)');
    expect(describeMissing(probeFeatures('pushWatch', refused)!)).toBe('this kernel lacks BPF trampolines (fexit/tcp_bpf_push): load: EPERM (1)');
    expect(probeFeatures('kernelHttp', refused)).toBeNull();
  });

  it('no program loads at all: a privilege problem (BpfError), not a missing feature; no bpf(2): not supported', () => {
    const unprivileged = kernel({ probeLoad: () => ({ loaded: false, attached: false, errno: 1, log: '' }) });
    expect(() => probeFeatures('identity', unprivileged)).toThrow(BpfError);
    expect(() => probeFeatures('identity', unprivileged)).toThrow(/cannot load even a trivial BPF program \(EPERM \(1\)\): run as root/);
    const none = kernel({ probeLoad: () => ({ loaded: false, attached: false, errno: 38 }) });
    expect(() => probeFeatures('identity', none)).toThrow(NotSupportedError);
  });
});
