/**
 * OpenBao/Vault stopped mid-run and started again (same port, same file
 * storage: the agent's token, its leases and the secrets survive, as in a
 * real outage). Cached credentials keep being served: a KV secret for the
 * whole outage, AWS keys until their lease ends; then get() fails with a
 * clear error naming the credential; after the restart both recover with
 * the same source objects, no restart of anything on the agent's side.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CredentialError } from '../../controller/errors.js';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultKvSource } from '../../controller/credentials/vault/vault-kv-source.js';
import { VaultLeaseSource } from '../../controller/credentials/vault/vault-lease-source.js';
import { startMoto, type MotoServer } from '../support/moto.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, eventually, secretDir, skipReason, sleep } from './fixture.js';

describe.skipIf(!baoBinary)(`Vault outage and recovery${skipReason}`, () => {
  let bao: OpenBaoServer;
  let moto: MotoServer;
  let files: Awaited<ReturnType<typeof secretDir>>;
  let conn: VaultConnection;
  const captured = captureLog();
  const backoff = { initialMs: 200, maxMs: 1000 };

  beforeAll(async () => {
    [bao, moto] = await Promise.all([startOpenBao({ binary: baoBinary as string, storage: 'file' }), startMoto()]);
    files = await secretDir();
    const admin = await moto.createIamUser('wirekey-admin');
    await bao.writePolicy('agent', AGENT_POLICY);
    await bao.enableAws({
      motoUrl: moto.url,
      accessKey: admin.accessKeyId,
      secretKey: admin.secretAccessKey,
      role: 'billing',
      lease: '8s',
      leaseMax: '1h',
    });
    await bao.writeKv('outage', { token: 'kv-outage-value' });
    const { roleId, secretId } = await bao.appRole('agent', ['agent']);
    conn = new VaultConnection(
      {
        name: 'main',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id', roleId), secretIdFile: await files.write('secret-id', secretId) } },
      },
      { log: captured.log, backoff, requestTimeoutMs: 2000 },
    );
    await conn.start();
  });

  afterAll(async () => {
    await conn?.close();
    await bao?.destroy();
    await moto?.stop();
    await files?.remove();
  });

  it('serves from cache through the outage, fails clearly after expiry, recovers after restart', async () => {
    const kv = new VaultKvSource({
      name: 'kv-outage',
      connection: conn,
      kv: 'secret/outage',
      field: 'token',
      refreshMs: 300,
      firstFetchJitterMs: 0,
      backoff,
      log: captured.log,
    });
    const aws = new VaultLeaseSource({ name: 'aws-outage', connection: conn, aws: 'aws/creds/billing', backoff, log: captured.log });
    const kvBefore = await kv.get();
    const awsBefore = await aws.get();
    const secretKey = awsBefore.fields.get('secret_key')?.reveal() as string;
    const expiresAt = aws.status().expiresAt as number;

    await bao.stop();
    expect((await fetch(`${bao.addr}/v1/sys/health`).catch((e: unknown) => e)) instanceof Error).toBe(true);

    // Until the lease ends: every get() succeeds, from memory, before and
    // after the renewal at ~2/3 fails.
    const served = { healthy: 0, degraded: 0 };
    while (Date.now() < expiresAt - 300) {
      const degraded = aws.status().degraded;
      expect((await kv.get()).secret?.reveal()).toBe('kv-outage-value');
      expect((await aws.get()).leaseId).toBe(awsBefore.leaseId);
      served[degraded ? 'degraded' : 'healthy']++;
      await sleep(20); // a steady request rate, not a wait for anything
    }
    expect(served.healthy).toBeGreaterThan(0);
    expect(served.degraded).toBeGreaterThan(0);
    expect(kv.status().degraded).toBe(true);
    expect(aws.status().degraded).toBe(true); // the renewal at ~2/3 failed

    // After it: a clear error naming the credential, never its value.
    const err = await eventually(async () => aws.get().then(() => undefined, (e: unknown) => e as CredentialError), 15_000, 'get() to fail once the lease has ended');
    expect(err).toBeInstanceOf(CredentialError);
    expect(err.credential).toBe('aws-outage');
    expect(err.message).toMatch(
      /^credential "aws-outage": lease aws\/creds\/billing\/\S+ ended and no fresh credential could be read: .*Vault unreachable/,
    );
    expect(err.message).not.toContain(secretKey);
    // Failing get()s do not each try Vault: the error is reused within the backoff.
    const again = (await aws.get().catch((e: unknown) => e)) as CredentialError;
    expect(again).toBeInstanceOf(CredentialError);
    // The static secret has no expiry: still served.
    expect((await kv.get()).secret?.reveal()).toBe('kv-outage-value');

    // One warning per source per outage, not one per get().
    const warnings = (name: string) => captured.lines.filter((l) => / warn /.test(l) && l.includes(`credential ${name}:`));
    expect(warnings('kv-outage')).toHaveLength(1);
    expect(warnings('aws-outage').length).toBeLessThanOrEqual(2);

    await bao.start();
    const awsAfter = await eventually(
      async () => {
        try {
          return await aws.get();
        } catch {
          return undefined;
        }
      },
      10_000,
      'AWS credentials after the restart',
    );
    expect(awsAfter.leaseId).not.toBe(awsBefore.leaseId);
    expect(awsAfter.fields.get('access_key')?.reveal()).toMatch(/^AKIA/);
    await eventually(async () => {
      await kv.get();
      return !kv.status().degraded;
    }, 5000, 'the KV source to read Vault again');
    expect((await kv.get()).version).toBe(kvBefore.version);
    expect(captured.lines.some((l) => l.includes('credential kv-outage: Vault readable again'))).toBe(true);

    await aws.close();
    await kv.close();
    expect((await bao.raw('PUT', 'sys/leases/lookup', { lease_id: awsAfter.leaseId })).status).toBe(400);
  });
});
