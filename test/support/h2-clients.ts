/**
 * HTTP/2 and gRPC clients as workloads, for the e2e and adversarial tests:
 * the Python venv they run from, a private /etc/hosts naming the test
 * hosts, and a Node http2 client (clients/node-h2.mjs) driven line by line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './paths.js';
import { must } from './shell.js';
import { runInCgroup } from './cgroup.js';
import type { RunResult } from './shell.js';

/** The cached venv with httpx[http2], h2 and grpcio (scripts/h2-requirements.txt, built by scripts/python-tools). */
export async function h2Venv(): Promise<string> {
  return (await must(path.join(repoRoot, 'scripts/python-tools'), [path.join(repoRoot, 'scripts/h2-requirements.txt')])).trim();
}

/** Writes an /etc/hosts that resolves `names` to `ip`, for withHosts(). */
export function hostsFile(dir: string, ip: string, names: string[]): string {
  const file = path.join(dir, 'h2-hosts');
  writeFileSync(file, `127.0.0.1 localhost\n${names.map((n) => `${ip} ${n}`).join('\n')}\n`);
  return file;
}

/** The command line that runs `cmd args` in cgroup `cg` with `hosts` as its /etc/hosts (a private mount namespace). */
function inCgroupWithHosts(cg: string, hosts: string, cmd: string, args: string[]): string[] {
  return ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg, 'unshare', '-m', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hosts, cmd, ...args];
}

/** Runs `cmd args` to completion in cgroup `cg` with `hosts` as /etc/hosts. */
export function runWithHosts(cg: string, hosts: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv, timeoutMs?: number): Promise<RunResult> {
  return runInCgroup(cg, 'unshare', ['-m', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hosts, cmd, ...args], {
    env: env ?? process.env, timeoutMs,
  });
}

export interface H2Outcome {
  id?: string;
  status?: number;
  headers?: Record<string, string | string[]> | true;
  body?: string;
  bodyLength?: number;
  bodySha256?: string;
  trailers?: Record<string, string>;
  rstCode?: number;
  error?: string;
  goaway?: number;
  sessionError?: string;
}

/** One Node http2 session from a cgroup: requests started and cancelled by command, outcomes read as they come. */
export class NodeH2Client {
  readonly #child: ChildProcess;
  readonly #lines: H2Outcome[] = [];
  readonly #waiters: { pred: (o: H2Outcome) => boolean; resolve: (o: H2Outcome) => void }[] = [];
  #buffered = '';
  #exited = false;

  constructor(cg: string, hosts: string, origin: string, caFile: string) {
    const [cmd, ...args] = inCgroupWithHosts(cg, hosts, process.execPath, [path.join(repoRoot, 'test/support/clients/node-h2.mjs'), origin]);
    this.#child = spawn(cmd as string, args, { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, NODE_EXTRA_CA_CERTS: caFile } });
    this.#child.stdout?.on('data', (d: Buffer) => {
      this.#buffered += d.toString();
      let nl: number;
      while ((nl = this.#buffered.indexOf('\n')) >= 0) {
        const o = JSON.parse(this.#buffered.slice(0, nl)) as H2Outcome;
        this.#buffered = this.#buffered.slice(nl + 1);
        this.#lines.push(o);
        for (const w of [...this.#waiters]) {
          if (w.pred(o)) {
            this.#waiters.splice(this.#waiters.indexOf(w), 1);
            w.resolve(o);
          }
        }
      }
    });
    this.#child.once('exit', () => {
      this.#exited = true;
      for (const w of this.#waiters.splice(0)) w.resolve({ error: 'client exited' });
    });
  }

  request(id: string, method: string, urlPath: string, bodyBytes = 0): void {
    this.#child.stdin?.write(`req ${id} ${method} ${urlPath}${bodyBytes ? ` ${bodyBytes}` : ''}\n`);
  }

  cancel(id: string): void {
    this.#child.stdin?.write(`cancel ${id}\n`);
  }

  /** The first outcome (seen already or to come) that `pred` accepts. */
  next(pred: (o: H2Outcome) => boolean): Promise<H2Outcome> {
    const seen = this.#lines.find(pred);
    if (seen) return Promise.resolve(seen);
    if (this.#exited) return Promise.resolve({ error: 'client exited' });
    return new Promise((resolve) => this.#waiters.push({ pred, resolve }));
  }

  /** The final outcome of request `id`. */
  result(id: string): Promise<H2Outcome> {
    return this.next((o) => o.id === id && o.headers !== true);
  }

  close(): void {
    if (!this.#exited) this.#child.kill('SIGKILL');
  }
}
