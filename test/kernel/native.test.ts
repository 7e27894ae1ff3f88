/**
 * The native addon against the real kernel: libbpf's object, map and link,
 * the error contract (errno, libbpf's message, the verifier log), and the
 * struct layouts the controller shares with the BPF programs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { bpfCall, native, repoRoot, type NativeObject } from '../../controller/datapath/native.js';
import { CONSTANTS, LAYOUTS, verifyConstants, verifyContract, verifyLayouts } from '../../controller/datapath/layout.js';
import { findCgroup2Root } from '../../controller/cgroup.js';
import { BpfError } from '../../controller/errors.js';
import { kernelSkipReason } from '../support/requirements.js';
import { createCgroup, removeCgroupTree } from '../support/cgroup.js';
import { must, run } from '../support/shell.js';

const skip = kernelSkipReason();
const objectPath = path.join(repoRoot, 'build/bpf/wirekey.bpf.o');

describe.skipIf(skip)(`native addon on the real kernel${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let obj: NativeObject;
  let dir: string;
  let cgRoot: string;
  let cg: string;

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'wirekey-native-'));
    cgRoot = findCgroup2Root();
    cg = createCgroup(cgRoot, `wirekey-test-native-${randomBytes(3).toString('hex')}`);
    obj = new (native().BpfObject)(objectPath);
  });

  afterAll(() => {
    obj?.close();
    if (cg) removeCgroupTree(cgRoot, cg);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the controller's struct layouts match the object's BTF", () => {
    expect(() => verifyLayouts((name) => obj.btfStruct(name))).not.toThrow();
    expect(obj.btfStruct('wk_orig_dst')?.size).toBe(LAYOUTS.wk_orig_dst.size);
  });

  it('a layout that disagrees with BTF is refused, naming the member', () => {
    const lying = (name: string) => {
      const s = obj.btfStruct(name);
      if (s && name === 'wk_conn_key') s.members = s.members.map((m) => (m.name === 'port' ? { ...m, offset: 18 } : m));
      return s;
    };
    expect(() => verifyLayouts(lying)).toThrow(/wk_conn_key\.port: BTF has offset 18/);
  });

  it("the controller's constants match the object's enums, member by member", () => {
    expect(() => verifyConstants((name) => obj.btfEnum(name))).not.toThrow();
    expect(obj.btfEnum('wk_http_stat')).toEqual(CONSTANTS.wk_http_stat);
    expect(obj.btfEnum('no_such_enum')).toBeNull();
    const changed = (member: string, value: number) => (name: string) => {
      const e = obj.btfEnum(name);
      return e && member in e ? { ...e, [member]: value } : e;
    };
    expect(() => verifyConstants(changed('WK_HTTP_STAT_REFUSED_HOST', 19))).toThrow(/enum wk_http_stat: WK_HTTP_STAT_REFUSED_HOST is 19 in the BPF object, controller expects 20/);
    expect(() => verifyConstants(changed('WK_HTTP_HOST_MAX', 255))).toThrow(/WK_HTTP_HOST_MAX is 255/);
    const extra = (name: string) => ({ ...obj.btfEnum(name), WK_HTTP_STAT_NEW: 99 });
    expect(() => verifyConstants(extra)).toThrow(/members unknown to the controller: WK_HTTP_STAT_NEW/);
  });

  it('every enum of bpf/wirekey.h reaches the object and matches, and no wk_ enum goes unchecked', () => {
    expect(() => verifyContract(obj)).not.toThrow();
    for (const name of Object.keys(CONSTANTS)) expect(obj.btfEnum(name), name).toEqual(CONSTANTS[name]);
    expect(obj.btfEnumNames().filter((n) => n.startsWith('wk_')).sort()).toEqual(Object.keys(CONSTANTS).sort());
  });

  it('an object built from a header with a renumbered audit reason is refused at open, naming the member', async () => {
    // What a careless edit of bpf/wirekey.h does: a reason moved, the numbers after it shifted.
    const header = readFileSync(path.join(repoRoot, 'bpf/wirekey.h'), 'utf8');
    const doctored = header
      .replace('WK_HTTP_STAT_REFUSED_PUSH = 19,', 'WK_HTTP_STAT_REFUSED_PUSH = 20,')
      .replace('WK_HTTP_STAT_REFUSED_HOST = 20,', 'WK_HTTP_STAT_REFUSED_HOST = 19,');
    expect(doctored).not.toBe(header);
    writeFileSync(path.join(dir, 'wirekey.h'), doctored);
    // Every shared enum, anchored in BTF the way the programs anchor them.
    writeFileSync(path.join(dir, 'contract.bpf.c'), `#include "vmlinux.h"
#include "wirekey.h"
${Object.keys(CONSTANTS).map((n) => `const enum ${n} *const ${n}_btf = 0;`).join('\n')}
`);
    const out = path.join(dir, 'contract.bpf.o');
    // clang is slow on an emulated CPU, as for the refused program below.
    const cc = await run('clang', ['-g', '-O2', '-target', 'bpf', `-I${dir}`, `-I${path.join(repoRoot, 'build/bpf')}`, '-c', path.join(dir, 'contract.bpf.c'), '-o', out], { timeoutMs: 600_000 });
    expect(cc.code, cc.stderr).toBe(0);
    const doctoredObj = new (native().BpfObject)(out);
    try {
      expect(() => verifyConstants((name) => doctoredObj.btfEnum(name), () => doctoredObj.btfEnumNames())).toThrow(
        /enum wk_http_stat: WK_HTTP_STAT_REFUSED_PUSH is 20 in the BPF object, controller expects 19/,
      );
    } finally {
      doctoredObj.close();
    }
  });

  it('the process can mark itself not dumpable (the agent does, at start)', async () => {
    const r = await run(process.execPath, ['-e', `const a = require(${JSON.stringify(path.join(repoRoot, 'native/build/Release/wirekey_native.node'))});
const before = a.dumpable(); a.setDumpable(false); console.log(before, a.dumpable());`]);
    expect(r.stdout.trim()).toBe('1 0');
  });

  it('globals are checked by name and size before load', () => {
    expect(() => obj.setGlobal('proxy_port', Buffer.alloc(4))).toThrow(/expected 2 bytes, got 4/);
    expect(() => obj.setGlobal('no_such_global', Buffer.alloc(4))).toThrow(/no global named no_such_global/);
    obj.setGlobal('proxy_port', Buffer.from([0x01, 0x02]));
  });

  it('loads, and maps take exactly their key and value sizes', () => {
    bpfCall(() => obj.load());
    const map = obj.map('wk_cgroup_mask');
    expect(map.info()).toMatchObject({ keySize: 8, valueSize: 32, maxEntries: 4096 });
    const key = Buffer.alloc(8, 7);
    const value = Buffer.alloc(32, 1);
    expect(map.lookup(key)).toBeNull();
    map.update(key, value);
    expect(map.lookup(key)).toEqual(value);
    expect(map.keys()).toEqual([key]);
    expect(map.delete(key)).toBe(true);
    expect(map.delete(key)).toBe(false);
    expect(() => map.lookup(Buffer.alloc(4))).toThrow(/wk_cgroup_mask: key must be 8 bytes, got 4/);
    expect(() => map.update(key, Buffer.alloc(8))).toThrow(/value must be 32 bytes/);
  });

  it('worker threads load the addon apart: their maps and errors are their own, and the agent thread keeps working after they end', async () => {
    // Each thread (the agent's, each worker's) has its own classes and its
    // own capture of libbpf's messages; a worker ending must not take the
    // agent thread's classes with it.
    const map = obj.map('wk_cgroup_mask');
    const id = map.info().id!;
    const addonFile = path.join(repoRoot, 'native/build/Release/wirekey_native.node');
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData.addonFile);
      const key = Buffer.alloc(8, workerData.n);
      const results = [];
      for (let i = 0; i < 200; i++) {
        const m = addon.openMapById(workerData.id);
        m.update(key, Buffer.alloc(32, workerData.n));
        results.push(m.lookup(key).equals(Buffer.alloc(32, workerData.n)));
        m.delete(key);
      }
      let error;
      try { new addon.BpfObject('/nonexistent/worker-' + workerData.n + '.bpf.o'); } catch (e) { error = { message: e.message, errno: e.errno }; }
      parentPort.postMessage({ ok: results.every(Boolean), error });
    `;
    const { Worker } = await import('node:worker_threads');
    const runWorker = (n: number) => new Promise<{ ok: boolean; error: { message: string; errno: number } }>((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: { addonFile, id, n } });
      let result: { ok: boolean; error: { message: string; errno: number } } | undefined;
      w.on('message', (m) => { result = m; });
      w.on('error', reject);
      w.on('exit', (c) => (c === 0 && result ? resolve(result) : reject(new Error(`worker ${n} exited ${c} without a result`))));
    });
    const results = await Promise.all([runWorker(1), runWorker(2)]);
    for (const [i, r] of results.entries()) {
      expect(r.ok).toBe(true);
      expect(r.error.errno).toBe(2);
      expect(r.error.message).toContain(`worker-${i + 1}.bpf.o`);
    }
    // The workers are gone: the agent thread still makes maps and links from its own classes.
    const again = native().openMapById(id);
    const key = Buffer.alloc(8, 9);
    again.update(key, Buffer.alloc(32, 9));
    expect(map.lookup(key)).toEqual(Buffer.alloc(32, 9));
    expect(again.delete(key)).toBe(true);
    expect(obj.map('wk_bind_port').info().name).toBe('wk_bind_port');
  });

  it('a full map reports E2BIG with errno', () => {
    const map = obj.map('wk_bind_port');
    const max = map.info().maxEntries;
    const key = (i: number) => {
      const b = Buffer.alloc(8);
      b.writeUInt32LE(i + 1, 0);
      return b;
    };
    try {
      for (let i = 0; i < max; i++) map.update(key(i), Buffer.alloc(8));
      let err: unknown;
      try {
        bpfCall(() => map.update(key(max), Buffer.alloc(8)));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(BpfError);
      expect((err as BpfError).errno).toBe(7); // E2BIG
    } finally {
      for (const k of map.keys()) map.delete(k);
    }
  });

  it('a link attaches to a cgroup, and destroying it detaches the program', async () => {
    const link = obj.attachCgroup('wk_connect4', cg);
    const info = link.info();
    expect(info?.progId).toBeGreaterThan(0);
    const attached = JSON.parse(await must('bpftool', ['-j', 'cgroup', 'show', cg])) as { id: number; name: string }[];
    expect(attached.map((p) => p.id)).toContain(info?.progId);
    link.destroy();
    const after = (await must('bpftool', ['-j', 'cgroup', 'show', cg])).trim();
    expect(after ? (JSON.parse(after) as { id: number }[]).map((p) => p.id) : []).not.toContain(info?.progId);
  });

  /** Compiles `body` as a cgroup/connect4 program `name` and returns the error its load fails with. */
  async function refusedLoad(name: string, body: string): Promise<BpfError> {
    const src = path.join(dir, `${name}.bpf.c`);
    const out = path.join(dir, `${name}.bpf.o`);
    writeFileSync(src, `#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
SEC("cgroup/connect4")
int ${name}(struct bpf_sock_addr *ctx)
{
${body}
}
char LICENSE[] SEC("license") = "GPL";
`);
    // clang is slow on an emulated CPU: the object exists only once it has finished.
    const cc = await run('clang', ['-g', '-O2', '-target', 'bpf', '-I', path.join(repoRoot, 'build/bpf'), '-c', src, '-o', out], { timeoutMs: 600_000 });
    expect(cc.code, cc.stderr).toBe(0);
    expect(cc.stderr).not.toMatch(/error/);
    const obj = new (native().BpfObject)(out);
    try {
      bpfCall(() => obj.load());
    } catch (e) {
      expect(e).toBeInstanceOf(BpfError);
      return e as BpfError;
    } finally {
      obj.close();
    }
    throw new Error(`the verifier accepted ${name}`);
  }

  it('a program the verifier refuses fails load with errno and the verifier log', async () => {
    // Reads past the end of the stack: the verifier must refuse it.
    const e = await refusedLoad('bad', `\tvolatile char buf[8];
\treturn buf[ctx->user_port];`);
    expect(e.errno).toBe(13); // EACCES: refused by the verifier
    expect(e.message).toMatch(/load BPF object/);
    expect(e.verifierLog).toMatch(/invalid|unbounded|min value|variable stack/i);
    expect(e.libbpfLog).toContain("prog 'bad'");
  }, 660_000);

  it("a refused program's verifier log reaches JavaScript whole, however long", async () => {
    // Hundreds of instructions the verifier walks (and logs) before the refused read.
    const e = await refusedLoad('long_bad', `\tvolatile char buf[8];
\t__u32 sum = ctx->user_ip4;
#pragma clang loop unroll(full)
\tfor (int i = 0; i < 100; i++)
\t\tsum = (sum ^ (__u32)i) * 31;
\treturn buf[(ctx->user_port ^ sum) & 0xffff];`);
    expect(e.verifierLog!.length).toBeGreaterThan(4096);
    // The verifier's last line: the log was not cut short.
    expect(e.verifierLog).toMatch(/processed \d+ insns/);
  }, 660_000);

  it('operations on a closed object fail cleanly', () => {
    const o = new (native().BpfObject)(objectPath);
    const map = o.map('wk_conn');
    o.close();
    expect(() => map.info()).toThrow(/closed/);
    expect(() => o.load()).toThrow(/closed/);
  });

  it('an object path that does not exist names the path and errno', () => {
    let err: unknown;
    try {
      bpfCall(() => new (native().BpfObject)('/nonexistent/x.bpf.o'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BpfError);
    expect((err as BpfError).message).toContain('/nonexistent/x.bpf.o');
    expect((err as BpfError).errno).toBe(2);
  });
});
