/**
 * Tokens and leases of 60 days (the server's max_lease_ttl raised for it):
 * renewed at 2/3 of their TTL, 40 days, which is more than one Node timer
 * holds (2^31-1 ms, 24.8 days). Node runs such a timer after 1 ms, which
 * would renew back to back. The clock is injected: the test moves it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_TIMER_MS } from '../../controller/credentials/long-timeout.js';
import { VaultConnection, type VaultOperation } from '../../controller/credentials/vault/vault-connection.js';
import { VaultLeaseSource } from '../../controller/credentials/vault/vault-lease-source.js';
import { FakeTimers } from '../support/fake-timers.js';
import { startMoto, type MotoServer } from '../support/moto.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, eventually, secretDir, skipReason } from './fixture.js';

const DAY = 86_400_000;
const TTL_DAYS = 60;

describe.skipIf(!baoBinary)(`Vault tokens and leases longer than a Node timer${skipReason}`, () => {
  let bao: OpenBaoServer;
  let moto: MotoServer;
  let files: Awaited<ReturnType<typeof secretDir>>;
  const captured = captureLog();

  beforeAll(async () => {
    [bao, moto] = await Promise.all([startOpenBao({ binary: baoBinary as string, maxLeaseTtl: '1500h' }), startMoto()]);
    files = await secretDir();
    await bao.writePolicy('agent', AGENT_POLICY);
    const admin = await moto.createIamUser('wirekey-admin');
    await bao.enableAws({
      motoUrl: moto.url,
      accessKey: admin.accessKeyId,
      secretKey: admin.secretAccessKey,
      role: 'billing',
      lease: `${TTL_DAYS * 24}h`,
      leaseMax: '1500h',
    });
  });

  afterAll(async () => {
    await bao?.destroy();
    await moto?.stop();
    await files?.remove();
  });

  async function connect(timers: FakeTimers, calls: VaultOperation[]): Promise<VaultConnection> {
    const { roleId, secretId } = await bao.appRole('agent', ['agent'], { tokenTtl: `${TTL_DAYS * 24}h`, tokenMaxTtl: '1500h' });
    const conn = new VaultConnection(
      {
        name: 'main',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id', roleId), secretIdFile: await files.write('secret-id', secretId) } },
      },
      { log: captured.log, timers, onRequest: (r) => calls.push(r.operation) },
    );
    await conn.start();
    return conn;
  }

  it('renews a 60-day token once, at about 40 days, not back to back', async () => {
    const timers = new FakeTimers();
    const calls: VaultOperation[] = [];
    const conn = await connect(timers, calls);
    try {
      const expiresAt = conn.status().tokenExpiresAt as number;
      expect(expiresAt - Date.now()).toBeGreaterThan((TTL_DAYS - 1) * DAY);
      // Every timer asked for is one Node keeps as asked.
      expect(timers.asked.length).toBeGreaterThan(0);
      expect(timers.asked.filter((ms) => ms > MAX_TIMER_MS)).toEqual([]);
      // Nothing due for at least 2/3 of the TTL minus the 10% jitter.
      expect((timers.nextAt() as number) - timers.now).toBeGreaterThan(DAY);
      await timers.advance(Math.floor(TTL_DAYS * DAY * (2 / 3) * 0.9) - 1);
      expect(calls.filter((c) => c === 'token-renew')).toEqual([]);
      await timers.advance(Math.ceil(TTL_DAYS * DAY * (2 / 3) * 0.1) + 1);
      await eventually(async () => calls.includes('token-renew'), 10_000, 'the token renewal');
      await eventually(async () => timers.pending === 1, 10_000, 'the next renewal to be scheduled');
      expect(calls.filter((c) => c === 'token-renew')).toHaveLength(1);
      expect(timers.asked.filter((ms) => ms > MAX_TIMER_MS)).toEqual([]);
      expect((timers.nextAt() as number) - timers.now).toBeGreaterThan(DAY);
    } finally {
      await conn.close();
    }
  });

  it('renews a 60-day lease once, at about 40 days, not back to back', async () => {
    const connTimers = new FakeTimers();
    const timers = new FakeTimers();
    const calls: VaultOperation[] = [];
    const conn = await connect(connTimers, calls);
    // Only renewals here: no lease lookups (every minute of 40 days).
    const src = new VaultLeaseSource({ name: 'aws-billing', connection: conn, aws: 'aws/creds/billing', log: captured.log, timers, leaseCheckMs: Infinity });
    try {
      const cred = await src.get();
      expect((src.status().expiresAt as number) - Date.now()).toBeGreaterThan((TTL_DAYS - 1) * DAY);
      expect(timers.asked.filter((ms) => ms > MAX_TIMER_MS)).toEqual([]);
      expect((timers.nextAt() as number) - timers.now).toBeGreaterThan(DAY);
      await timers.advance(Math.floor(TTL_DAYS * DAY * (2 / 3) * 0.9) - 1);
      expect(calls.filter((c) => c === 'lease-renew' || c === 'read')).toEqual(['read']);
      await timers.advance(Math.ceil(TTL_DAYS * DAY * (2 / 3) * 0.1) + 1);
      await eventually(async () => calls.includes('lease-renew'), 10_000, 'the lease renewal');
      await eventually(async () => timers.pending === 1, 10_000, 'the next renewal to be scheduled');
      expect(calls.filter((c) => c === 'lease-renew' || c === 'read')).toEqual(['read', 'lease-renew']);
      expect(src.peek()).toBe(cred);
      expect(timers.asked.filter((ms) => ms > MAX_TIMER_MS)).toEqual([]);
    } finally {
      await src.close();
      await conn.close();
    }
  });
});
