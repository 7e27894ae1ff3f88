/**
 * The node-vault client as the agent uses it, and the translation of its
 * failures into VaultErrors. Everything that knows node-vault's quirks is
 * here; VaultConnection only sees a client and VaultErrors.
 */
import { readFile } from 'node:fs/promises';
import nodeVault from 'node-vault';
import { Agent, request } from 'undici';
import { VaultError } from './vault-error.js';

export type NodeVaultClient = nodeVault.client;

export interface NodeVaultClientOptions {
  /** The VaultConnection's name, for errors. */
  connection: string;
  address: string;
  namespace?: string;
  caFile?: string;
  serverName?: string;
  timeoutMs: number;
}

/**
 * A node-vault client with four of its defaults overridden, because they
 * would be wrong for an agent: its `debug` output (which prints request
 * bodies: secret ids, JWTs, written secrets) is replaced by a no-op;
 * VAULT_TOKEN, VAULT_NAMESPACE, VAULT_PREFIX and VAULT_SKIP_VERIFY from the
 * environment are ignored (the policy says where and how to connect);
 * requests time out; and HTTP goes through {@link vaultTransport}, which
 * follows no redirect. Tokens are passed per request (X-Vault-Token), not
 * kept in the client.
 */
export async function createNodeVaultClient(o: NodeVaultClientOptions): Promise<NodeVaultClient> {
  let ca: Buffer | undefined;
  if (o.caFile) {
    try {
      ca = await readFile(o.caFile);
    } catch (err) {
      throw new VaultError({
        connection: o.connection,
        method: 'GET',
        path: 'sys/health',
        reason: `cannot read tls.caFile ${o.caFile} (${errnoOf(err)})`,
      });
    }
  }
  const transport = vaultTransport({ timeoutMs: o.timeoutMs, ...(ca ? { ca } : {}), ...(o.serverName ? { serverName: o.serverName } : {}) });
  const client = nodeVault({
    endpoint: o.address,
    apiVersion: 'v1',
    token: '',
    namespace: o.namespace ?? '',
    pathPrefix: '',
    // node-vault's debug prints request bodies (secret ids, JWTs): never.
    debug: () => undefined,
    // node-vault's own HTTP client (axios) follows redirects with every
    // header, X-Vault-Token included, and takes no option to stop it.
    // Not in node-vault's typings: the hook for another HTTP client.
    ...({ 'request-promise': { defaults: () => transport } } as object),
  });
  // node-vault reads `config.x || process.env.VAULT_X`: an empty value falls
  // through to the environment, so the environment's say is removed here.
  client.token = '';
  (client as unknown as { namespace: string | undefined }).namespace = o.namespace ?? '';
  (client as unknown as { pathPrefix: string }).pathPrefix = '';
  return client;
}

/** What node-vault hands its HTTP client: a URL, a method, headers, a JSON body, per-call options. */
interface TransportRequest {
  uri: string;
  method: string;
  headers?: Record<string, string>;
  json?: unknown;
  timeout?: number;
}

/** What node-vault expects back (the shape of the `request` library's full response). */
interface TransportResponse {
  statusCode: number;
  body: unknown;
  request: { path: string };
}

/**
 * node-vault's HTTP client, on undici: TLS verified against `ca` (or the
 * system's) and `serverName`, every phase bounded by `timeoutMs`, and a
 * redirect answered as a failure naming its status, never followed: the
 * token would go wherever the Location points. Transport failures reject
 * with undici's error (its `code`; vaultErrorFrom keeps only that).
 */
export function vaultTransport(o: { timeoutMs: number; ca?: Buffer; serverName?: string }): (r: TransportRequest) => Promise<TransportResponse> {
  const dispatcher = new Agent({
    connect: { timeout: o.timeoutMs, rejectUnauthorized: true, ...(o.ca ? { ca: o.ca } : {}), ...(o.serverName ? { servername: o.serverName } : {}) },
  });
  return async (r) => {
    const timeout = r.timeout ?? o.timeoutMs;
    const headers: Record<string, string> = { ...r.headers, accept: 'application/json' };
    const body = r.json !== undefined && typeof r.json === 'object' ? JSON.stringify(r.json) : undefined;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await request(r.uri, {
      method: r.method as 'GET',
      headers,
      ...(body !== undefined ? { body } : {}),
      dispatcher,
      headersTimeout: timeout,
      bodyTimeout: timeout,
    });
    const path = new URL(r.uri).pathname;
    if (res.statusCode >= 300 && res.statusCode < 400) {
      await res.body.dump();
      return {
        statusCode: res.statusCode,
        body: { errors: [`redirected (HTTP ${res.statusCode}); redirects are not followed, as the token would go along: point address at Vault itself`] },
        request: { path },
      };
    }
    const text = await res.body.text();
    let parsed: unknown = undefined;
    if (text !== '') {
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not Vault's JSON (a proxy's error page): the status says enough.
      }
    }
    return { statusCode: res.statusCode, body: parsed, request: { path } };
  };
}

/**
 * node-vault rejects with ApiResponseError (`response.statusCode`,
 * `response.body.errors`) for HTTP errors and with axios errors (whose
 * `config` holds the token header and the request body) for transport
 * errors. Only the status, Vault's error text and the errno code are kept,
 * and the original error is not attached as `cause`.
 */
export function vaultErrorFrom(
  where: { connection: string; address: string; method: string; path: string; context?: string },
  err: unknown,
): VaultError {
  if (err instanceof VaultError) return err;
  const e = err as { response?: { statusCode?: unknown; body?: unknown }; code?: unknown } | null;
  const prefix = where.context ? `${where.context}: ` : '';
  const base = { connection: where.connection, method: where.method, path: where.path };
  const status = e?.response?.statusCode;
  if (typeof status === 'number') {
    const errors = (e?.response?.body as { errors?: unknown } | undefined)?.errors;
    const text = Array.isArray(errors)
      ? errors
          .filter((x): x is string => typeof x === 'string')
          .join('; ')
          .replace(/\s+/g, ' ')
          .replace(/^\d+ errors? occurred: \* ?/, '')
          .trim()
          .slice(0, 300)
      : '';
    return new VaultError({ ...base, status, reason: prefix + (text || httpText(status)) });
  }
  const code = typeof e?.code === 'string' ? e.code : undefined;
  return new VaultError({ ...base, reason: `${prefix}cannot reach ${where.address} (${code ?? 'unknown error'})` });
}

function httpText(status: number): string {
  if (status === 404) return 'not found';
  if (status === 403) return 'permission denied';
  if (status === 503) return 'sealed or unavailable';
  return `status ${status}`;
}

export function errnoOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'unknown error';
}
