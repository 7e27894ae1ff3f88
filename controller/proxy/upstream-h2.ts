/**
 * The proxy's HTTP/2 sessions to upstream services, for requests that
 * reached it over HTTP/2.
 *
 * A destination is asked for `h2` and `http/1.1` in ALPN; one that picks
 * `h2` gets a session, one that picks HTTP/1.1 is remembered as such for a
 * while and its requests go through the HTTP/1.1 agent (upstream.ts).
 * Sessions follow the HTTP/1.1 pools' rule exactly: one per partition
 * (workload, binding, credential version) and destination, never shared
 * across partitions. The certificate is verified against the service's
 * host name (the SNI), never the address dialled. A session with no stream
 * for `idleMs` is closed.
 */
import http2 from 'node:http2';
import tls from 'node:tls';

export interface UpstreamH2Options {
  /** The trust store (upstream.ts upstreamSecureContext); undefined: Node's own. */
  secureContext?: tls.SecureContext;
  /** A session with no open stream for this long is closed (ms). */
  idleMs?: number;
  /** How long a destination that chose HTTP/1.1 in ALPN is not asked again (ms). */
  h1MemoryMs?: number;
}

/** Where a request goes, and whose it is. */
export interface UpstreamH2Target {
  /** workload \0 binding \0 credential version: the same partition as the HTTP/1.1 pool's. */
  partition: string;
  address: string;
  port: number;
  /** The service's host name: the SNI sent and the name the certificate must carry. */
  servername: string;
}

/**
 * HTTP/2 flow-control windows the proxy offers, each way (the workload's
 * sessions and the upstream ones): what a peer may send before the proxy
 * has passed it on. The protocol's 64 KiB default caps a stream at 64 KiB
 * per round trip through the proxy's event loop; these let a bulk transfer
 * run at what TLS and the sockets allow, while what one session can make
 * the proxy hold stays bounded by the session's window (the agent reads
 * no further while a stream's reader is paused).
 */
export const H2_STREAM_WINDOW = 1024 * 1024;
export const H2_SESSION_WINDOW = 2 * 1024 * 1024;

/** Sessions' own bounds: what an upstream can make the agent hold. */
const SESSION_OPTIONS: http2.ClientSessionOptions = {
  maxSessionMemory: 10,
  maxHeaderListPairs: 256,
  maxSettings: 32,
  maxOutstandingPings: 10,
  settings: { enablePush: false, maxHeaderListSize: 256 * 1024, initialWindowSize: H2_STREAM_WINDOW },
};

export class UpstreamH2Pool {
  readonly #opts: Required<Omit<UpstreamH2Options, 'secureContext'>> & { secureContext?: tls.SecureContext };
  readonly #sessions = new Map<string, http2.ClientHttp2Session>();
  readonly #connecting = new Map<string, Promise<http2.ClientHttp2Session | null>>();
  /** destination -> until when it is taken to speak HTTP/1.1 only. */
  readonly #h1Only = new Map<string, number>();
  #closed = false;

  constructor(opts: UpstreamH2Options = {}) {
    this.#opts = { idleMs: 60_000, h1MemoryMs: 10 * 60_000, ...opts };
  }

  /**
   * The partition's session to the destination, made if there is none;
   * null when the destination does not offer h2 (use HTTP/1.1).
   * @throws the connection's error (refused, TLS verification failed, ...).
   */
  session(target: UpstreamH2Target): Promise<http2.ClientHttp2Session | null> {
    const dest = `${target.address}\0${target.port}\0${target.servername}`;
    const h1Until = this.#h1Only.get(dest);
    if (h1Until !== undefined) {
      if (h1Until > Date.now()) return Promise.resolve(null);
      this.#h1Only.delete(dest);
    }
    const key = `${target.partition}\0${dest}`;
    const open = this.#sessions.get(key);
    if (open && !open.closed && !open.destroyed) return Promise.resolve(open);
    const pending = this.#connecting.get(key);
    if (pending) return pending;
    const made = this.#connect(key, dest, target).finally(() => this.#connecting.delete(key));
    this.#connecting.set(key, made);
    return made;
  }

  /** Open sessions, for tests and status. */
  get size(): number {
    return this.#sessions.size;
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#sessions.values()) s.destroy();
    this.#sessions.clear();
  }

  #connect(key: string, dest: string, target: UpstreamH2Target): Promise<http2.ClientHttp2Session | null> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host: target.address,
        port: target.port,
        servername: target.servername,
        // Said here, never left to NODE_TLS_REJECT_UNAUTHORIZED in the agent's environment.
        rejectUnauthorized: true,
        ALPNProtocols: ['h2', 'http/1.1'],
        ...(this.#opts.secureContext ? { secureContext: this.#opts.secureContext } : {}),
      });
      socket.setNoDelay(true);
      const fail = (err: Error) => {
        socket.destroy();
        reject(err);
      };
      socket.once('error', fail);
      socket.once('secureConnect', () => {
        socket.off('error', fail);
        if (socket.alpnProtocol !== 'h2' || this.#closed) {
          // HTTP/1.1 (or no ALPN): the HTTP/1.1 agent makes its own connection.
          this.#h1Only.set(dest, Date.now() + this.#opts.h1MemoryMs);
          socket.destroy();
          resolve(null);
          return;
        }
        const authority = `https://${target.servername}${target.port === 443 ? '' : `:${target.port}`}`;
        const session = http2.connect(authority, { ...SESSION_OPTIONS, createConnection: () => socket });
        session.setLocalWindowSize(H2_SESSION_WINDOW);
        const forget = () => {
          if (this.#sessions.get(key) === session) this.#sessions.delete(key);
        };
        // A session that failed is forgotten; its streams get the error.
        session.on('error', forget);
        session.once('close', forget);
        // No new streams after a GOAWAY: the next request makes a new session.
        session.once('goaway', forget);
        // Idle (no frames either way): closed gracefully, open streams finish.
        session.setTimeout(this.#opts.idleMs, () => {
          forget();
          session.close();
        });
        this.#sessions.set(key, session);
        resolve(session);
      });
    });
  }
}
