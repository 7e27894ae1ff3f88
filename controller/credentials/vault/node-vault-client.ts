/**
 * The node-vault client as the agent uses it, and the translation of its
 * failures into VaultErrors. Everything that knows node-vault's quirks is
 * here; VaultConnection only sees a client and VaultErrors.
 */
import { readFile } from 'node:fs/promises';
import nodeVault from 'node-vault';
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
 * A node-vault client with three of its defaults overridden, because they
 * would be wrong for an agent: its `debug` output (which prints request
 * bodies: secret ids, JWTs, written secrets) is replaced by a no-op;
 * VAULT_TOKEN, VAULT_NAMESPACE, VAULT_PREFIX and VAULT_SKIP_VERIFY from the
 * environment are ignored (the policy says where and how to connect); and
 * requests time out. Tokens are passed per request (X-Vault-Token), not
 * kept in the client.
 */
export async function createNodeVaultClient(o: NodeVaultClientOptions): Promise<NodeVaultClient> {
  const requestOptions: Record<string, unknown> = {};
  if (o.caFile) {
    try {
      requestOptions.ca = await readFile(o.caFile);
    } catch (err) {
      throw new VaultError({
        connection: o.connection,
        method: 'GET',
        path: 'sys/health',
        reason: `cannot read tls.caFile ${o.caFile} (${errnoOf(err)})`,
      });
    }
  }
  if (o.serverName) requestOptions.agentOptions = { servername: o.serverName };
  const client = nodeVault({
    endpoint: o.address,
    apiVersion: 'v1',
    token: '',
    namespace: o.namespace ?? '',
    pathPrefix: '',
    // node-vault's debug prints request bodies (secret ids, JWTs): never.
    debug: () => undefined,
    requestOptions,
    // Not in node-vault's typings: strictSSL true ignores VAULT_SKIP_VERIFY.
    ...({ rpDefaults: { strictSSL: true, timeout: o.timeoutMs } } as object),
  });
  // node-vault reads `config.x || process.env.VAULT_X`: an empty value falls
  // through to the environment, so the environment's say is removed here.
  client.token = '';
  (client as unknown as { namespace: string | undefined }).namespace = o.namespace ?? '';
  (client as unknown as { pathPrefix: string }).pathPrefix = '';
  return client;
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
