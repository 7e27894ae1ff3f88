/**
 * The Vault client follows no redirect: a 3xx from the address is a
 * failure naming its status, and whatever the Location names never sees
 * the token or the login body.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../controller/log.js';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultError } from '../../controller/credentials/vault/vault-error.js';

const TOKEN = 'hvs.redirect-test-token';
const SECRET_ID = 'redirect-test-secret-id';

function listen(handler: http.RequestListener): Promise<http.Server> {
  const server = http.createServer(handler);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

describe('Vault client and redirects', () => {
  let target: http.Server;
  let redirector: http.Server;
  let dir: string;
  const seen: { url: string | undefined; headers: http.IncomingHttpHeaders; body: string }[] = [];

  beforeAll(async () => {
    target = await listen((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        seen.push({ url: req.url, headers: req.headers, body });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ auth: { client_token: 'hvs.stolen', lease_duration: 60, renewable: true }, data: { ttl: 60 } }));
      });
    });
    const to = (target.address() as AddressInfo).port;
    redirector = await listen((req, res) => {
      req.resume();
      res.writeHead(307, { location: `http://127.0.0.1:${to}${req.url ?? '/'}` });
      res.end();
    });
    dir = await mkdtemp(path.join(os.tmpdir(), 'wirekey-redirect-'));
  });

  afterAll(async () => {
    await new Promise((r) => target?.close(r));
    await new Promise((r) => redirector?.close(r));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function secretFile(name: string, content: string): Promise<string> {
    const file = path.join(dir, name);
    await writeFile(file, content, { mode: 0o600 });
    await chmod(file, 0o600);
    return file;
  }

  it.each(['token', 'approle'] as const)('a 307 on %s login is an error naming the status, and the Location never sees a secret', async (kind) => {
    const address = `http://127.0.0.1:${(redirector.address() as AddressInfo).port}`;
    const auth =
      kind === 'token'
        ? { token: { file: await secretFile('token', TOKEN) } }
        : { approle: { roleIdFile: await secretFile('role-id', 'role'), secretIdFile: await secretFile('secret-id', SECRET_ID) } };
    const lines: string[] = [];
    const conn = new VaultConnection({ name: 'redir', address, auth }, { log: createLogger('debug', (l) => lines.push(l)) });
    const err = (await conn.start().catch((e: unknown) => e)) as VaultError;
    await conn.close();
    expect(err).toBeInstanceOf(VaultError);
    expect(err.status).toBe(307);
    expect(err.message).toMatch(/^vault connection "redir": (GET auth\/token\/lookup-self|POST auth\/approle\/login) failed: HTTP 307: .*redirected \(HTTP 307\); redirects are not followed/);
    expect(seen).toEqual([]);
    for (const text of [err.message, ...lines]) {
      expect(text).not.toContain(TOKEN);
      expect(text).not.toContain(SECRET_ID);
    }
  });
});
