/**
 * A real OpenBao (or Vault 1.14, see scripts/openbao) server for tests, on
 * 127.0.0.1 and a random free port.
 *
 * Two storage modes:
 * - `dev`: `server -dev` with a known root token; storage in memory, so a
 *   restart loses everything.
 * - `file` (the default): a real server with file storage in a temp
 *   directory, initialised with one unseal key and unsealed by the helper,
 *   with a KV v2 engine at `secret/` like dev mode and the same known root
 *   token. stop() and start() keep the port, the storage and the unseal key,
 *   so an outage test sees what a production outage looks like: the agent's
 *   token, its leases, the audit device and the secrets are all still there
 *   when the server comes back. (Re-seeding a dev server would instead hand
 *   the agent a server that never heard of its token or leases.)
 *
 * Every process is killed and every temp directory removed by stop({final})
 * and, as a last resort, when the test process exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './moto.js';
import { repoRoot } from './paths.js';
import { run } from './shell.js';

export const ROOT_TOKEN = 'wirekey-test-root-token';

export interface OpenBaoBinary {
  path?: string;
  /** Why there is none. */
  reason?: string;
}

/** Builds (or finds cached) the server binary with scripts/openbao. */
export async function openBaoBinary(): Promise<OpenBaoBinary> {
  const r = await run(path.join(repoRoot, 'scripts/openbao'), [], { timeoutMs: 30 * 60_000 });
  const p = r.stdout.trim().split('\n').pop();
  if (r.code === 0 && p) return { path: p };
  const last = r.stderr.trim().split('\n').slice(-3).join(' / ');
  return { reason: `scripts/openbao could not build OpenBao or Vault (${last || `exit ${r.code}`})` };
}

export interface AuditEntry {
  type: 'request' | 'response';
  request?: { path?: string; operation?: string; mount_type?: string };
  auth?: { accessor?: string };
}

export interface OpenBaoServer {
  binary: string;
  /** http://127.0.0.1:PORT */
  addr: string;
  port: number;
  rootToken: string;
  /** The temp directory holding storage, config and audit log. */
  dir: string;
  /** Environment for the CLI (BAO_* and VAULT_* alike). */
  env(): NodeJS.ProcessEnv;
  /** Runs the CLI against this server; throws on failure. */
  cli(...args: string[]): Promise<string>;
  /** An API call with the root token (or `token`); returns the JSON body, throws on HTTP errors. */
  api(method: string, apiPath: string, body?: unknown, token?: string): Promise<any>;
  /** An API call returning the status and body, never throwing on HTTP errors. */
  raw(method: string, apiPath: string, body?: unknown, token?: string): Promise<{ status: number; body: any }>;
  /** `audit enable file file_path=...`; returns the log path. */
  enableFileAudit(): Promise<string>;
  auditEntries(): Promise<AuditEntry[]>;
  /** Writes a KV v2 secret at `secret/<name>` (or `mount/<name>`); returns the new version. */
  writeKv(name: string, data: Record<string, string>, mount?: string): Promise<number>;
  writePolicy(name: string, hcl: string): Promise<void>;
  /** Enables AppRole (once) and creates `role` with `policies`; returns its role id and a fresh secret id. */
  appRole(role: string, policies: string[], options?: { tokenTtl?: string; tokenMaxTtl?: string }): Promise<{ roleId: string; secretId: string }>;
  /**
   * Mounts the AWS secrets engine at `mount`, pointed at moto (IAM and STS
   * endpoints) with the given root keys, and creates an `iam_user` role.
   */
  enableAws(options: {
    mount?: string;
    motoUrl: string;
    accessKey: string;
    secretKey: string;
    role: string;
    lease: string;
    leaseMax: string;
    /** IAM actions the issued users may take (default s3:ListAllMyBuckets). */
    actions?: string[];
  }): Promise<void>;
  /** SIGTERM and wait: the server is gone, as in an outage. */
  stop(): Promise<void>;
  /** Starts it again on the same port with the same storage (and unseals it). */
  start(): Promise<void>;
  /** Kills the server and removes the temp directory. Idempotent. */
  destroy(): Promise<void>;
  /** The server's own log, for diagnosing a failed test. */
  log(): string;
}

const live = new Map<ChildProcess, string>();
process.once('exit', () => {
  for (const [c, dir] of live) {
    c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

export async function startOpenBao(options: { binary: string; storage?: 'file' | 'dev'; maxLeaseTtl?: string }): Promise<OpenBaoServer> {
  const storage = options.storage ?? 'file';
  const binary = options.binary;
  const port = await freePort();
  const addr = `http://127.0.0.1:${port}`;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wirekey-openbao-'));
  const configFile = path.join(dir, 'server.hcl');
  const auditFile = path.join(dir, 'audit.log');
  let unsealKey: string | undefined;
  let child: ChildProcess | undefined;
  let output = '';
  let approleEnabled = false;

  const env = (): NodeJS.ProcessEnv => ({
    ...process.env,
    BAO_ADDR: addr,
    VAULT_ADDR: addr,
    BAO_TOKEN: ROOT_TOKEN,
    VAULT_TOKEN: ROOT_TOKEN,
    // The CLI's token helper writes ~/.vault-token: keep it in `dir`.
    HOME: dir,
  });

  if (storage === 'file') {
    await writeFile(
      configFile,
      [
        `storage "file" { path = "${path.join(dir, 'data')}" }`,
        `listener "tcp" {`,
        `  address = "127.0.0.1:${port}"`,
        `  tls_disable = true`,
        `}`,
        `api_addr = "${addr}"`,
        `disable_mlock = true`,
        `ui = false`,
        ...(options.maxLeaseTtl ? [`max_lease_ttl = "${options.maxLeaseTtl}"`, `default_lease_ttl = "768h"`] : []),
        '',
      ].join('\n'),
    );
  }

  const raw = async (method: string, apiPath: string, body?: unknown, token: string = ROOT_TOKEN) => {
    const res = await fetch(`${addr}/v1/${apiPath}`, {
      method,
      headers: { 'X-Vault-Token': token, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    let parsed: any = undefined;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = text;
    }
    return { status: res.status, body: parsed };
  };
  const api = async (method: string, apiPath: string, body?: unknown, token?: string) => {
    const r = await raw(method, apiPath, body, token);
    if (r.status >= 400) throw new Error(`${method} ${apiPath}: HTTP ${r.status} ${JSON.stringify(r.body?.errors ?? r.body)}`);
    return r.body;
  };

  const waitFor = async (ok: (status: number) => boolean, what: string) => {
    for (let i = 0; ; i++) {
      if (!child || child.exitCode !== null) throw new Error(`server exited before ${what}: ${output.slice(-2000)}`);
      try {
        const res = await fetch(`${addr}/v1/sys/health`);
        if (ok(res.status)) return;
      } catch {
        // not listening yet
      }
      if (i > 300) throw new Error(`server not ${what} after 30s: ${output.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const spawnServer = () => {
    const args =
      storage === 'dev'
        ? ['server', '-dev', `-dev-root-token-id=${ROOT_TOKEN}`, `-dev-listen-address=127.0.0.1:${port}`, '-dev-no-store-token']
        : ['server', `-config=${configFile}`];
    const c = spawn(binary, args, { cwd: dir, env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    const collect = (d: Buffer) => {
      output = (output + d.toString()).slice(-20_000);
    };
    c.stdout?.on('data', collect);
    c.stderr?.on('data', collect);
    live.set(c, dir);
    child = c;
  };

  const start = async () => {
    spawnServer();
    if (storage === 'dev') {
      await waitFor((s) => s === 200, 'ready');
      return;
    }
    // 501: not initialised, 503: sealed, 200: active.
    await waitFor((s) => s === 501 || s === 503 || s === 200, 'listening');
    if (!unsealKey) {
      const init = await api('PUT', 'sys/init', { secret_shares: 1, secret_threshold: 1 }, '');
      unsealKey = init.keys_base64[0] as string;
      await api('PUT', 'sys/unseal', { key: unsealKey }, '');
      await waitFor((s) => s === 200, 'active');
      // The generated root token creates the known one, then goes away.
      const generated = init.root_token as string;
      await api('POST', 'auth/token/create-orphan', { id: ROOT_TOKEN, policies: ['root'], display_name: 'test-root' }, generated);
      await api('POST', 'auth/token/revoke-self', undefined, generated);
      await api('POST', 'sys/mounts/secret', { type: 'kv', options: { version: '2' } });
    } else {
      await api('PUT', 'sys/unseal', { key: unsealKey }, '');
      await waitFor((s) => s === 200, 'active');
    }
  };

  const stop = async () => {
    const c = child;
    if (!c) return;
    child = undefined;
    if (c.exitCode === null && c.signalCode === null) {
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      const killer = setTimeout(() => c.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    }
    live.delete(c);
  };

  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    await stop();
    rmSync(dir, { recursive: true, force: true });
  };

  const cli = async (...args: string[]) => {
    const r = await run(binary, args, { env: env(), cwd: dir });
    if (r.code !== 0) throw new Error(`${path.basename(binary)} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
    return r.stdout;
  };

  try {
    await start();
  } catch (err) {
    await destroy();
    throw err;
  }

  return {
    binary,
    addr,
    port,
    rootToken: ROOT_TOKEN,
    dir,
    env,
    cli,
    api,
    raw,
    async enableFileAudit() {
      await cli('audit', 'enable', 'file', `file_path=${auditFile}`);
      return auditFile;
    },
    async auditEntries() {
      let text = '';
      try {
        text = await readFile(auditFile, 'utf8');
      } catch {
        return [];
      }
      return text
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as AuditEntry);
    },
    async writeKv(name, data, mount = 'secret') {
      const res = await api('POST', `${mount}/data/${name}`, { data });
      return res.data.version as number;
    },
    async writePolicy(name, hcl) {
      await api('PUT', `sys/policies/acl/${name}`, { policy: hcl });
    },
    async appRole(role, policies, opts = {}) {
      if (!approleEnabled) {
        const auths = await api('GET', 'sys/auth');
        if (!auths.data?.['approle/']) await api('POST', 'sys/auth/approle', { type: 'approle' });
        approleEnabled = true;
      }
      await api('POST', `auth/approle/role/${role}`, {
        token_policies: policies,
        token_ttl: opts.tokenTtl ?? '1h',
        token_max_ttl: opts.tokenMaxTtl ?? '4h',
      });
      const roleId = (await api('GET', `auth/approle/role/${role}/role-id`)).data.role_id as string;
      const secretId = (await api('POST', `auth/approle/role/${role}/secret-id`)).data.secret_id as string;
      return { roleId, secretId };
    },
    async enableAws(o) {
      const mount = o.mount ?? 'aws';
      await api('POST', `sys/mounts/${mount}`, { type: 'aws' });
      await api('POST', `${mount}/config/root`, {
        access_key: o.accessKey,
        secret_key: o.secretKey,
        region: 'us-east-1',
        iam_endpoint: o.motoUrl,
        sts_endpoint: o.motoUrl,
      });
      await api('POST', `${mount}/config/lease`, { lease: o.lease, lease_max: o.leaseMax });
      await api('POST', `${mount}/roles/${o.role}`, {
        credential_type: 'iam_user',
        policy_document: JSON.stringify({
          Version: '2012-10-17',
          Statement: [{ Effect: 'Allow', Action: o.actions ?? ['s3:ListAllMyBuckets'], Resource: '*' }],
        }),
      });
    },
    stop,
    start,
    destroy,
    log: () => output,
  };
}
