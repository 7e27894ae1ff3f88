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
  /** h2-upstream-server.mjs only: 'h2', the `te` and `x-custom` it got, and the host header apart from :authority. */
  protocol?: string;
  te?: string;
  custom?: string;
  hostHeader?: string;
  /** upstream-server.mjs: a WebSocket upgrade: "websocket", and its connection number. */
  upgrade?: string;
  ws?: number;
}

/** A WebSocket message the upstream received (and echoed back). */
export interface UpstreamMessage {
  wsMessage: number;
  binary: boolean;
  length: number;
  sha256: string;
}

export interface Upstream {
  records: UpstreamRecord[];
  /** WebSocket messages received, in order. */
  messages: UpstreamMessage[];
  /**
   * Resolves once `records` holds every request the upstream has started
   * to answer: a client that got its response can look for its record.
   */
  sync(): Promise<void>;
  /** Writes a line to the server's stdin (h2-upstream-server.mjs: `release NAME`). */
  command(line: string): void;
  /** Lines other than records (h2-upstream-server.mjs: {"cancelled": path}). */
  events: Record<string, unknown>[];
  stop(): Promise<void>;
}

const script = path.join(repoRoot, 'test/support/upstream-server.mjs');

/** The HTTP/2-only upstream (test/support/h2-upstream-server.mjs), for startUpstream's `server`. */
export const H2_UPSTREAM = path.join(repoRoot, 'test/support/h2-upstream-server.mjs');

/** With `plain`, upstream-server.mjs serves plain HTTP (cert and key unused). */
export async function startUpstream(host: TestHost, cert: string, key: string, port = 443, server = script, opts: { plain?: boolean } = {}): Promise<Upstream> {
  const tlsArgs = opts.plain ? ['--plain'] : ['--cert', cert, '--key', key];
  const child: ChildProcess = spawn(
    'ip',
    ['netns', 'exec', host.ns, process.execPath, server, ...tlsArgs, '--port', String(port), '--host', '::'],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const records: UpstreamRecord[] = [];
  const messages: UpstreamMessage[] = [];
  const events: Record<string, unknown>[] = [];
  const syncs = new Map<number, () => void>();
  let nextSync = 0;
  let buffered = '';
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`upstream exited early (${code})`)));
    child.stdout?.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = JSON.parse(buffered.slice(0, nl)) as UpstreamRecord & Partial<UpstreamMessage> & { listening?: boolean; sync?: number; cancelled?: string };
        buffered = buffered.slice(nl + 1);
        if (line.listening) resolve();
        else if (line.sync !== undefined) syncs.get(line.sync)?.();
        else if (line.cancelled !== undefined) events.push(line as unknown as Record<string, unknown>);
        else if (line.wsMessage !== undefined) messages.push(line as UpstreamMessage);
        else records.push(line);
      }
    });
  });
  child.removeAllListeners('exit');
  child.stdin?.on('error', () => {});
  return {
    records,
    messages,
    events,
    command: (line: string) => child.stdin?.write(`${line}\n`),
    sync: () =>
      new Promise<void>((resolve, reject) => {
        if (child.exitCode !== null || child.signalCode !== null) return reject(new Error('the upstream has exited'));
        const id = nextSync++;
        const fail = (why: string) => {
          syncs.delete(id);
          child.off('exit', onExit);
          reject(new Error(`upstream sync ${id}: ${why} (${records.length} records so far)`));
        };
        const onExit = () => fail('the upstream exited before answering');
        // A bound on a pipe round trip, so a wedged upstream fails here and says so.
        const timer = setTimeout(() => fail('no answer after 10s'), 10_000);
        child.once('exit', onExit);
        syncs.set(id, () => {
          syncs.delete(id);
          clearTimeout(timer);
          child.off('exit', onExit);
          resolve();
        });
        child.stdin?.write(`sync ${id}\n`);
      }),
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
