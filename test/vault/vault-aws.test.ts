/**
 * VaultLeaseSource against OpenBao/Vault's AWS secrets engine, itself
 * pointed at moto (IAM and STS, with request authentication on): dynamic
 * keys with a lease, the renewal seen in Vault's lease lookup, a fresh
 * credential before the max TTL ends, and revocation at close (Vault no
 * longer knows the lease, moto no longer has the IAM user).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultLeaseSource } from '../../controller/credentials/vault/vault-lease-source.js';
import { VaultError } from '../../controller/credentials/vault/vault-error.js';
import { startMoto, type AwsKeys, type MotoServer } from '../support/moto.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, eventually, secretDir, skipReason } from './fixture.js';

describe.skipIf(!baoBinary)(`Vault AWS dynamic credentials (moto)${skipReason}`, () => {
  let bao: OpenBaoServer;
  let moto: MotoServer;
  let admin: AwsKeys;
  let files: Awaited<ReturnType<typeof secretDir>>;
  let conn: VaultConnection;
  const captured = captureLog();

  beforeAll(async () => {
    [bao, moto] = await Promise.all([startOpenBao({ binary: baoBinary as string }), startMoto()]);
    files = await secretDir();
    admin = await moto.createIamUser('wirekey-admin');
    await bao.writePolicy('agent', AGENT_POLICY);
    await bao.enableAws({
      motoUrl: moto.url,
      accessKey: admin.accessKeyId,
      secretKey: admin.secretAccessKey,
      role: 'billing',
      lease: '6s',
      leaseMax: '1h',
    });
    await bao.enableAws({
      mount: 'aws-short',
      motoUrl: moto.url,
      accessKey: admin.accessKeyId,
      secretKey: admin.secretAccessKey,
      role: 'billing',
      lease: '4s',
      leaseMax: '9s',
    });
    await bao.writePolicy('agent-short', 'path "aws-short/creds/*" { capabilities = ["read"] }');
    const { roleId, secretId } = await bao.appRole('agent', ['agent', 'agent-short']);
    conn = new VaultConnection(
      {
        name: 'main',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id', roleId), secretIdFile: await files.write('secret-id', secretId) } },
      },
      { log: captured.log },
    );
    await conn.start();
  });

  afterAll(async () => {
    await conn?.close();
    await bao?.destroy();
    await moto?.stop();
    await files?.remove();
  });

  const lookup = (leaseId: string) => bao.api('PUT', 'sys/leases/lookup', { lease_id: leaseId });

  it('holds AWS keys with a lease, renews it (seen in Vault), and revokes it at close', async () => {
    const src = new VaultLeaseSource({ name: 'aws-billing', connection: conn, aws: 'aws/creds/billing', log: captured.log });
    // Nothing held before the first read; the lease's credential while it lasts.
    expect(src.peek()).toBeUndefined();
    const cred = await src.get();
    expect(src.peek()).toBe(cred);
    expect(cred.name).toBe('aws-billing');
    expect(cred.leaseId).toMatch(/^aws\/creds\/billing\//);
    const accessKey = cred.fields.get('access_key')?.reveal() as string;
    expect(accessKey).toMatch(/^AKIA/);
    expect(cred.fields.get('secret_key')?.reveal()).toBeTruthy();
    expect(cred.secret).toBeUndefined();
    // The keys are real at moto: an access key of the IAM user Vault made.
    const keys = { accessKeyId: accessKey, secretAccessKey: cred.fields.get('secret_key')?.reveal() as string };
    const users = await moto.iamUserNames(admin);
    const vaultUser = users.find((u) => u.startsWith('vault-'));
    expect(vaultUser).toBeTruthy();
    const theirKeys = (await moto.call(admin, 'iam', 'list_access_keys', { UserName: vaultUser })) as {
      AccessKeyMetadata: { AccessKeyId: string }[];
    };
    expect(theirKeys.AccessKeyMetadata.map((k) => k.AccessKeyId)).toContain(keys.accessKeyId);

    const first = await lookup(cred.leaseId as string);
    expect(first.data.renewable).toBe(true);
    expect(first.data.last_renewal).toBeNull();
    const firstExpire = Date.parse(first.data.expire_time as string);
    // Renewal at ~2/3 of 6 s.
    const renewed = await eventually(
      async () => {
        const l = await lookup(cred.leaseId as string);
        return l.data.last_renewal ? l : undefined;
      },
      8000,
      'a renewal in Vault',
    );
    expect(Date.parse(renewed.data.expire_time as string)).toBeGreaterThan(firstExpire);
    // Many get()s meanwhile: the same credential, no new lease.
    for (let i = 0; i < 100; i++) expect((await src.get()).leaseId).toBe(cred.leaseId);

    await src.close();
    expect(src.peek()).toBeUndefined();
    const gone = await bao.raw('PUT', 'sys/leases/lookup', { lease_id: cred.leaseId });
    expect(gone.status).toBe(400);
    // Vault deleted the IAM user it had made at moto.
    expect(await moto.iamUserNames(admin)).not.toContain(vaultUser);
    await expect(src.get()).rejects.toThrow(/credential "aws-billing": source is closed/);
  });

  it('fetches a fresh credential before the max TTL ends, and revokes the old lease', async () => {
    const src = new VaultLeaseSource({
      name: 'aws-short',
      connection: conn,
      aws: 'aws-short/creds/billing',
      retireGraceMs: 500,
      log: captured.log,
    });
    const first = await src.get();
    const firstExpires = src.status().expiresAt as number;
    // 4 s leases capped at 9 s: renewed at ~2.7 s, then capped; a new lease
    // is read before the first one's 9 s are over.
    const second = await eventually(
      async () => {
        const c = await src.get();
        return c.leaseId !== first.leaseId ? c : undefined;
      },
      12_000,
      'a replacement lease',
    );
    expect(Date.now()).toBeLessThan(Date.parse((await lookup(second.leaseId as string)).data.expire_time));
    expect(firstExpires).toBeGreaterThan(0);
    // Served without a gap: the old lease was still valid when replaced,
    // and it is revoked after the grace period.
    await eventually(
      async () => (await bao.raw('PUT', 'sys/leases/lookup', { lease_id: first.leaseId })).status === 400,
      5000,
      'the old lease revoked',
    );
    await src.close();
    expect((await bao.raw('PUT', 'sys/leases/lookup', { lease_id: second.leaseId })).status).toBe(400);
  });

  it('a lease revoked in Vault is replaced at the next renewal', async () => {
    const src = new VaultLeaseSource({ name: 'aws-revoked', connection: conn, aws: 'aws/creds/billing', log: captured.log });
    const first = await src.get();
    await bao.api('PUT', 'sys/leases/revoke', { lease_id: first.leaseId });
    const second = await eventually(
      async () => {
        const c = await src.get();
        return c.leaseId !== first.leaseId ? c : undefined;
      },
      8000,
      'a fresh lease after revocation',
    );
    expect(second.fields.get('access_key')?.reveal()).not.toBe(first.fields.get('access_key')?.reveal());
    await src.close();
  });

  it('replaces a lease before the token that read it ends (Vault revokes it with the token)', async () => {
    // Tokens live 2 s, 4 s at most: the connection logs in again at ~3 s and
    // the old token, with every lease it read, ends at 4 s.
    const { roleId, secretId } = await bao.appRole('agent-short-token', ['agent'], { tokenTtl: '2s', tokenMaxTtl: '4s' });
    const { log, lines } = captureLog();
    const short = new VaultConnection(
      {
        name: 'short-token',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id-s', roleId), secretIdFile: await files.write('secret-id-s', secretId) } },
      },
      { log },
    );
    await short.start();
    const src = new VaultLeaseSource({ name: 'aws-token-bound', connection: short, aws: 'aws/creds/billing', retireGraceMs: 200, log });
    const first = await src.get();
    const second = await eventually(
      async () => {
        const c = await src.get();
        return c.leaseId !== first.leaseId ? c : undefined;
      },
      6000,
      'a lease read with the new token',
    );
    // The first token ends (at its 4 s max TTL), and the first lease with it;
    // the one served then is alive.
    await eventually(
      async () => (await bao.raw('PUT', 'sys/leases/lookup', { lease_id: first.leaseId })).status === 400,
      10_000,
      'the first lease to end with its token',
    );
    const served = await src.get();
    expect((await bao.raw('PUT', 'sys/leases/lookup', { lease_id: served.leaseId })).status).toBe(200);
    expect(lines.some((l) => l.includes('ends with its token'))).toBe(true);
    await src.close();
    await short.close();
  });

  it('lookupLease and renewLease are usable by other sources', async () => {
    const res = await conn.read('aws/creds/billing');
    const info = await conn.lookupLease(res.leaseId);
    expect(info.ttl).toBeGreaterThan(0);
    expect(info.renewable).toBe(true);
    const r = await conn.renewLease(res.leaseId, 6);
    expect(r.leaseDuration).toBeGreaterThan(0);
    await conn.revokeLease(res.leaseId);
    const err = (await conn.lookupLease(res.leaseId).catch((e: unknown) => e)) as VaultError;
    expect(err).toBeInstanceOf(VaultError);
    expect(err.status).toBe(400);
  });
});
