/**
 * Vault metrics against a real OpenBao/Vault server: every HTTP call a
 * connection makes is timed by operation, failures are counted by status,
 * a KV source reports its version and the age of that version (Vault's
 * created_time), and the token's TTL is read at scrape time. No token,
 * role or secret id, secret value or path appears in the exposition.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultKvSource } from '../../controller/credentials/vault/vault-kv-source.js';
import { AgentMetrics } from '../../controller/metrics/agent-metrics.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, secretDir, skipReason } from './fixture.js';

function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe.skipIf(!baoBinary)(`Vault metrics${skipReason}`, () => {
  let bao: OpenBaoServer;
  let files: Awaited<ReturnType<typeof secretDir>>;
  let conn: VaultConnection;
  let roleId = '';
  let secretId = '';
  const sources: VaultKvSource[] = [];
  const captured = captureLog();
  const metrics = new AgentMetrics({
    ready: () => true,
    proxy: () => undefined,
    datapath: () => undefined,
    kernelHttp: () => undefined,
    credentials: () => sources,
    vaultConnections: () => [conn],
  }, { processMetrics: false });

  beforeAll(async () => {
    bao = await startOpenBao({ binary: baoBinary as string });
    files = await secretDir();
    await bao.writePolicy('agent', AGENT_POLICY);
    ({ roleId, secretId } = await bao.appRole('agent', ['agent']));
    conn = new VaultConnection(
      {
        name: 'main',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id', roleId), secretIdFile: await files.write('secret-id', secretId) } },
      },
      { log: captured.log, onRequest: (r) => metrics.vaultRequest(r) },
    );
    await conn.start();
  });

  afterAll(async () => {
    for (const s of sources) await s.close();
    await conn?.close();
    await bao?.destroy();
    await files?.remove();
  });

  it('times logins and reads per connection, counts a refused read by status, and reads version, age and token TTL', async () => {
    await bao.writeKv('metrics', { api_key: 'sk-metrics-first' });
    await bao.writeKv('metrics', { api_key: 'sk-metrics-second' });
    const kv = new VaultKvSource({ name: 'metrics-key', connection: conn, kv: 'secret/metrics', field: 'api_key', firstFetchJitterMs: 0, log: captured.log });
    sources.push(kv);
    expect((await kv.get()).secret?.reveal()).toBe('sk-metrics-second');
    const missing = new VaultKvSource({ name: 'missing-key', connection: conn, kv: 'secret/not-there', field: 'api_key', firstFetchJitterMs: 0, log: captured.log });
    sources.push(missing);
    await expect(missing.get()).rejects.toThrow(/missing-key/);

    const { body } = await metrics.render();
    expect(sample(body, 'wirekey_vault_request_duration_seconds_count{connection="main",operation="login"}')).toBe(1);
    expect(sample(body, 'wirekey_vault_request_duration_seconds_count{connection="main",operation="read"}')).toBe(2);
    expect(sample(body, 'wirekey_vault_request_errors_total{connection="main",operation="read",status="404"}')).toBe(1);
    expect(body).not.toMatch(/wirekey_vault_request_errors_total\{[^}]*operation="login"/);
    expect(sample(body, 'wirekey_credential_version{credential="metrics-key"}')).toBe(2);
    expect(sample(body, 'wirekey_credential_available{credential="metrics-key"}')).toBe(1);
    expect(sample(body, 'wirekey_credential_age_seconds{credential="metrics-key"}')).toBeLessThan(60);
    expect(sample(body, 'wirekey_credential_available{credential="missing-key"}')).toBe(0);
    const ttl = sample(body, 'wirekey_vault_token_ttl_seconds{connection="main"}') as number;
    expect(ttl).toBeGreaterThan(3500);
    expect(ttl).toBeLessThanOrEqual(3600);
    expect(sample(body, 'wirekey_vault_connection_degraded{connection="main"}')).toBe(0);
  });

  it('an unreachable Vault is counted as such', async () => {
    const down = new VaultConnection(
      { name: 'down', address: 'http://127.0.0.1:9', auth: { approle: { roleIdFile: await files.write('role-id-2', roleId), secretIdFile: await files.write('secret-id-2', secretId) } } },
      { log: captured.log, requestTimeoutMs: 2000, onRequest: (r) => metrics.vaultRequest(r) },
    );
    await expect(down.start()).rejects.toThrow(/down/);
    await down.close();
    const { body } = await metrics.render();
    expect(sample(body, 'wirekey_vault_request_errors_total{connection="down",operation="login",status="unreachable"}')).toBe(1);
  });

  it('nothing secret in the exposition', async () => {
    const { body } = await metrics.render();
    for (const text of ['sk-metrics', roleId, secretId, 'secret/metrics', 'secret/not-there', files.dir]) expect(body).not.toContain(text);
    expect(body).not.toMatch(/hvs\.|s\.[A-Za-z0-9]{20}/);
  });
});
