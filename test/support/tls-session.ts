/**
 * A workload's TLS connection held open across events: a Python process in
 * a test cgroup (test/support/clients/tls-session.py) that writes exactly
 * the bytes given and reads responses one at a time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './paths.js';

export interface SessionResponse {
  status?: number;
  headers?: [string, string][];
  body?: string;
  closed?: boolean;
  rest?: string;
  error?: string;
  connected?: boolean;
}

export class TlsSession {
  readonly #child: ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiters: ((line: string) => void)[] = [];
  #buffered = '';
  #exited = false;

  /**
   * Connects from cgroup `cgroupDir` to `ip:port`, verifying `host` against
   * `caFile`. With `hold`, only TCP: connected() resolves once it is made,
   * and tls() sends the ClientHello and resolves once the handshake is done.
   */
  constructor(cgroupDir: string, host: string, ip: string, port: number, caFile: string, opts: { hold?: boolean } = {}) {
    const script = path.join(repoRoot, 'test/support/clients/tls-session.py');
    const args = [script, host, ip, String(port), caFile, ...(opts.hold ? ['hold'] : [])];
    this.#child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroupDir, 'python3', ...args], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.#child.stdout?.on('data', (d: Buffer) => {
      this.#buffered += d.toString();
      let nl: number;
      while ((nl = this.#buffered.indexOf('\n')) >= 0) {
        const line = this.#buffered.slice(0, nl);
        this.#buffered = this.#buffered.slice(nl + 1);
        const w = this.#waiters.shift();
        if (w) w(line);
        else this.#lines.push(line);
      }
    });
    this.#child.once('exit', () => {
      this.#exited = true;
      for (const w of this.#waiters.splice(0)) w(JSON.stringify({ error: 'session process exited' }));
    });
  }

  send(bytes: string | Buffer): void {
    const b = typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes;
    this.#child.stdin?.write(`send ${b.toString('base64')}\n`);
  }

  /** The next response on the connection. */
  read(method = 'GET'): Promise<SessionResponse> {
    this.#child.stdin?.write(`read ${method}\n`);
    return this.#next();
  }

  /** Resolves once the TLS handshake is done (or with the error that ended it). */
  hello(): Promise<SessionResponse> {
    this.#child.stdin?.write('hello\n');
    return this.#next();
  }

  /** With `hold`: resolves once the TCP connection is made (no byte of TLS sent yet). */
  connected(): Promise<SessionResponse> {
    return this.#next();
  }

  /** With `hold`: sends the ClientHello; resolves once the handshake is done (or with its error). */
  tls(): Promise<SessionResponse> {
    this.#child.stdin?.write('tls\n');
    return this.#next();
  }

  /** Everything until the server closes the connection. */
  eof(): Promise<SessionResponse> {
    this.#child.stdin?.write('eof\n');
    return this.#next();
  }

  close(): void {
    if (!this.#exited) this.#child.kill('SIGKILL');
  }

  #next(): Promise<SessionResponse> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(JSON.parse(line) as SessionResponse);
    if (this.#exited) return Promise.resolve({ error: 'session process exited' });
    return new Promise((resolve) => this.#waiters.push((l) => resolve(JSON.parse(l) as SessionResponse)));
  }
}
