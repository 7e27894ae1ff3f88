/**
 * Native load clients for bench/wire.ts: wrk (request rate and latency)
 * and curl (one large download), run as processes of a cgroup, optionally
 * pinned to a CPU and given their own /etc/hosts (a private mount
 * namespace in which a file of the bench's is bound over it, so that wrk
 * resolves the service's name, and sends it as SNI, without touching the
 * host's resolver).
 */
import { spawn, type ChildProcess } from 'node:child_process';

export interface ClientOptions {
  /** The cgroup directory the client runs in, from its first instruction. */
  cgroup: string;
  /** A CPU list for taskset, or undefined to leave the client unpinned. */
  cpu?: string;
  /** A hosts file bound over /etc/hosts for this client only. */
  hosts?: string;
  timeoutMs: number;
  /** Told of the process, so that the caller can stop it on an interruption. */
  onChild(c: ChildProcess): void;
}

export interface ClientRun {
  /** The client's own pid (the commands before it exec it). */
  pid: number;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
}

export function startClient(cmd: string[], o: ClientOptions): ClientRun {
  const argv = [
    'sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', o.cgroup,
    ...(o.cpu === undefined ? [] : ['taskset', '-c', o.cpu]),
    ...(o.hosts === undefined ? [] : ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', o.hosts]),
    ...cmd,
  ];
  const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  o.onChild(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Awaited<ClientRun['done']>>((resolve, reject) => {
    const timer = setTimeout(() => {
      stderr += `\n${cmd[0]}: killed after running for ${o.timeoutMs} ms`;
      child.kill('SIGKILL');
    }, o.timeoutMs);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { pid: child.pid!, done };
}

export interface WrkResult {
  requests: number;
  rps: number;
  p50Us: number;
  p99Us: number;
}

const US: Record<string, number> = { us: 1, ms: 1e3, s: 1e6, m: 60e6 };

/**
 * Reads `wrk --latency` output.
 * @throws Error when a figure is missing, or when wrk saw socket errors or
 *   non-2xx/3xx answers: a rate that includes failures measures nothing.
 */
export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp, what: string): RegExpExecArray => {
    const m = re.exec(out);
    if (!m) throw new Error(`no ${what} in wrk's output:\n${out}`);
    return m;
  };
  const errors = /Socket errors: (.*)/.exec(out);
  if (errors) throw new Error(`wrk saw socket errors (${errors[1]}):\n${out}`);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  if (non2xx) throw new Error(`wrk got ${non2xx[1]} answers other than 2xx/3xx:\n${out}`);
  const latency = (pct: string) => {
    const m = num(new RegExp(`^\\s+${pct}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm'), `${pct}th percentile`);
    return Number(m[1]) * (US[m[2] as string] as number);
  };
  return {
    requests: Number(num(/(\d+) requests in /, 'request count')[1]),
    rps: Number(num(/Requests\/sec:\s+([\d.]+)/, 'request rate')[1]),
    p50Us: latency('50'),
    p99Us: latency('99'),
  };
}
