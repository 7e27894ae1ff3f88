/**
 * The proxy's own TLS connections to upstream services. Certificates are
 * verified against the service's host name, never against the address the
 * workload dialled.
 *
 * Connections are kept alive and reused only within one partition: the
 * same workload, binding, credential version and destination. A connection
 * is never shared across those boundaries, so no workload's request can
 * ever be framed into, or read back from, another's exchange.
 */
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { STREAM_HIGH_WATER_MARK } from './upstream-pool.js';

export interface UpstreamOptions {
  /** PEM bundle trusted in addition to Node's store (and NODE_EXTRA_CA_CERTS). */
  caFile?: string;
  /** How long an idle kept-alive upstream connection is kept (ms). */
  idleMs?: number;
}

/** Options of https.request plus the partition the connection belongs to. */
export interface PartitionedRequestOptions extends https.RequestOptions {
  partition: string;
}

/**
 * An https.Agent whose pools are keyed by partition as well as by
 * destination and TLS options.
 */
export class PartitionedAgent extends https.Agent {
  override getName(options?: https.RequestOptions): string {
    const partition = (options as Partial<PartitionedRequestOptions> | undefined)?.partition;
    return `${super.getName(options)}|${partition ?? ''}`;
  }
}

/**
 * Keeps `req`'s connection out of its agent's pool when `res` ends before
 * `req` has all been written: an upstream that answered early (refusing a
 * large upload, or with a final status to an Expect) may never read the
 * rest, and would take it for the start of the next request on the
 * connection. Node would pool the connection once the rest is written; now
 * it closes it at once, and the rest of `source` (the workload's body) is
 * read and dropped. Call from the request's 'response' handler.
 */
export function neverReuseUnfinished(req: http.ClientRequest, res: http.IncomingMessage, source?: NodeJS.ReadableStream): void {
  // Before Node's own 'end' listener, which decides whether to pool.
  res.prependOnceListener('end', () => {
    if (req.writableFinished) return;
    req.shouldKeepAlive = false;
    if (source) {
      source.unpipe(req);
      source.resume();
    }
  });
}

/**
 * The same for plaintext HTTP: the proxy's connections for a restricted
 * workload's requests to names its egress rules allow. No credential
 * travels on them, but the boundary is kept all the same (one workload,
 * one name, one address per pool).
 */
export class PartitionedHttpAgent extends http.Agent {
  override getName(options?: http.ClientRequestArgs): string {
    const partition = (options as Partial<PartitionedRequestOptions> | undefined)?.partition;
    return `${super.getName(options)}|${partition ?? ''}`;
  }
}

/** The agent for plaintext egress requests (PartitionedHttpAgent), kept alive like the TLS one. */
export function createPlainUpstreamAgent(opts: Pick<UpstreamOptions, 'idleMs'> = {}): PartitionedHttpAgent {
  return new PartitionedHttpAgent({ keepAlive: true, keepAliveMsecs: 1000, scheduling: 'lifo', timeout: opts.idleMs ?? 60_000 });
}

/**
 * The agent for upstream requests. Passing `ca` replaces Node's default
 * store, so when an extra bundle is configured the default roots and
 * NODE_EXTRA_CA_CERTS are added back explicitly. The store goes in one
 * SecureContext built here: a `ca` option would be re-joined into the
 * agent's pool key and re-parsed into a new context on every request.
 */
export function createUpstreamAgent(opts: UpstreamOptions = {}): PartitionedAgent {
  // `timeout` closes kept-alive connections nobody reused for that long; highWaterMark reaches tls.connect (STREAM_HIGH_WATER_MARK).
  // rejectUnauthorized said here (the agent's options win over a request's), never left to NODE_TLS_REJECT_UNAUTHORIZED.
  const base = { keepAlive: true, keepAliveMsecs: 1000, scheduling: 'lifo' as const, timeout: opts.idleMs ?? 60_000, highWaterMark: STREAM_HIGH_WATER_MARK, rejectUnauthorized: true };
  const secureContext = upstreamSecureContext(opts);
  return new PartitionedAgent(secureContext ? { ...base, secureContext } : base);
}

/**
 * The trust store for upstream certificates when `caFile` adds to Node's
 * (undefined: Node's own, with NODE_EXTRA_CA_CERTS). Shared by the
 * HTTP/1.1 agent and the HTTP/2 sessions (upstream-h2.ts).
 */
export function upstreamSecureContext(opts: UpstreamOptions = {}): tls.SecureContext | undefined {
  if (!opts.caFile) return undefined;
  const ca = [...tls.rootCertificates];
  const extra = process.env.NODE_EXTRA_CA_CERTS;
  if (extra) ca.push(readFileSync(extra, 'utf8'));
  ca.push(readFileSync(opts.caFile, 'utf8'));
  return tls.createSecureContext({ ca });
}
