/**
 * The kernel HTTP datapath's scanners (bpf/http-head.bpf.h,
 * bpf/http-chunked.bpf.h) compiled for the host with the driver in
 * test/native/http-parser-host.c, under AddressSanitizer and UBSan, and run
 * over stdin/stdout: no root, no BPF. scripts/build builds it; a test builds
 * it here too when it is missing or older than its sources.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { WK_HTTP_STATS, type HttpStatName } from '../../controller/datapath/layout.js';
import { repoRoot } from './paths.js';

export const HOST_PARSER = path.join(repoRoot, 'build/test/http-parser-host');
const SOURCES = ['test/native/http-parser-host.c', 'bpf/http-head.bpf.h', 'bpf/http-chunked.bpf.h', 'bpf/wirekey.h'];
/** The same command as scripts/build's. */
const CC_ARGS = ['-std=gnu11', '-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all',
  '-Wall', '-Wextra', '-Werror', '-Ibpf', '-o', HOST_PARSER, 'test/native/http-parser-host.c'];

/** Builds the host parser unless it is newer than every source. Throws the compiler's output on failure. */
export function buildHostParser(): string {
  const built = existsSync(HOST_PARSER) ? statSync(HOST_PARSER).mtimeMs : 0;
  if (SOURCES.some((f) => statSync(path.join(repoRoot, f)).mtimeMs > built)) {
    mkdirSync(path.dirname(HOST_PARSER), { recursive: true });
    execFileSync(process.env.CC ?? 'cc', CC_ARGS, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  }
  return HOST_PARSER;
}

export interface HostAuthority {
  /** enum host_state: 0 start, 1 name, 2 port, 3 trailing space, 4 bad. */
  state: number;
  name: string;
  port: number;
  digits: number;
}

export interface HostParse {
  /** Stream offsets of every injected request: after its request line, after its head. */
  heads: [number, number][];
  /** Stream bytes passed (the injected lines not counted). */
  passed: number;
  /** The refusal, as its wk_http_stats counter; null when nothing was refused. */
  refused: HttpStatName | null;
  /** Bytes held back: an incomplete head at the end of the stream. */
  held: number;
  /** The stream ended inside a chunked body. */
  chunked: boolean;
  /** A WebSocket upgrade was injected: every later byte passed unparsed. */
  passThrough: boolean;
  /** The last head scan's state (struct wk_http_scan). */
  scan: {
    method: string;
    clen: number;
    seenLength: number;
    seenTe: number;
    http10: number;
    seenHost: number;
    /** enum target_form: 0 origin, 1 scheme, 2 authority, 3 path, 4 bad. */
    targetForm: number;
    rlEnd: number;
    headEnd: number;
    host: HostAuthority;
    target: HostAuthority;
    /** All of struct wk_http_scan, hex: a word and a byte scan of the same head must leave it alike. */
    raw: string;
  };
}

export interface HostCase {
  /** One sendmsg each. */
  writes: (string | Buffer)[];
  /** The header line being injected; the scanners refuse it when the client sends it. */
  line?: string;
  /** A service that lists hosts (WK_HTTP_DEST_CHECK_HOST): its hosts and the destination port. */
  hosts?: { names: string[]; port: number };
}

export const DEFAULT_LINE = 'Authorization: Bearer host-test\r\n';

const hex = (b: string | Buffer) => (typeof b === 'string' ? Buffer.from(b, 'latin1') : b).toString('hex');

/**
 * Runs every case through one process of the host parser; with `bytes`,
 * its head scan takes a byte at a time only (never 8 at once).
 */
export function hostParse(cases: HostCase[], o: { bytes?: boolean } = {}): HostParse[] {
  const input = cases.map((c) => [hex(c.line ?? DEFAULT_LINE),
    ...(c.hosts ? [`hosts=${hex(c.hosts.names.join(','))}`, `port=${c.hosts.port}`] : []), ...c.writes.filter((w) => w.length).map(hex)].join(' ')).join('\n') + '\n';
  const r = spawnSync(buildHostParser(), o.bytes ? ['--bytes'] : [], { input, maxBuffer: 1 << 30, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`http-parser-host exited with ${r.status ?? r.signal}: ${r.stderr}`);
  const out = r.stdout.trimEnd().split('\n').map((l) => {
    const { reason, ...rest } = JSON.parse(l) as Omit<HostParse, 'refused'> & { reason: number };
    return { ...rest, refused: reason ? (WK_HTTP_STATS[reason] ?? `unknown reason ${reason}`) : null } as HostParse;
  });
  if (out.length !== cases.length) throw new Error(`http-parser-host answered ${out.length} of ${cases.length} cases`);
  return out;
}
