/** Small process helpers for tests: run a command and capture its output. */
import { spawn, type SpawnOptions } from 'node:child_process';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** With a line saying so at the end when the command was killed for running past `timeoutMs`. */
  stderr: string;
}

/**
 * Runs `cmd args` to completion; never throws on a non-zero exit. A command
 * still running after `timeoutMs` (default 30 s) is killed, and its stderr
 * says so: a slow machine shows up as what it is, not as a missing output.
 */
export function run(cmd: string, args: string[], opts: SpawnOptions & { input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timeoutMs = opts.timeoutMs ?? 30_000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) stderr += `${stderr && !stderr.endsWith('\n') ? '\n' : ''}${cmd}: killed after running for ${timeoutMs} ms\n`;
      resolve({ code, signal, stdout, stderr });
    });
    // A command that never reads its input closes the pipe early; that is not an error here.
    child.stdin?.on('error', () => {});
    child.stdin?.end(opts.input ?? '');
  });
}

/** Runs a command that must succeed; throws with its stderr otherwise. */
export async function must(cmd: string, args: string[], opts: SpawnOptions = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}
