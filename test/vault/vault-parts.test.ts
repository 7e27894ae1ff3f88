/**
 * The parts of the Vault client that need no server: retry delays, the
 * redacting wrapper around response data, option checks, and the errors a
 * source gives before it ever reaches Vault.
 */
import util from 'node:util';
import { describe, expect, it } from 'vitest';
import { backoffDelay, jittered } from '../../controller/credentials/vault/backoff.js';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultData } from '../../controller/credentials/vault/vault-data.js';
import { VaultError } from '../../controller/credentials/vault/vault-error.js';
import { VaultKvSource } from '../../controller/credentials/vault/vault-kv-source.js';
import { VaultLeaseSource } from '../../controller/credentials/vault/vault-lease-source.js';
import { CredentialError } from '../../controller/errors.js';
import { createLogger } from '../../controller/log.js';

const captureLog = () => ({ log: createLogger('debug', () => undefined) });

describe('Vault client parts (no server)', () => {
  it('backoff doubles up to the maximum, with half of it random', () => {
    const o = { initialMs: 100, maxMs: 1000 };
    expect(backoffDelay(0, o, () => 0)).toBe(50);
    expect(backoffDelay(0, o, () => 1)).toBe(100);
    expect(backoffDelay(3, o, () => 1)).toBe(800);
    expect(backoffDelay(10, o, () => 1)).toBe(1000);
    expect(backoffDelay(10, o, () => 0)).toBe(500);
    expect(backoffDelay(1000, o, () => 0.5)).toBe(750);
    expect(jittered(1000, 0.1, () => 1)).toBe(900);
    expect(jittered(1000, 0.1, () => 0)).toBe(1000);
  });

  it('VaultData redacts itself and hands values out as Secrets', () => {
    const d = new VaultData({ data: { api_key: 'CANARY-vd', n: 3, empty: '' }, metadata: { version: 7 } });
    for (const text of [String(d), `${d}`, JSON.stringify({ d }), util.inspect(d, { showHidden: true }), util.format('%s %o %O %j', d, d, d, d)]) {
      expect(text).not.toContain('CANARY');
    }
    expect(d.secret('data', 'api_key')?.reveal()).toBe('CANARY-vd');
    expect(String(d.secret('data', 'api_key'))).toBe('[redacted]');
    expect(d.secret('data', 'missing')).toBeUndefined();
    expect(d.secret('data', 'n')).toBeNull();
    expect(d.secret('data', 'empty')).toBeNull();
    expect([...d.secrets('data').keys()]).toEqual(['api_key']);
    expect(d.metadata('metadata', 'version')).toBe(7);
    expect(d.hasObject('data')).toBe(true);
    expect(Object.keys(d)).toEqual([]);
  });

  it('VaultError says what, where and how; transient for unreachable and 5xx', () => {
    const e = new VaultError({ connection: 'main', method: 'GET', path: 'secret/data/x', status: 503, reason: 'Vault is sealed' });
    expect(e.message).toBe('vault connection "main": GET secret/data/x failed: HTTP 503: Vault is sealed');
    expect(e.code).toBe('WK_VAULT');
    expect(e.transient).toBe(true);
    expect(new VaultError({ connection: 'm', method: 'GET', path: 'p', reason: 'ECONNREFUSED' }).transient).toBe(true);
    expect(new VaultError({ connection: 'm', method: 'GET', path: 'p', status: 403, reason: 'permission denied' }).transient).toBe(false);
  });

  it('sources check their options', () => {
    const { log } = captureLog();
    const connection = new VaultConnection({ name: 'c', address: 'http://127.0.0.1:1', auth: { token: { file: '/nonexistent' } } }, { log });
    expect(() => new VaultKvSource({ name: 'k', connection, kv: 'secret', field: 'f', log })).toThrow(CredentialError);
    expect(() => new VaultLeaseSource({ name: 'l', connection, aws: 'aws/roles/x', log })).toThrow(/MOUNT\/creds\/ROLE or MOUNT\/sts\/ROLE/);
    expect(() => new VaultLeaseSource({ name: 'l', connection, path: 'database/creds/x', log })).toThrow(/needs a field/);
    expect(() => new VaultLeaseSource({ name: 'l', connection, log })).toThrow(/exactly one of aws or path/);
    expect(util.inspect(connection)).toBe('VaultConnection(c http://127.0.0.1:1 auth=token)');
  });

  it('a source on a connection that never started fails with a CredentialError naming it', async () => {
    const { log } = captureLog();
    const connection = new VaultConnection({ name: 'c', address: 'http://127.0.0.1:1', auth: { token: { file: '/nonexistent' } } }, { log });
    const kv = new VaultKvSource({ name: 'openai-key', connection, kv: 'secret/openai', field: 'api_key', firstFetchJitterMs: 0, log });
    await expect(kv.get()).rejects.toThrow(/^credential "openai-key": cannot read secret\/openai from Vault: vault connection "c": .*connection not started/);
    const aws = new VaultLeaseSource({ name: 'aws-billing', connection, aws: 'aws/creds/billing', log });
    await expect(aws.get()).rejects.toThrow(/^credential "aws-billing": cannot read aws\/creds\/billing from Vault/);
    await aws.close();
    await kv.close();
  });
});
