/**
 * A lease revoked in Vault by an operator is noticed by the periodic lease
 * lookup, not only at the next renewal: the value is withheld and a fresh
 * lease read. The lease lasts an hour, so no renewal is due while the
 * test's injected clock moves one lookup interval.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VaultConnection, type VaultOperation } from '../../controller/credentials/vault/vault-connection.js';
import { VaultLeaseSource } from '../../controller/credentials/vault/vault-lease-source.js';
import { FakeTimers } from '../support/fake-timers.js';
import { startMoto, type MotoServer } from '../support/moto.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, eventually, secretDir, skipReason } from './fixture.js';

const CHECK_MS = 60_000;

describe.skipIf(!baoBinary)(`Vault lease revoked under the agent${skipReason}`, () => {
  let bao: OpenBaoServer;
  let moto: MotoServer;
  let files: Awaited<ReturnType<typeof secretDir>>;
  let conn: VaultConnection;
  const calls: VaultOperation[] = [];
  const captured = captureLog();

  beforeAll(async () => {
    [bao, moto] = await Promise.all([startOpenBao({ binary: baoBinary as string }), startMoto()]);
    files = await secretDir();
    await bao.writePolicy('agent', AGENT_POLICY);
    const admin = await moto.createIamUser('wirekey-admin');
    await bao.enableAws({ motoUrl: moto.url, accessKey: admin.accessKeyId, secretKey: admin.secretAccessKey, role: 'billing', lease: '1h', leaseMax: '2h' });
    const { roleId, secretId } = await bao.appRole('agent', ['agent'], { tokenTtl: '4h', tokenMaxTtl: '8h' });
    conn = new VaultConnection(
      {
        name: 'main',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id', roleId), secretIdFile: await files.write('secret-id', secretId) } },
      },
      { log: captured.log, timers: new FakeTimers(), onRequest: (r) => calls.push(r.operation) },
    );
    await conn.start();
  });

  afterAll(async () => {
    await conn?.close();
    await bao?.destroy();
    await moto?.stop();
    await files?.remove();
  });

  it('withholds a revoked lease at the next lookup and reads a fresh one', async () => {
    const timers = new FakeTimers();
    const src = new VaultLeaseSource({ name: 'aws-billing', connection: conn, aws: 'aws/creds/billing', log: captured.log, timers, leaseCheckMs: CHECK_MS });
    try {
      const first = await src.get();
      const firstLease = first.leaseId as string;
      // A lookup that finds the lease changes nothing.
      await timers.advance(CHECK_MS);
      await eventually(async () => calls.includes('lease-lookup') && timers.pending === 2, 10_000, 'the first lease lookup');
      expect(src.peek()).toBe(first);

      await bao.api('PUT', 'sys/leases/revoke', { lease_id: firstLease });
      // Until the next lookup the agent cannot know.
      expect(src.peek()).toBe(first);
      await timers.advance(CHECK_MS);
      await eventually(async () => src.status().leaseId !== undefined && src.status().leaseId !== firstLease, 10_000, 'a fresh lease');
      const second = await src.get();
      expect(second).not.toBe(first);
      expect(second.leaseId).not.toBe(firstLease);
      expect(second.fields.get('access_key')?.reveal()).not.toBe(first.fields.get('access_key')?.reveal());
      expect(captured.lines.join('')).toContain(`Vault no longer knows lease ${firstLease} (revoked)`);
      // The fresh lease is real in Vault, and checked in turn.
      expect((await bao.api('PUT', 'sys/leases/lookup', { lease_id: second.leaseId })).data.id).toBe(second.leaseId);
    } finally {
      await src.close();
    }
  });

  it('keeps serving when the lookup cannot reach Vault', async () => {
    const timers = new FakeTimers();
    const src = new VaultLeaseSource({ name: 'aws-billing', connection: conn, aws: 'aws/creds/billing', log: captured.log, timers, leaseCheckMs: CHECK_MS });
    try {
      const cred = await src.get();
      await bao.stop();
      try {
        const before = calls.length;
        await timers.advance(CHECK_MS);
        await eventually(async () => calls.slice(before).includes('lease-lookup') && timers.pending === 2, 30_000, 'the failed lookup');
        expect(src.peek()).toBe(cred);
        expect(await src.get()).toBe(cred);
      } finally {
        await bao.start();
      }
    } finally {
      await src.close();
    }
  });
});
