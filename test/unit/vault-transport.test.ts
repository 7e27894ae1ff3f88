/**
 * The Vault client's HTTP transport over TLS: the server is verified
 * against tls.caFile and tls.serverName, and refused otherwise.
 */
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../controller/log.js';
import { VaultConnection, type VaultConnectionSpec } from '../../controller/credentials/vault/vault-connection.js';
import { VaultError } from '../../controller/credentials/vault/vault-error.js';
import { createTestPki, type TestPki } from '../support/test-pki.js';

describe('Vault client over TLS', () => {
  let dir: string;
  let pki: TestPki;
  let server: https.Server;
  let address: string;
  let tokenFile: string;
  const seen: (string | undefined)[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'wirekey-vault-tls-'));
    pki = await createTestPki(dir, ['vault.test']);
    server = https.createServer({ cert: await readFile(pki.serverCert), key: await readFile(pki.serverKey) }, (req, res) => {
      seen.push(req.url);
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(req.url?.startsWith('/v1/auth/token/lookup-self') ? { data: { ttl: 0, renewable: false } } : { data: { data: { k: 'v' } } }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    address = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    tokenFile = path.join(dir, 'token');
    await writeFile(tokenFile, 'hvs.tls-test-token', { mode: 0o600 });
    await chmod(tokenFile, 0o600);
  });

  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const connect = (tls: VaultConnectionSpec['tls']) =>
    new VaultConnection({ name: 'tls', address, auth: { token: { file: tokenFile } }, ...(tls ? { tls } : {}) }, { log: createLogger('error', () => undefined) });

  it('verifies the server against caFile and serverName', async () => {
    const conn = connect({ caFile: pki.caCert, serverName: 'vault.test' });
    await conn.start();
    expect((await conn.read('secret/data/x')).data.secret('data', 'k')?.reveal()).toBe('v');
    await conn.close();
    expect(seen).toEqual(['/v1/auth/token/lookup-self', '/v1/secret/data/x']);
  });

  it.each([
    ['no caFile', false, 'vault.test'],
    ['the wrong server name', true, 'other.test'],
  ])('refuses a server it cannot verify (%s)', async (_, withCa, serverName) => {
    seen.length = 0;
    const conn = connect({ serverName, ...(withCa ? { caFile: pki.caCert } : {}) });
    const err = (await conn.start().catch((e: unknown) => e)) as VaultError;
    await conn.close();
    expect(err).toBeInstanceOf(VaultError);
    expect(err.status).toBeUndefined();
    expect(err.message).toMatch(/^vault connection "tls": GET auth\/token\/lookup-self failed: Vault unreachable: /);
    expect(err.message).not.toContain('tls-test-token');
    expect(seen).toEqual([]);
  });
});
