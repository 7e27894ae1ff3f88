/**
 * nginx for bench/wire.ts: the upstream (in the test host's namespace) and
 * the same-job reverse proxy (on loopback; one worker, or as many as the
 * proxy's worker threads), each one master and its workers, run in the foreground from a directory of its own, and the upstream's
 * access log read back as per-arm counts.
 *
 * The upstream logs one line per request: the listener's port, whether the
 * request carried the bench's bearer (a flag, never the value), the peer's
 * port, the body bytes sent, and the `a` query argument each arm tags its
 * requests with. Lines are counted under their tag whenever they are read,
 * so a request still in flight when its client stopped lands under its own
 * arm, not under the next one.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readSync, fstatSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { sleep } from '../test/support/wait.js';

export interface Nginx {
  pid: number;
  /** SIGTERM (nginx's fast shutdown), then wait for the master to exit. Idempotent. */
  stop(): Promise<void>;
}

/** What the upstream saw for one tag. */
export interface TagCounts {
  requests: number;
  /** Requests per listener port. */
  byPort: Map<number, number>;
  /** Requests whose Authorization header was exactly the bench's bearer, or any other value. */
  bearer: number;
  otherAuthorization: number;
  /** The peers' ports: the connections the upstream was given. */
  remotePorts: Set<number>;
  bodyBytes: number;
}

const directives = (lines: string[]) => lines.map((l) => `  ${l}`).join('\n');

/** What both nginx configurations share: `workers` worker processes (default one), a private prefix, no request-size surprises. */
function mainContext(dir: string, http: string[], workers = 1): string {
  return [
    'daemon off;',
    'master_process on;',
    `worker_processes ${workers};`,
    // The bench runs as root and keeps its files in a directory only root can read.
    'user root;',
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log warn;`,
    'events { worker_connections 4096; }',
    'http {',
    directives([
      `client_body_temp_path ${dir}/client-body;`,
      `proxy_temp_path ${dir}/proxy;`,
      `fastcgi_temp_path ${dir}/fastcgi;`,
      `uwsgi_temp_path ${dir}/uwsgi;`,
      `scgi_temp_path ${dir}/scgi;`,
      'access_log off;',
      // Keep-alive connections are never closed by count during a run.
      'keepalive_requests 1000000;',
      'keepalive_timeout 300s;',
      ...http,
    ]),
    '}',
    '',
  ].join('\n');
}

/**
 * The upstream: plain HTTP on `ip`:80 and HTTPS (a certificate for the
 * service's name) on `ip`:443; a short body at every path but /big, which
 * is `bigFile`.
 */
export function upstreamConfig(dir: string, o: { ip: string; cert: string; key: string; bearer: string; wwwRoot: string }): string {
  return mainContext(dir, [
    `map $http_authorization $wk_auth { "" none; "${o.bearer}" bearer; default other; }`,
    "log_format wk '$server_port $wk_auth $remote_port $body_bytes_sent $arg_a';",
    'sendfile on;',
    'server {',
    directives([
      `listen ${o.ip}:80;`,
      `listen ${o.ip}:443 ssl;`,
      `ssl_certificate ${o.cert};`,
      `ssl_certificate_key ${o.key};`,
      `access_log ${dir}/access.log wk;`,
      `location = /big { root ${o.wwwRoot}; default_type application/octet-stream; }`,
      'location / { default_type application/json; return 200 \'{"ok":true}\\n\'; }',
    ]),
    '}',
  ]);
}

/**
 * The same job as wirekey's proxy, done by nginx: terminate TLS on
 * 127.0.0.1:`port` with a certificate for the service's name, set the
 * Authorization header, and re-originate TLS to the upstream with the
 * upstream's certificate verified against `upstreamCa` (SNI and name
 * check), over kept-alive upstream connections.
 */
export function sameJobConfig(dir: string, o: { port: number; cert: string; key: string; authorization: string; upstream: string; serverName: string; upstreamCa: string; workers?: number }): string {
  const workers = o.workers ?? 1;
  return mainContext(dir, [
    'upstream wk_upstream {',
    directives([`server ${o.upstream};`, 'keepalive 64;', 'keepalive_requests 1000000;', 'keepalive_timeout 300s;']),
    '}',
    'server {',
    directives([
      // Several workers: a listening socket each (SO_REUSEPORT), as the proxy's worker threads have.
      `listen 127.0.0.1:${o.port} ssl${workers > 1 ? ' reuseport' : ''};`,
      `ssl_certificate ${o.cert};`,
      `ssl_certificate_key ${o.key};`,
      'location / {',
      directives([
        'proxy_pass https://wk_upstream;',
        'proxy_http_version 1.1;',
        'proxy_set_header Connection "";',
        'proxy_set_header Host $host;',
        `proxy_set_header Authorization "${o.authorization}";`,
        'proxy_ssl_verify on;',
        `proxy_ssl_trusted_certificate ${o.upstreamCa};`,
        'proxy_ssl_server_name on;',
        `proxy_ssl_name ${o.serverName};`,
        'proxy_ssl_protocols TLSv1.2 TLSv1.3;',
        'proxy_ssl_session_reuse on;',
        // Stream large bodies through memory buffers, never through a temporary file.
        'proxy_max_temp_file_size 0;',
      ]),
      '}',
    ]),
    '}',
  ], workers);
}

/**
 * Starts nginx with `config` written into `dir`, as `command` + nginx (a
 * prefix such as `ip netns exec NS` or a cgroup join and taskset), and
 * waits until `listening` (host, port) accepts connections.
 * @throws Error when nginx exits first or does not listen within 10 s; it is stopped then.
 */
export async function startNginx(dir: string, config: string, prefix: string[], listening: { host: string; port: number }): Promise<Nginx> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const conf = path.join(dir, 'nginx.conf');
  writeFileSync(conf, config);
  return startServer(`nginx (${dir})`, [...prefix, 'nginx', '-p', dir, '-c', conf, '-e', path.join(dir, 'error.log')], listening);
}

/** Starts `cmd` and waits until it accepts connections on `listening`; fails with its stderr if it exits first. */
export async function startServer(name: string, cmd: string[], listening: { host: string; port: number }): Promise<Nginx> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let gone = false;
  void exited.then(() => (gone = true));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (gone) throw new Error(`${name} exited before listening: ${stderr.trim()}`);
    if (await accepts(listening.host, listening.port)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${name} not listening on ${listening.host}:${listening.port} after 10 s: ${stderr.trim()}`);
    }
    await sleep(20);
  }
  return { pid: child.pid!, stop };
}

function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Reads the upstream's access log as it grows, counting lines per tag. */
export class AccessLog {
  readonly counts = new Map<string, TagCounts>();
  #fd: number | undefined;
  #offset = 0;
  #partial = '';

  constructor(readonly file: string) {}

  /** Counts the lines written since the last call; returns the counts of `tag`. */
  read(tag?: string): TagCounts {
    if (this.#fd === undefined) this.#fd = openSync(this.file, 'r');
    const size = fstatSync(this.#fd).size;
    const chunk = Buffer.alloc(1 << 20);
    while (this.#offset < size) {
      const n = readSync(this.#fd, chunk, 0, chunk.length, this.#offset);
      if (n <= 0) break;
      this.#offset += n;
      const lines = (this.#partial + chunk.subarray(0, n).toString('latin1')).split('\n');
      this.#partial = lines.pop() ?? '';
      for (const line of lines) this.#count(line);
    }
    return this.get(tag ?? '');
  }

  get(tag: string): TagCounts {
    let c = this.counts.get(tag);
    if (!c) {
      c = { requests: 0, byPort: new Map(), bearer: 0, otherAuthorization: 0, remotePorts: new Set(), bodyBytes: 0 };
      this.counts.set(tag, c);
    }
    return c;
  }

  #count(line: string): void {
    const [port, auth, remotePort, bytes, tag] = line.split(' ');
    if (tag === undefined) throw new Error(`unexpected line in ${this.file}: ${line}`);
    const c = this.get(tag === '-' ? '' : tag);
    c.requests += 1;
    c.byPort.set(Number(port), (c.byPort.get(Number(port)) ?? 0) + 1);
    if (auth === 'bearer') c.bearer += 1;
    else if (auth !== 'none') c.otherAuthorization += 1;
    c.remotePorts.add(Number(remotePort));
    c.bodyBytes += Number(bytes);
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}
