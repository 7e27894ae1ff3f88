/**
 * The strict plain-HTTP test upstream (plain-upstream.mjs), run in a test
 * network namespace on ports 80 and 8080, and what it recorded: every
 * request (Authorization values as SHA-256 hashes only), every malformed
 * one, and every connection's whole byte stream.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from '../../controller/datapath/native.js';
import type { TestHost } from './netns.js';
import { waitFor } from './wait.js';

export interface RequestRecord {
  n: number;
  conn: number;
  method: string;
  target: string;
  version: string;
  headerNames: string[];
  authorization: string[];
  /** SHA-256 of each X-Api-Key value. */
  apiKey: string[];
  /** The body was chunked; bodyLength and bodySha256 are then the decoded data's. */
  chunked: boolean;
  /** Chunks with data (the last, empty chunk not counted). */
  chunks: number;
  /** Lower-cased names of the trailer fields of a chunked body, in order. */
  trailerNames: string[];
  bodyLength: number;
  bodySha256: string;
  headSha256: string;
  rawSha256: string;
  remoteAddress: string;
  remotePort: number;
  localPort: number;
}
export interface ClosedRecord {
  conn: number;
  closed: true;
  bytes: number;
  sha256: string;
  pending: unknown;
  leftover: number;
  remotePort: number;
  localPort: number;
}
export interface ErrorRecord {
  conn: number;
  error: string;
  remotePort: number;
}

export class PlainUpstream {
  readonly requests: RequestRecord[] = [];
  readonly closed: ClosedRecord[] = [];
  readonly errors: ErrorRecord[] = [];
  /** Client port -> the upstream's id of the latest connection from it. */
  readonly #opened = new Map<number, number>();
  readonly #syncs = new Map<number, () => void>();
  #nextSync = 0;
  #child: ChildProcess;

  private constructor(child: ChildProcess) {
    this.#child = child;
  }

  static async start(host: TestHost): Promise<PlainUpstream> {
    const script = path.join(repoRoot, 'test/support/plain-upstream.mjs');
    const child = spawn('ip', ['netns', 'exec', host.ns, process.execPath, script, '--port', '80', '--port', '8080', '--host', '::'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    child.stdin?.on('error', () => {});
    const up = new PlainUpstream(child);
    let buffered = '';
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`plain upstream exited early (${code})`)));
      child.stdout?.on('data', (d: Buffer) => {
        buffered += d.toString();
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>;
          buffered = buffered.slice(nl + 1);
          if (line.listening) resolve();
          else if (line.sync !== undefined) up.#syncs.get(line.sync as number)?.();
          else if (line.opened) up.#opened.set(line.remotePort as number, line.conn as number);
          else if (line.closed) up.closed.push(line as unknown as ClosedRecord);
          else if (line.error) up.errors.push(line as unknown as ErrorRecord);
          else up.requests.push(line as unknown as RequestRecord);
        }
      });
    });
    child.removeAllListeners('exit');
    return up;
  }

  /**
   * The requests of the latest connection from client port `port`. Ports are
   * reused over a long suite: an earlier connection's records never count.
   */
  byPort(port: number): RequestRecord[] {
    const conn = this.#opened.get(port);
    return this.requests.filter((r) => r.conn === conn);
  }

  /**
   * Resolves once the records hold every request the upstream has started
   * to answer: a client that got its response can look for its record.
   */
  sync(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const child = this.#child;
      if (child.exitCode !== null || child.signalCode !== null) return reject(new Error('the plain upstream has exited'));
      const id = this.#nextSync++;
      const fail = (why: string) => {
        this.#syncs.delete(id);
        child.off('exit', onExit);
        reject(new Error(`plain upstream sync ${id}: ${why} (${this.requests.length} requests so far)`));
      };
      const onExit = () => fail('the upstream exited before answering');
      // A bound on a pipe round trip, so a wedged upstream fails here and says so.
      const timer = setTimeout(() => fail('no answer after 10s'), 10_000);
      child.once('exit', onExit);
      this.#syncs.set(id, () => {
        this.#syncs.delete(id);
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve();
      });
      child.stdin?.write(`sync ${id}\n`);
    });
  }

  /** The requests seen from a client port, once there are at least `count` (stdout may lag the client). */
  async from(port: number, count: number): Promise<RequestRecord[]> {
    await waitFor(() => this.byPort(port).length >= count, `${count} request(s) from port ${port}`);
    return this.byPort(port);
  }

  /** How the latest connection from client port `port` ended, once it has. */
  async closedFor(port: number): Promise<ClosedRecord> {
    const latest = () => this.closed.find((c) => c.conn === this.#opened.get(port));
    await waitFor(() => latest() !== undefined, `the upstream to see port ${port} close`);
    return latest() as ClosedRecord;
  }

  stop(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#child.exitCode !== null) return resolve();
      this.#child.once('exit', () => resolve());
      this.#child.kill('SIGTERM');
    });
  }
}
