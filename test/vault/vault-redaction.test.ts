/**
 * At debug level, no secret reaches a log line, an error, or the text form
 * of any object that holds one: canary values for the KV secret, the AWS
 * secret key, the AppRole role and secret ids and a token file's token are
 * looked for in everything the connection and the sources logged, in the
 * errors they threw, in JSON.stringify / util.inspect of the objects, and in
 * node-vault's own debug output (turned on, and expected to stay silent).
 */
import { createRequire } from 'node:module';
import util from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { VaultConnection } from '../../controller/credentials/vault/vault-connection.js';
import { VaultKvSource } from '../../controller/credentials/vault/vault-kv-source.js';
import { VaultLeaseSource } from '../../controller/credentials/vault/vault-lease-source.js';
import { startMoto, type MotoServer } from '../support/moto.js';
import { startOpenBao, type OpenBaoServer } from '../support/openbao.js';
import { AGENT_POLICY, baoBinary, captureLog, eventually, secretDir, skipReason } from './fixture.js';

describe.skipIf(!baoBinary)(`Vault credentials: no secret in logs, errors or serialisations${skipReason}`, () => {
  let bao: OpenBaoServer;
  let moto: MotoServer;
  let files: Awaited<ReturnType<typeof secretDir>>;

  beforeAll(async () => {
    // Dev mode (storage in memory) here: nothing in this test restarts the server.
    [bao, moto] = await Promise.all([startOpenBao({ binary: baoBinary as string, storage: 'dev' }), startMoto()]);
    files = await secretDir();
  });

  afterAll(async () => {
    await bao?.destroy();
    await moto?.stop();
    await files?.remove();
  });

  it('no canary appears anywhere at debug level', async () => {
    const kvCanary = 'CANARY-kv-3f1e9a7c5b';
    const kvCanary2 = 'CANARY-kv-v2-8d2c4e6a';
    const admin = await moto.createIamUser('wirekey-admin');
    await bao.writePolicy('agent', AGENT_POLICY);
    await bao.enableAws({ motoUrl: moto.url, accessKey: admin.accessKeyId, secretKey: admin.secretAccessKey, role: 'billing', lease: '3s', leaseMax: '1h' });
    await bao.writeKv('canary', { api_key: kvCanary, other: 'CANARY-other-field-1b2c' });
    const { roleId, secretId } = await bao.appRole('agent', ['agent'], { tokenTtl: '3s', tokenMaxTtl: '1h' });
    const fileToken = (await bao.api('POST', 'auth/token/create', { policies: ['agent'], ttl: '3s' })).auth.client_token as string;
    const canaries = [kvCanary, kvCanary2, 'CANARY-other-field-1b2c', roleId, secretId, fileToken, admin.secretAccessKey];

    // node-vault's own debug channel, on, with stderr watched.
    const debugModule = createRequire(createRequire(import.meta.url).resolve('node-vault'))('debug') as { enable(ns: string): void; disable(): string };
    debugModule.enable('node-vault*');
    const stderr: string[] = [];
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation(((chunk: unknown) => {
      stderr.push(String(chunk));
      return true;
    }) as typeof process.stderr.write);

    // Control: node-vault left to its own debug output prints request
    // bodies, which is why VaultConnection replaces it. This also proves
    // that the capture below would see a leak.
    const nodeVault = createRequire(import.meta.url)('node-vault') as (o: object) => { write(p: string, d: unknown): Promise<unknown> };
    await nodeVault({ endpoint: bao.addr, token: bao.rootToken }).write('secret/data/control', { data: { k: 'CONTROL-6b1d' } });
    const control = stderr.splice(0).join('');

    const { log, lines } = captureLog();
    const texts: string[] = [];
    const seen = (x: unknown) => {
      texts.push(util.inspect(x, { depth: 10, showHidden: true }), JSON.stringify(x) ?? '', String(x));
    };
    try {
      const approle = new VaultConnection(
        {
          name: 'main',
          address: bao.addr,
          auth: { approle: { roleIdFile: await files.write('role-id', roleId), secretIdFile: await files.write('secret-id', secretId) } },
        },
        { log, backoff: { initialMs: 100, maxMs: 500 } },
      );
      const byToken = new VaultConnection(
        { name: 'by-token', address: bao.addr, auth: { token: { file: await files.write('token', fileToken) } } },
        { log },
      );
      await approle.start();
      await byToken.start();
      seen(approle);
      seen(byToken);

      let clock = Date.now();
      const kv = new VaultKvSource({ name: 'kv-canary', connection: approle, kv: 'secret/canary', field: 'api_key', refreshMs: 200, firstFetchJitterMs: 0, log, now: () => clock });
      const cred = await kv.get();
      expect(cred.secret?.reveal()).toBe(kvCanary);
      seen(cred);
      seen(kv);
      log.debug('a credential logged by mistake: %s %o %j', cred, cred, cred);
      await bao.writeKv('canary', { api_key: kvCanary2 });
      clock += 200; // the refresh is due: the next get() reads again, and logs the new version
      await kv.get();
      await eventually(async () => (await kv.get()).version === '2', 10_000, 'the second KV version');
      expect((await kv.get()).secret?.reveal()).toBe(kvCanary2);

      const aws = new VaultLeaseSource({ name: 'aws-canary', connection: byToken, aws: 'aws/creds/billing', log });
      const awsCred = await aws.get();
      seen(awsCred);
      seen(aws);
      const raw = await approle.read('secret/data/canary');
      seen(raw);
      log.debug('a raw response logged by mistake: %o', raw);
      // Token and lease renewals (3 s TTLs, renewed at about 2 s) log too.
      for (const renewal of ['vault main: token renewed', 'vault by-token: token renewed', /credential aws-canary: lease \S+ renewed/]) {
        await eventually(async () => lines.some((l) => (typeof renewal === 'string' ? l.includes(renewal) : renewal.test(l))), 15_000, `a log line ${renewal}`);
      }

      // Errors: wrong field, wrong secret id.
      const wrongField = new VaultKvSource({ name: 'wrong-field', connection: approle, kv: 'secret/canary', field: 'nope', log });
      const e1 = await wrongField.get().catch((e: unknown) => e);
      const bad = new VaultConnection(
        {
          name: 'bad',
          address: bao.addr,
          auth: { approle: { roleIdFile: await files.write('role-id-bad', roleId), secretIdFile: await files.write('secret-id-bad', `${secretId}x`) } },
        },
        { log },
      );
      const e2 = await bad.start().catch((e: unknown) => e);
      for (const e of [e1, e2]) {
        expect(e).toBeInstanceOf(Error);
        seen(e);
        texts.push(String((e as Error).stack));
      }

      await aws.close();
      await kv.close();
      await approle.close();
      await byToken.close();
    } finally {
      spy.mockRestore();
      debugModule.disable();
    }

    expect(control).toContain('CONTROL-6b1d');
    expect(lines.length).toBeGreaterThan(5);
    expect(lines.some((l) => l.includes(' debug '))).toBe(true);
    const everything = [...lines, ...texts, ...stderr].join('\n');
    for (const c of canaries) expect(everything).not.toContain(c);
    // The secret id with an extra character is not leaked either.
    expect(everything).not.toContain(secretId.slice(0, 12));
    expect(stderr.filter((s) => s.includes('node-vault'))).toEqual([]);
  });
});
