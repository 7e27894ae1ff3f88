/** Runs `wirekey run` as its own process, as a user would, for the kernel and e2e tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './paths.js';

export { repoRoot };
export const wirekeyBin = path.join(repoRoot, 'bin/wirekey.js');

export interface AgentOptions {
  policy: string;
  stateDir: string;
  pinDir: string;
  proxyPort: number;
  audit: string;
  upstreamCa?: string;
  logLevel?: string;
  /** A cgroup directory to run the agent in (it joins before exec). */
  cgroup?: string;
  /** More `wirekey run` options. */
  extraArgs?: string[];
  /** A command that runs the agent (e.g. setpriv with its options), given node and its arguments. */
  wrapper?: string[];
  /** The agent's environment (default: this process's), e.g. NOTIFY_SOCKET as systemd sets it. */
  env?: NodeJS.ProcessEnv;
}

export interface RunningAgent {
  /** Everything the agent wrote to stderr and stdout so far. */
  output(): string;
  /** Kernel ids of its programs, from its ready line. */
  programIds: number[];
  /** SIGHUP, then wait for the agent to say whether the policy was reloaded. */
  reload(): Promise<'reloaded' | 'failed'>;
  /** SIGTERM, then wait for exit; resolves to the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL (no clean-up of any kind), then wait for exit. */
  kill(): Promise<void>;
  /** The agent's pid (the shell's, which execs node, when run in a cgroup). */
  pid: number;
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  const args = [wirekeyBin, 'run', '--policy', opts.policy, '--state-dir', opts.stateDir, '--pin-dir', opts.pinDir,
    '--proxy-port', String(opts.proxyPort), '--audit', opts.audit, '--log-level', opts.logLevel ?? 'debug'];
  if (opts.upstreamCa) args.push('--upstream-ca', opts.upstreamCa);
  args.push(...(opts.extraArgs ?? []));
  // WIREKEY_TEST_PROXY_WORKERS=N runs every agent the tests start with N proxy worker threads.
  const workers = process.env.WIREKEY_TEST_PROXY_WORKERS;
  if (workers && !args.includes('--proxy-workers')) args.push('--proxy-workers', workers);
  // WIREKEY_TEST_H1_FAST_PATH=off serves every HTTP/1.1 request through Node's HTTP server and undici.
  if (process.env.WIREKEY_TEST_H1_FAST_PATH === 'off' && !args.includes('--no-h1-fast-path')) args.push('--no-h1-fast-path');
  const command = [...(opts.wrapper ?? []), process.execPath, ...args];
  const child: ChildProcess = opts.cgroup
    ? spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', opts.cgroup, ...command], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env })
    : spawn(command[0] as string, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env });
  let out = '';
  const ready = new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /ready: .*programs ([\d,]+) attached/.exec(out);
      if (m) resolve(m[1] as string);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`wirekey run exited ${code} before ready:\n${out}`)));
    setTimeout(() => reject(new Error(`wirekey run not ready after 30s:\n${out}`)), 30_000).unref();
  });
  // 'close', not 'exit': what the agent wrote last (its stop lines) is read by then.
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  let ids: string;
  try {
    ids = await ready;
  } catch (err) {
    // SIGTERM lets an agent that got half way detach and unpin; then make sure.
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(opts.pinDir, { recursive: true, force: true });
    rmSync(`${path.resolve(opts.pinDir)}-draining`, { recursive: true, force: true });
    throw err;
  }
  let reloads = 0;
  return {
    output: () => out,
    reload: async () => {
      const seen = (out.match(/policy reload(ed| failed)/g) ?? []).length;
      reloads += 1;
      child.kill('SIGHUP');
      for (let i = 0; i < 200; i++) {
        const results = out.match(/policy reload(ed| failed)/g) ?? [];
        if (results.length > seen) return results.at(-1) === 'policy reloaded' ? 'reloaded' : 'failed';
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`no reload result after SIGHUP #${reloads}:\n${out}`);
    },
    programIds: ids.split(',').map(Number),
    pid: child.pid as number,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** A TCP port free on both 127.0.0.1 and ::1. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
      s.on('error', reject);
    });
    const v6ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer().listen({ port, host: '::1', ipv6Only: true }, () => s.close(() => resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (v6ok) return port;
  }
}
