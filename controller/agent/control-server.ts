/**
 * The running agent's control socket: HTTP on a Unix socket in the state
 * dir (STATE_DIR/agent.sock, 0600, so root only), for `wirekey` commands
 * and local probes. Routes are added by whoever owns them (health here;
 * reload and metrics elsewhere); an unknown route is 404, a handler that
 * throws is 500 with one line, never a crash.
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
  #path: string | undefined;

  constructor(log: Logger) {
    this.#log = log;
    this.#server = http.createServer((req, res) => this.#handle(req, res));
  }

  /** Serves `handler` for `method path` (path without the query). */
  route(method: string, urlPath: string, handler: ControlHandler): void {
    this.#routes.set(`${method} ${urlPath}`, handler);
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
        this.#log.error('control %s %s failed: %s', req.method, urlPath, (err as Error).message);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(`${(err as Error).message.split('\n')[0]}\n`);
      });
  }
}
