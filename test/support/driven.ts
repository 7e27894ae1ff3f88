/** A long-lived process driven one command line at a time over stdin (see clients/py-workload.py). */
import { spawn, type ChildProcess } from 'node:child_process';

export interface DrivenProcess {
  pid: number;
  /** Sends one command line and resolves to the next line the process prints. */
  send(line: string): Promise<string>;
  /** Sends a line without waiting for an answer (for exec). */
  write(line: string): void;
  /** Everything printed so far, stdout and stderr. */
  output(): string;
  exited: Promise<number | null>;
  kill(): void;
}

/** Starts `cmd args` inside cgroup `cgroupDir` (joined before exec, like runInCgroup). */
export function startDriven(cgroupDir: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): DrivenProcess {
  const child: ChildProcess = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroupDir, cmd, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env,
  });
  let out = '';
  let pending: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
    const lines = d.toString().split('\n').filter(Boolean);
    pending.push(...lines);
    while (pending.length && waiters.length) (waiters.shift() as (l: string) => void)(pending.shift() as string);
  });
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  child.stdin?.on('error', () => {});
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    pid: child.pid as number,
    send(line) {
      child.stdin?.write(`${line}\n`);
      return new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no answer to "${line}"; output so far:\n${out}`)), 20_000);
        waiters.push((l) => {
          clearTimeout(timer);
          resolve(l);
        });
        while (pending.length && waiters.length) (waiters.shift() as (l: string) => void)(pending.shift() as string);
      });
    },
    write(line) {
      child.stdin?.write(`${line}\n`);
    },
    output: () => out,
    exited,
    kill: () => {
      pending = [];
      child.kill('SIGKILL');
    },
  };
}
