/**
 * VaultConnection against a real OpenBao/Vault server: token-file and
 * AppRole logins, a clear start-up error for a bad secret id, token renewal
 * at ~2/3 of the TTL, re-login at the max TTL and after the token is
 * revoked, and revocation of the agent's own token at close.
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { chmod, chown } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultError } from '../../controller/credentials/vault/vault-error.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, eventually, secretDir, skipReason, untilClockPasses } from './fixture.js';

describe.skipIf(!baoBinary)(`Vault connection: auth${skipReason}`, () => {
  let bao: OpenBaoServer;
  let files: Awaited<ReturnType<typeof secretDir>>;

  beforeAll(async () => {
    bao = await startOpenBao({ binary: baoBinary as string });
    files = await secretDir();
    await bao.writePolicy('agent', AGENT_POLICY);
    await bao.enableFileAudit();
    await bao.writeKv('app', { api_key: 'kv-value-1' });
  });

  afterAll(async () => {
    await bao?.destroy();
    await files?.remove();
  });

  const loginCount = async (mountPath: string) =>
    (await bao.auditEntries()).filter((e) => e.type === 'response' && e.request?.path === mountPath).length;

  it('logs in with a token file, reads with it, and leaves the token alone at close', async () => {
    const created = await bao.api('POST', 'auth/token/create', { policies: ['agent'], ttl: '1h' });
    const token = created.auth.client_token as string;
    const file = await files.write('token', token);
    const { log } = captureLog();
    const conn = new VaultConnection({ name: 'tok', address: bao.addr, auth: { token: { file } } }, { log });
    await conn.start();
    const res = await conn.read('secret/data/app');
    expect(res.data.secret('data', 'api_key')?.reveal()).toBe('kv-value-1');
    expect(conn.status()).toMatchObject({ authenticated: true, auth: 'token', degraded: false });
    await conn.close();
    // A token file belongs to whoever issued it: still valid.
    const lookup = await bao.api('POST', 'auth/token/lookup', { token });
    expect(lookup.data.ttl).toBeGreaterThan(0);
  });

  it('refuses a token file Vault does not accept, naming connection, path and status', async () => {
    const file = await files.write('bad-token', 'hvs.not-a-real-token');
    const conn = new VaultConnection({ name: 'badtok', address: bao.addr, auth: { token: { file } } }, captureLog());
    const err = await conn.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VaultError);
    expect((err as VaultError).status).toBe(403);
    expect((err as VaultError).message).toMatch(/vault connection "badtok": GET auth\/token\/lookup-self failed: HTTP 403/);
    expect((err as VaultError).message).not.toContain('not-a-real-token');
  });

  it('logs in with AppRole, renews the token at ~2/3 of its TTL, and revokes it at close', async () => {
    const { roleId, secretId } = await bao.appRole('agent-renew', ['agent'], { tokenTtl: '3s', tokenMaxTtl: '1h' });
    const conn = new VaultConnection(
      {
        name: 'main',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id', roleId), secretIdFile: await files.write('secret-id', secretId) } },
      },
      captureLog(),
    );
    const before = await loginCount('auth/approle/login');
    await conn.start();
    expect(await loginCount('auth/approle/login')).toBe(before + 1);
    const firstExpiry = conn.status().tokenExpiresAt as number;
    expect(firstExpiry).toBeGreaterThan(Date.now());
    // Renewal at ~2 s; it pushes the expiry out.
    await eventually(async () => (conn.status().tokenExpiresAt as number) > firstExpiry + 1000, 6000, 'a token renewal');
    const renewals = (await bao.auditEntries()).filter(
      (e) => e.type === 'response' && e.request?.path === 'auth/token/renew-self',
    ).length;
    expect(renewals).toBeGreaterThanOrEqual(1);
    // Past the first TTL, the token still works: renewal, not luck.
    await untilClockPasses(firstExpiry);
    expect((await conn.read('secret/data/app')).data.secret('data', 'api_key')?.reveal()).toBe('kv-value-1');
    expect(await loginCount('auth/approle/login')).toBe(before + 1);

    const accessors = async () => ((await bao.api('GET', 'auth/token/accessors?list=true')).data.keys as string[]).length;
    const held = await accessors();
    await conn.close();
    expect(await accessors()).toBe(held - 1);
  });

  it('logs in again when the token reaches its max TTL', async () => {
    const { roleId, secretId } = await bao.appRole('agent-maxttl', ['agent'], { tokenTtl: '2s', tokenMaxTtl: '4s' });
    const conn = new VaultConnection(
      {
        name: 'maxttl',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id-2', roleId), secretIdFile: await files.write('secret-id-2', secretId) } },
      },
      captureLog(),
    );
    const before = await loginCount('auth/approle/login');
    await conn.start();
    await eventually(async () => (await loginCount('auth/approle/login')) >= before + 2, 8000, 'a second login');
    // Reads keep working through the change of token.
    expect((await conn.read('secret/data/app')).data.secret('data', 'api_key')?.reveal()).toBe('kv-value-1');
    await conn.close();
  });

  it('logs in again when its token is revoked under it, and the request succeeds', async () => {
    const { roleId, secretId } = await bao.appRole('agent-revoked', ['agent']);
    const { log, lines } = captureLog();
    const conn = new VaultConnection(
      {
        name: 'revoked',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id-3', roleId), secretIdFile: await files.write('secret-id-3', secretId) } },
      },
      { log },
    );
    await conn.start();
    // Find the agent's token by its role and revoke it behind the agent's back.
    const keys = (await bao.api('GET', 'auth/token/accessors?list=true')).data.keys as string[];
    let revoked = 0;
    for (const accessor of keys) {
      const info = await bao.api('POST', 'auth/token/lookup-accessor', { accessor });
      if (info.data.meta?.role_name === 'agent-revoked') {
        await bao.api('POST', 'auth/token/revoke-accessor', { accessor });
        revoked++;
      }
    }
    expect(revoked).toBe(1);
    expect((await conn.read('secret/data/app')).data.secret('data', 'api_key')?.reveal()).toBe('kv-value-1');
    expect(lines.some((l) => l.includes('token no longer accepted'))).toBe(true);
    await conn.close();
  });

  it('a bad AppRole secret id is a clear start-up error that never shows the secret', async () => {
    const { roleId } = await bao.appRole('agent-bad', ['agent']);
    const badSecret = 'c0ffee00-dead-beef-0000-000000000bad';
    const { log, lines } = captureLog();
    const conn = new VaultConnection(
      {
        name: 'prod-vault',
        address: bao.addr,
        auth: { approle: { roleIdFile: await files.write('role-id-4', roleId), secretIdFile: await files.write('secret-id-4', badSecret) } },
      },
      { log },
    );
    const err = await conn.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VaultError);
    const e = err as VaultError;
    expect(e.code).toBe('WK_VAULT');
    expect(e.connection).toBe('prod-vault');
    expect(e.path).toBe('auth/approle/login');
    expect(e.status).toBeGreaterThanOrEqual(400);
    expect(e.status).toBeLessThan(500);
    expect(e.message).toMatch(/^vault connection "prod-vault": POST auth\/approle\/login failed: HTTP 4\d\d: login refused: /);
    const everything = [e.message, String(e.stack), JSON.stringify(e), ...lines].join('\n');
    expect(everything).not.toContain(badSecret);
    expect(everything).not.toContain(roleId);
    expect(e.cause).toBeUndefined();
    await conn.close();
  });

  it('logs in with a JWT (jwt auth method at a custom mount)', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    await bao.api('POST', 'sys/auth/jwt-test', { type: 'jwt' });
    await bao.api('POST', 'auth/jwt-test/config', {
      jwt_validation_pubkeys: [publicKey.export({ type: 'spki', format: 'pem' }).toString()],
      bound_issuer: 'wirekey-test',
    });
    await bao.api('POST', 'auth/jwt-test/role/agent', {
      role_type: 'jwt',
      bound_audiences: ['wirekey'],
      user_claim: 'sub',
      token_policies: ['agent'],
      token_ttl: '1h',
    });
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const unsigned = `${b64({ alg: 'RS256', typ: 'JWT' })}.${b64({ iss: 'wirekey-test', aud: 'wirekey', sub: 'host-1', iat: now, exp: now + 600 })}`;
    const jwt = `${unsigned}.${sign('sha256', Buffer.from(unsigned), privateKey).toString('base64url')}`;
    const { log, lines } = captureLog();
    const conn = new VaultConnection(
      { name: 'jwt', address: bao.addr, auth: { jwt: { role: 'agent', file: await files.write('jwt', jwt), mount: 'jwt-test' } } },
      { log },
    );
    await conn.start();
    expect((await conn.read('secret/data/app')).data.secret('data', 'api_key')?.reveal()).toBe('kv-value-1');
    await conn.close();
    expect(lines.join('')).not.toContain(jwt.split('.')[2]);

    const wrongRole = new VaultConnection(
      { name: 'jwt-bad', address: bao.addr, auth: { jwt: { role: 'nope', file: await files.write('jwt2', jwt), mount: 'jwt-test' } } },
      captureLog(),
    );
    const err = (await wrongRole.start().catch((e: unknown) => e)) as VaultError;
    expect(err).toBeInstanceOf(VaultError);
    expect(err.message).toMatch(/^vault connection "jwt-bad": POST auth\/jwt-test\/login failed: HTTP 4\d\d: login refused: /);
    expect(err.message).not.toContain(jwt.split('.')[2]);
  });

  it('a missing secret id file is a clear start-up error', async () => {
    const conn = new VaultConnection(
      { name: 'nofile', address: bao.addr, auth: { approle: { roleIdFile: '/nonexistent/role-id', secretIdFile: '/nonexistent/secret-id' } } },
      captureLog(),
    );
    await expect(conn.start()).rejects.toThrow(/vault connection "nofile": .*cannot use the role id file: cannot stat \/nonexistent\/role-id \(ENOENT\)/);
  });

  it('refuses login files others can read or replace, naming the file and the problem, before any login', async () => {
    const { roleId, secretId } = await bao.appRole('perm', ['agent']);
    const roleIdFile = await files.write('perm-role-id', roleId);
    const exposed = await files.write('perm-secret-id', secretId);
    await chmod(exposed, 0o640);
    const token = (await bao.api('POST', 'auth/token/create', { policies: ['agent'], ttl: '1h' })).auth.client_token as string;
    const tokenFile = await files.write('perm-token', token);
    await chmod(tokenFile, 0o604);
    const jwtFile = await files.write('perm-jwt', 'header.payload.signature');
    await chmod(jwtFile, 0o644);
    const k8sFile = await files.write('perm-k8s', 'header.payload.signature');
    await chmod(k8sFile, 0o660);
    const cases: [string, ConstructorParameters<typeof VaultConnection>[0]['auth'], RegExp][] = [
      ['approle', { approle: { roleIdFile, secretIdFile: exposed } }, /cannot use the secret id file: .*perm-secret-id has mode 0640; it must not be accessible by group or others/],
      ['token', { token: { file: tokenFile } }, /cannot use the token file: .*perm-token has mode 0604/],
      ['jwt', { jwt: { role: 'r', file: jwtFile } }, /cannot use the JWT file: .*perm-jwt has mode 0644/],
      ['kubernetes', { kubernetes: { role: 'r', tokenFile: k8sFile } }, /cannot use the service account token file: .*perm-k8s has mode 0660/],
      ['directory', { jwt: { role: 'r', file: files.dir } }, /cannot use the JWT file: .* is not a regular file/],
    ];
    const before = await loginCount('auth/approle/login');
    for (const [name, auth, message] of cases) {
      const conn = new VaultConnection({ name: `perm-${name}`, address: bao.addr, auth }, captureLog());
      const err = (await conn.start().catch((e: unknown) => e)) as VaultError;
      expect(err, name).toBeInstanceOf(VaultError);
      expect(err.message, name).toMatch(new RegExp(`^vault connection "perm-${name}": `));
      expect(err.message, name).toMatch(message);
      expect(err.message, name).not.toContain(secretId);
      expect(err.message, name).not.toContain(token);
      await conn.close();
    }
    expect(await loginCount('auth/approle/login')).toBe(before);
    if (process.geteuid?.() === 0) {
      // Owned by another unprivileged user: refused even with mode 0600.
      await chmod(exposed, 0o600);
      await chown(exposed, 4242, 4242);
      const conn = new VaultConnection({ name: 'perm-owner', address: bao.addr, auth: { approle: { roleIdFile, secretIdFile: exposed } } }, captureLog());
      await expect(conn.start()).rejects.toThrow(/cannot use the secret id file: .*perm-secret-id is owned by uid 4242; it must be owned by root\b/);
      await chown(exposed, 0, 0);
      await conn.start();
      await conn.close();
    }
  });

  it('refuses plaintext http:// to a host that is not loopback, before sending anything', async () => {
    const { roleId, secretId } = await bao.appRole('plain', ['agent']);
    const auth = { approle: { roleIdFile: await files.write('plain-role-id', roleId), secretIdFile: await files.write('plain-secret-id', secretId) } };
    const before = await loginCount('auth/approle/login');
    for (const address of ['http://vault.internal:8200', 'http://192.0.2.1:8200', 'http://127.0.0.1@vault.internal:8200']) {
      const conn = new VaultConnection({ name: 'plain', address, auth }, captureLog());
      const err = (await conn.start().catch((e: unknown) => e)) as VaultError;
      expect(err, address).toBeInstanceOf(VaultError);
      expect(err.message, address).toMatch(/^vault connection "plain": POST auth\/approle\/login failed: .*plaintext http:\/\/ is only allowed to a loopback address/);
      expect(err.message, address).not.toContain(secretId);
      await conn.close();
    }
    // Loopback stays allowed (this server).
    const local = new VaultConnection({ name: 'plain', address: bao.addr, auth }, captureLog());
    await local.start();
    await local.close();
    expect(await loginCount('auth/approle/login')).toBe(before + 1);
  });

  it('an unreachable server is a clear start-up error', async () => {
    const conn = new VaultConnection(
      { name: 'down', address: 'http://127.0.0.1:1', auth: { token: { file: await files.write('t', 'x') } } },
      captureLog(),
    );
    const err = (await conn.start().catch((e: unknown) => e)) as VaultError;
    expect(err).toBeInstanceOf(VaultError);
    expect(err.status).toBeUndefined();
    expect(err.transient).toBe(true);
    expect(err.message).toMatch(/vault connection "down": GET auth\/token\/lookup-self failed: Vault unreachable: .*ECONNREFUSED/);
  });
});
