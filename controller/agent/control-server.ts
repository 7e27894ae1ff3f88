/**
 * The running agent's control socket: HTTP on a Unix socket in the state
 * dir (STATE_DIR/agent.sock, 0600, so root only), for `wirekey` commands
 * and local probes. Routes are added by whoever owns them (health here;
 * reload and metrics elsewhere); an unknown route is 404, a handler that
 * throws is 500 with one line, never a crash.
 *
 * The same class serves `--metrics-listen` on TCP, with only the routes
 * copied to it (metrics and health: nothing that changes state).
 */
import http from 'node:http';
import { chmodSync, rmSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log.js';
import { WirekeyError } from '../errors.js';

export type ControlHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void | Promise<void>;

export function controlSocketPath(stateDir: string): string {
  return path.join(stateDir, 'agent.sock');
}

export class ControlServer {
  readonly #server: http.Server;
  readonly #routes = new Map<string, ControlHandler>();
  readonly #log: Logger;
  readonly #what: string;
  #path: string | undefined;

  /** `what` names the server in log lines and errors ('control', 'metrics'). */
  constructor(log: Logger, what = 'control') {
    this.#log = log;
    this.#what = what;
    this.#server = http.createServer((req, res) => this.#handle(req, res));
  }

  /** Serves `handler` for `method path` (path without the query). */
  route(method: string, urlPath: string, handler: ControlHandler): void {
    this.#routes.set(`${method} ${urlPath}`, handler);
  }

  /** The handler of `method path`, to serve it elsewhere too. */
  handler(method: string, urlPath: string): ControlHandler | undefined {
    return this.#routes.get(`${method} ${urlPath}`);
  }

  /**
   * Listens on `socketPath` (a stale socket file left by a dead agent is
   * replaced: the instance lock says no agent runs).
   * @throws WirekeyError WK_CONTROL_LISTEN naming the path and the error.
   */
  async listen(socketPath: string): Promise<void> {
    rmSync(socketPath, { force: true });
    try {
      await new Promise<void>((resolve, reject) => {
        this.#server.once('error', reject);
        this.#server.listen(socketPath, () => resolve());
      });
    } catch (err) {
      throw new WirekeyError('WK_CONTROL_LISTEN', `cannot listen on ${socketPath}: ${(err as Error).message}`, { cause: err });
    }
    chmodSync(socketPath, 0o600);
    this.#path = socketPath;
  }

  /**
   * Listens on TCP `host:port` (for scrapers on the network). Requests must
   * arrive whole within seconds and few connections are taken at once: a
   * slow or greedy client cannot hold the agent's resources.
   * @throws WirekeyError WK_METRICS_LISTEN naming the address and the error.
   */
  async listenTcp(host: string, port: number): Promise<void> {
    this.#server.headersTimeout = 5_000;
    this.#server.requestTimeout = 10_000;
    this.#server.maxConnections = 32;
    try {
      await new Promise<void>((resolve, reject) => {
        this.#server.once('error', reject);
        this.#server.listen({ host, port }, () => resolve());
      });
    } catch (err) {
      throw new WirekeyError('WK_METRICS_LISTEN', `cannot listen on ${host.includes(':') ? `[${host}]` : host}:${port}: ${(err as Error).message}`, { cause: err });
    }
    this.#server.on('error', (err) => this.#log.error('%s listener: %s', this.#what, err.message));
  }

  async close(): Promise<void> {
    if (!this.#server.listening) return;
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    if (this.#path) rmSync(this.#path, { force: true });
    this.#path = undefined;
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const urlPath = (req.url ?? '/').split('?')[0] as string;
    const handler = this.#routes.get(`${req.method} ${urlPath}`);
    if (!handler) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end(`no ${req.method} ${urlPath} here\n`);
      return;
    }
    Promise.resolve()
      .then(() => handler(req, res))
      .catch((err: unknown) => {
        this.#log.error('%s %s %s failed: %s', this.#what, req.method, urlPath, (err as Error).message);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(`${(err as Error).message.split('\n')[0]}\n`);
      });
  }
}
