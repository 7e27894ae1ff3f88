/**
 * The proxy's own TLS connections to upstream services, pooled with
 * keep-alive. Certificates are verified against the service's host name,
 * never against the address the workload dialled.
 */
import https from 'node:https';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';

export interface UpstreamOptions {
  /** PEM bundle trusted in addition to Node's store (and NODE_EXTRA_CA_CERTS). */
  caFile?: string;
}

/**
 * The https.Agent for upstream requests. Passing `ca` replaces Node's
 * default store, so when an extra bundle is configured the default roots and
 * NODE_EXTRA_CA_CERTS are added back explicitly. The store goes in one
 * SecureContext built here: a `ca` option would be re-joined into the
 * agent's pool key and re-parsed into a new context on every request.
 */
export function createUpstreamAgent(opts: UpstreamOptions = {}): https.Agent {
  const base = { keepAlive: true, keepAliveMsecs: 1000, scheduling: 'lifo' as const };
  if (!opts.caFile) return new https.Agent(base);
  const ca = [...tls.rootCertificates];
  const extra = process.env.NODE_EXTRA_CA_CERTS;
  if (extra) ca.push(readFileSync(extra, 'utf8'));
  ca.push(readFileSync(opts.caFile, 'utf8'));
  return new https.Agent({ ...base, secureContext: tls.createSecureContext({ ca }) });
}
