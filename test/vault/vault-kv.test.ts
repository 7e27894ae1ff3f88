/**
 * VaultKvSource against a real OpenBao/Vault KV v2 engine: the value and
 * its version, a new version picked up by a later get() while a steady loop
 * of get()s runs through the change without a failure, one Vault read per
 * refresh (counted in Vault's own file audit log) however many get()s, and
 * what Vault answering "gone" does to the cache.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CredentialError } from '../../controller/errors.js';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultKvSource } from '../../controller/credentials/vault/vault-kv-source.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, eventually, secretDir, skipReason } from './fixture.js';

describe.skipIf(!baoBinary)(`Vault KV v2 credential source${skipReason}`, () => {
  let bao: OpenBaoServer;
  let files: Awaited<ReturnType<typeof secretDir>>;
  let conn: VaultConnection;
  const captured = captureLog();

  beforeAll(async () => {
    bao = await startOpenBao({ binary: baoBinary as string });
    files = await secretDir();
    await bao.writePolicy('agent', AGENT_POLICY);
    await bao.enableFileAudit();
    const { roleId, secretId } = await bao.appRole('agent', ['agent']);
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
    await files?.remove();
  });

  const kvReads = async (path: string) =>
    (await bao.auditEntries()).filter(
      (e) => e.type === 'response' && e.request?.path === path && e.request?.operation === 'read',
    ).length;

  it('serves the field with its KV version and the other fields', async () => {
    await bao.writeKv('openai', { api_key: 'sk-first', org: 'org-1' });
    const src = new VaultKvSource({ name: 'openai-key', connection: conn, kv: 'secret/openai', field: 'api_key', log: captured.log });
    const cred = await src.get();
    expect(cred.name).toBe('openai-key');
    expect(cred.secret?.reveal()).toBe('sk-first');
    expect(cred.version).toBe('1');
    expect(cred.fields.get('org')?.reveal()).toBe('org-1');
    expect(cred.leaseId).toBeUndefined();
    await src.close();
  });

  it('picks up a new version on a later get(), with a steady get() loop and no failure; one read per refresh', async () => {
    await bao.writeKv('rotating', { token: 'value-v1' });
    const refreshMs = 400;
    // The source's clock is the test's: a refresh period passes when the test moves it.
    let clock = Date.now();
    const src = new VaultKvSource({
      name: 'rotating',
      connection: conn,
      kv: 'secret/rotating',
      field: 'token',
      refreshMs,
      firstFetchJitterMs: 0,
      log: captured.log,
      now: () => clock,
    });
    const readsBefore = await kvReads('secret/data/rotating');
    const seen: string[] = [];
    let failures = 0;
    let calls = 0;
    let written = 0;
    let firstSeenV2 = 0;
    const periods = 10;
    for (let period = 0; period < periods; period++) {
      if (period === 4) {
        await bao.writeKv('rotating', { token: 'value-v2' });
        written = clock;
      }
      for (let round = 0; round < 10; round++) {
        // Many concurrent get()s, like concurrent requests.
        const batch = await Promise.allSettled(Array.from({ length: 10 }, () => src.get()));
        for (const r of batch) {
          calls++;
          if (r.status === 'rejected') failures++;
          else {
            const v = `${r.value.version}:${r.value.secret?.reveal()}`;
            if (seen[seen.length - 1] !== v) seen.push(v);
            if (!firstSeenV2 && r.value.version === '2') firstSeenV2 = clock;
          }
        }
      }
      // The read this period's first get() started has landed.
      await eventually(async () => src.status().fetchedAt === clock, 10_000, `the read of refresh period ${period}`);
      clock += refreshMs;
    }
    expect(failures).toBe(0);
    // Old value until the change is seen, then the new one for good.
    expect(seen).toEqual(['1:value-v1', '2:value-v2']);
    // Seen within one refresh period of the write.
    expect(firstSeenV2 - written).toBeLessThanOrEqual(refreshMs);
    // Vault's audit log: reads follow the refresh period, not the get()s.
    const reads = (await kvReads('secret/data/rotating')) - readsBefore;
    expect(calls).toBeGreaterThan(500);
    expect(reads).toBe(periods);
    await src.close();
  });

  it('peek() gives the value held only while no read is due; get() then starts the read', async () => {
    await bao.writeKv('peeked', { token: 'value-v1' });
    const refreshMs = 400;
    let clock = Date.now();
    const src = new VaultKvSource({
      name: 'peeked', connection: conn, kv: 'secret/peeked', field: 'token', refreshMs, firstFetchJitterMs: 0, log: captured.log, now: () => clock,
    });
    expect(src.peek()).toBeUndefined();
    const first = await src.get();
    expect(src.peek()).toBe(first);
    await bao.writeKv('peeked', { token: 'value-v2' });
    const readsBefore = await kvReads('secret/data/peeked');
    // A refresh is due: peek() has nothing and starts nothing.
    clock += refreshMs;
    expect(src.peek()).toBeUndefined();
    expect(await kvReads('secret/data/peeked')).toBe(readsBefore);
    // get() serves the value held and starts the read; once it lands, peek() has the new version.
    expect(await src.get()).toBe(first);
    await eventually(async () => src.status().version === '2', 10_000, 'the refresh get() started');
    expect(src.peek()?.secret?.reveal()).toBe('value-v2');
    // That one read, and none by peek().
    await eventually(async () => (await kvReads('secret/data/peeked')) > readsBefore, 10_000, 'the refresh in the audit log');
    expect(await kvReads('secret/data/peeked')).toBe(readsBefore + 1);
    await src.close();
    expect(src.peek()).toBeUndefined();
  });

  it('one read for a burst of first get()s (single flight)', async () => {
    await bao.writeKv('burst', { token: 'burst-value' });
    const before = await kvReads('secret/data/burst');
    const src = new VaultKvSource({ name: 'burst', connection: conn, kv: 'secret/burst', field: 'token', log: captured.log });
    const all = await Promise.all(Array.from({ length: 200 }, () => src.get()));
    expect(new Set(all.map((c) => c.secret?.reveal()))).toEqual(new Set(['burst-value']));
    for (let i = 0; i < 500; i++) await src.get();
    expect((await kvReads('secret/data/burst')) - before).toBe(1);
    await src.close();
  });

  it('a pinned version stays pinned', async () => {
    await bao.writeKv('pinned', { token: 'p1' });
    await bao.writeKv('pinned', { token: 'p2' });
    const src = new VaultKvSource({ name: 'pinned', connection: conn, kv: 'secret/pinned', field: 'token', version: 1, log: captured.log });
    const cred = await src.get();
    expect(cred.secret?.reveal()).toBe('p1');
    expect(cred.version).toBe('1');
    await src.close();
  });

  it('a missing field or secret is a CredentialError naming the credential', async () => {
    await bao.writeKv('nofield', { other: 'x' });
    const noField = new VaultKvSource({ name: 'nofield', connection: conn, kv: 'secret/nofield', field: 'token', log: captured.log });
    await expect(noField.get()).rejects.toThrow(new CredentialError('nofield', 'secret/nofield has no field "token"'));
    const missing = new VaultKvSource({ name: 'missing', connection: conn, kv: 'secret/does-not-exist', field: 'token', log: captured.log });
    const err = (await missing.get().catch((e: unknown) => e)) as CredentialError;
    expect(err).toBeInstanceOf(CredentialError);
    expect(err.message).toMatch(/^credential "missing": cannot read secret\/does-not-exist from Vault: .*HTTP 404/);
  });

  it('a secret deleted in Vault stops being served after the next refresh', async () => {
    await bao.writeKv('deleted', { token: 'short-lived' });
    let clock = Date.now();
    const src = new VaultKvSource({
      name: 'deleted',
      connection: conn,
      kv: 'secret/deleted',
      field: 'token',
      refreshMs: 200,
      firstFetchJitterMs: 0,
      log: captured.log,
      now: () => clock,
    });
    expect((await src.get()).secret?.reveal()).toBe('short-lived');
    await bao.api('DELETE', 'secret/data/deleted');
    clock += 200;
    await src.get(); // starts the refresh, still answered from memory
    await eventually(async () => src.status().lastError, 10_000, "the refresh to get Vault's answer");
    await expect(src.get()).rejects.toThrow(/credential "deleted": .*HTTP 404/);
  });
});
