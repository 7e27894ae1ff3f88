/** Starts test/support/upstream-server.mjs inside a test host and collects its records. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './paths.js';
import type { TestHost } from './netns.js';

export interface UpstreamRecord {
  n: number;
  method: string;
  url: string;
  host: string;
  servername: string;
  authorization: string[];
  /** SHA-256 of each X-Api-Key value. */
  apiKey: string[];
  headerNames: string[];
  remoteAddress: string;
  remotePort: number;
  bodyLength: number;
  bodySha256: string;
}

export interface Upstream {
  records: UpstreamRecord[];
  stop(): Promise<void>;
}

const script = path.join(repoRoot, 'test/support/upstream-server.mjs');

export async function startUpstream(host: TestHost, cert: string, key: string, port = 443): Promise<Upstream> {
  const child: ChildProcess = spawn(
    'ip',
    ['netns', 'exec', host.ns, process.execPath, script, '--cert', cert, '--key', key, '--port', String(port), '--host', '::'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const records: UpstreamRecord[] = [];
  let buffered = '';
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`upstream exited early (${code})`)));
    child.stdout?.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = JSON.parse(buffered.slice(0, nl)) as UpstreamRecord & { listening?: boolean };
        buffered = buffered.slice(nl + 1);
        if (line.listening) resolve();
        else records.push(line);
      }
    });
  });
  child.removeAllListeners('exit');
  return {
    records,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
