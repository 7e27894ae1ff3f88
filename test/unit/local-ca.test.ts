import crypto from 'node:crypto';
import { chmod, copyFile, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import * as x509 from '@peculiar/x509';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ProxyTlsError } from '../../controller/errors.js';
import { LocalCa } from '../../controller/tls/local-ca.js';

x509.cryptoProvider.set(crypto.webcrypto as unknown as Crypto);

const DAY_MS = 24 * 60 * 60 * 1000;

let root: string;
let dir: string;

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'wirekey-ca-'));
  dir = path.join(root, 'state', 'ca');
});

afterEach(async () => {
  vi.useRealTimers();
  await rm(root, { recursive: true, force: true });
});

async function expectRefusal(promise: Promise<unknown>, message: RegExp): Promise<void> {
  const err = await promise.then(
    () => new Error('expected a ProxyTlsError'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ProxyTlsError);
  expect((err as ProxyTlsError).code).toBe('WK_PROXY_TLS');
  expect((err as Error).message).toMatch(message);
}

/** A TLS server that terminates with leaves from `ca`, chosen by SNI. */
async function startServer(sni: (servername: string) => Promise<tls.SecureContext>): Promise<tls.Server> {
  const server = tls.createServer(
    {
      SNICallback: (servername, cb) => {
        sni(servername).then((ctx) => cb(null, ctx), (err: Error) => cb(err));
      },
    },
    (socket) => socket.end('hello from wirekey'),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

/** Connects and returns what the server sent, or rejects with the TLS error. */
function fetchGreeting(port: number, options: tls.ConnectionOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...options });
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (data += chunk));
    socket.on('end', () => resolve(data));
    socket.on('error', reject);
  });
}

describe('LocalCa.loadOrCreate', () => {
  it('creates the CA once with the right modes and reuses it', async () => {
    const first = await LocalCa.loadOrCreate(dir);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(dir, 'ca.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(dir, 'ca.crt'))).mode & 0o777).toBe(0o644);
    expect((await readdir(dir)).sort()).toEqual(['ca.crt', 'ca.key']);

    const keyBytes = await readFile(path.join(dir, 'ca.key'));
    const certBytes = await readFile(path.join(dir, 'ca.crt'));
    expect(certBytes.toString()).toBe(first.certificatePem());

    const second = await LocalCa.loadOrCreate(dir);
    expect(second.certificatePem()).toBe(first.certificatePem());
    expect(await readFile(path.join(dir, 'ca.key'))).toEqual(keyBytes);
    expect(await readFile(path.join(dir, 'ca.crt'))).toEqual(certBytes);
  });

  it('writes exact modes whatever the umask', async () => {
    let previous: number;
    try {
      previous = process.umask(0o077);
    } catch {
      return; // umask cannot be changed from a worker thread
    }
    try {
      await LocalCa.loadOrCreate(dir);
    } finally {
      process.umask(previous);
    }
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(dir, 'ca.crt'))).mode & 0o777).toBe(0o644);
    expect((await stat(path.join(dir, 'ca.key'))).mode & 0o777).toBe(0o600);
  });

  it('mints a P-256 CA certificate with the agreed profile', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    const cert = new x509.X509Certificate(ca.certificatePem());
    expect(cert.subject).toBe(`CN=wirekey local CA ${os.hostname()}`);
    expect(cert.issuer).toBe(cert.subject);
    expect(await cert.isSelfSigned()).toBe(true);
    expect(cert.publicKey.algorithm).toMatchObject({ name: 'ECDSA', namedCurve: 'P-256' });

    const bc = cert.getExtension(x509.BasicConstraintsExtension);
    expect(bc?.ca).toBe(true);
    expect(bc?.pathLength).toBe(0);
    expect(bc?.critical).toBe(true);
    const ku = cert.getExtension(x509.KeyUsagesExtension);
    expect(ku?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    expect(ku?.critical).toBe(true);
    expect(cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toMatch(/^[0-9a-f]{40}$/);

    const years = (cert.notAfter.getTime() - cert.notBefore.getTime()) / (365.25 * DAY_MS);
    expect(years).toBeGreaterThan(9.99);
    expect(years).toBeLessThan(10.01);
    expect(cert.notBefore.getTime()).toBeLessThanOrEqual(Date.now());

    const serial = cert.serialNumber;
    expect(serial).toMatch(/^[0-7][0-9a-f]{31}$/);
    const other = new x509.X509Certificate((await LocalCa.loadOrCreate(path.join(root, 'other'))).certificatePem());
    expect(other.serialNumber).not.toBe(serial);
  });

  it.each([0o644, 0o640, 0o604, 0o610])('refuses a CA key with mode 0%s', async (mode) => {
    await LocalCa.loadOrCreate(dir);
    await chmod(path.join(dir, 'ca.key'), mode);
    await expectRefusal(LocalCa.loadOrCreate(dir), new RegExp(`ca\\.key has mode 0${mode.toString(8)}`));
  });

  it('refuses when only one of the two files exists', async () => {
    await LocalCa.loadOrCreate(dir);
    const certBytes = await readFile(path.join(dir, 'ca.crt'));
    await rm(path.join(dir, 'ca.crt'));
    // (A key alone waits a moment for a creator's certificate: none comes.)
    await expectRefusal(LocalCa.loadOrCreate(dir, { certificateWaitMs: 0 }), /ca\.key exists but .*ca\.crt does not/);
    // Nothing was regenerated behind the operator's back.
    expect(await readdir(dir)).toEqual(['ca.key']);

    await writeFile(path.join(dir, 'ca.crt'), certBytes, { mode: 0o644 });
    await rm(path.join(dir, 'ca.key'));
    await expectRefusal(LocalCa.loadOrCreate(dir), /ca\.crt exists but .*ca\.key does not/);
  });

  it('two creators at once end with one CA that both use (the key goes in with link(), which one wins)', async () => {
    for (let i = 0; i < 20; i++) {
      const fresh = path.join(root, `race-${i}`);
      const [a, b] = await Promise.all([LocalCa.loadOrCreate(fresh), LocalCa.loadOrCreate(fresh)]);
      expect(a.certificatePem()).toBe(b.certificatePem());
      expect((await LocalCa.loadOrCreate(fresh)).certificatePem()).toBe(a.certificatePem());
      expect((await readdir(fresh)).sort()).toEqual(['ca.crt', 'ca.key']);
    }
  });

  it('refuses a key that does not match the certificate', async () => {
    await LocalCa.loadOrCreate(dir);
    const otherDir = path.join(root, 'other');
    await LocalCa.loadOrCreate(otherDir);
    await copyFile(path.join(otherDir, 'ca.key'), path.join(dir, 'ca.key'));
    await expectRefusal(LocalCa.loadOrCreate(dir), /does not match the key/);
  });

  it('refuses files that are not a key and a CA certificate', async () => {
    await LocalCa.loadOrCreate(dir);
    const keyPath = path.join(dir, 'ca.key');
    const certPath = path.join(dir, 'ca.crt');
    const goodKey = await readFile(keyPath);

    await writeFile(keyPath, 'not a key', { mode: 0o600 });
    await expectRefusal(LocalCa.loadOrCreate(dir), /does not hold a PEM private key/);

    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    await writeFile(keyPath, rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    await expectRefusal(LocalCa.loadOrCreate(dir), /not an ECDSA P-256 key/);

    await writeFile(keyPath, goodKey, { mode: 0o600 });
    await writeFile(certPath, 'garbage');
    await expectRefusal(LocalCa.loadOrCreate(dir), /does not hold a PEM certificate/);
  });

  it('refuses a matching certificate that is not a CA', async () => {
    await LocalCa.loadOrCreate(dir);
    const keyObject = crypto.createPrivateKey(await readFile(path.join(dir, 'ca.key')));
    const privateKey = await crypto.webcrypto.subtle.importKey(
      'pkcs8',
      keyObject.export({ type: 'pkcs8', format: 'der' }),
      { name: 'ECDSA', namedCurve: 'P-256' },
      false,
      ['sign'],
    );
    const publicKey = await crypto.webcrypto.subtle.importKey(
      'spki',
      crypto.createPublicKey(keyObject).export({ type: 'spki', format: 'der' }),
      { name: 'ECDSA', namedCurve: 'P-256' },
      true,
      ['verify'],
    );
    const notCa = await x509.X509CertificateGenerator.createSelfSigned({
      name: 'CN=not a ca',
      keys: { privateKey, publicKey } as CryptoKeyPair,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
    });
    await writeFile(path.join(dir, 'ca.crt'), notCa.toString('pem'));
    await expectRefusal(LocalCa.loadOrCreate(dir), /not a CA certificate/);
  });
});

describe('LocalCa leaves', () => {
  it('mints leaves with the agreed profile, signed by the CA', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    const { certPem, keyPem } = await ca.leafFor('API.Example.Test');
    const leaf = new x509.X509Certificate(certPem);
    const caCert = new x509.X509Certificate(ca.certificatePem());

    expect(await leaf.verify({ publicKey: caCert.publicKey, signatureOnly: true })).toBe(true);
    expect(leaf.issuer).toBe(caCert.subject);
    expect(leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON()).toEqual([
      { type: 'dns', value: 'api.example.test' },
    ]);
    expect(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([x509.ExtendedKeyUsage.serverAuth]);
    expect(leaf.getExtension(x509.KeyUsagesExtension)?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    const bc = leaf.getExtension(x509.BasicConstraintsExtension);
    expect(bc?.ca).toBe(false);
    expect(bc?.critical).toBe(true);
    expect(leaf.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(
      caCert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
    );
    const now = Date.now();
    expect(leaf.notBefore.getTime()).toBeGreaterThan(now - 61 * 60 * 1000);
    expect(leaf.notBefore.getTime()).toBeLessThan(now - 59 * 60 * 1000);
    expect(Math.abs(leaf.notAfter.getTime() - (now + 7 * DAY_MS))).toBeLessThan(60 * 1000);
    expect(leaf.serialNumber).toMatch(/^[0-7][0-9a-f]{31}$/);

    // The key is the one the certificate certifies.
    const spki = crypto.createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
    expect(Buffer.from(leaf.publicKey.rawData).equals(spki)).toBe(true);
    // And Node's own X.509 agrees on the chain.
    expect(new crypto.X509Certificate(certPem).checkIssued(new crypto.X509Certificate(ca.certificatePem()))).toBe(true);
  });

  it('mints once for concurrent requests for the same host', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    const leaves = await Promise.all([
      ...Array.from({ length: 10 }, () => ca.leafFor('api.example.test')),
      ...Array.from({ length: 10 }, () => ca.leafFor('API.EXAMPLE.TEST')),
    ]);
    expect(new Set(leaves.map((l) => l.certPem)).size).toBe(1);
    const contexts = await Promise.all(Array.from({ length: 5 }, () => ca.secureContextFor('api.example.test')));
    expect(new Set(contexts).size).toBe(1);
    const other = await ca.leafFor('other.example.test');
    expect(other.certPem).not.toBe(leaves[0]!.certPem);
    // A key of its own: a leaked leaf key serves one host name.
    const spki = (pem: string) => Buffer.from(new x509.X509Certificate(pem).publicKey.rawData).toString('hex');
    expect(spki(other.certPem)).not.toBe(spki(leaves[0]!.certPem));
    expect(other.keyPem).not.toBe(leaves[0]!.keyPem);
    expect((await ca.leafFor('api.example.test')).certPem).toBe(leaves[0]!.certPem);
  });

  it('re-mints a leaf within a day of its expiry', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const start = Date.now();
    const ca = await LocalCa.loadOrCreate(dir);
    const first = await ca.leafFor('api.example.test');
    vi.setSystemTime(start + 5 * DAY_MS);
    expect((await ca.leafFor('api.example.test')).certPem).toBe(first.certPem);
    vi.setSystemTime(start + 6 * DAY_MS + 60_000);
    const renewed = await ca.leafFor('api.example.test');
    expect(renewed.certPem).not.toBe(first.certPem);
    // The re-mint has a new key too.
    expect(renewed.keyPem).not.toBe(first.keyPem);
    const spki = (pem: string) => Buffer.from(new x509.X509Certificate(pem).publicKey.rawData).toString('hex');
    expect(spki(renewed.certPem)).not.toBe(spki(first.certPem));
    const notAfter = new x509.X509Certificate(renewed.certPem).notAfter.getTime();
    expect(notAfter).toBeGreaterThan(start + 13 * DAY_MS);
    expect((await ca.leafFor('api.example.test')).certPem).toBe(renewed.certPem);
  });

  it('refuses names that are not DNS host names', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    for (const host of ['', '10.0.0.1', '::1', '*.example.test', 'bad host', 'a..b', 'trailing.dot.']) {
      await expectRefusal(ca.leafFor(host), /not a DNS host name/);
      await expectRefusal(ca.secureContextFor(host), /not a DNS host name/);
    }
  });

  it('bounds the leaf cache', async () => {
    const ca = await LocalCa.loadOrCreate(dir, { maxCachedLeaves: 2 });
    const a = await ca.leafFor('a.example.test');
    await ca.leafFor('b.example.test');
    expect((await ca.leafFor('a.example.test')).certPem).toBe(a.certPem);
    await ca.leafFor('c.example.test'); // evicts b, the least recently used
    expect((await ca.leafFor('a.example.test')).certPem).toBe(a.certPem);
    const b2 = await ca.leafFor('b.example.test'); // evicts c
    expect(b2.certPem).toBeDefined();
    await ca.leafFor('d.example.test'); // evicts a
    expect((await ca.leafFor('a.example.test')).certPem).not.toBe(a.certPem);
  });
});

describe('LocalCa with real TLS', () => {
  let server: tls.Server | undefined;

  afterEach(async () => {
    if (server) await new Promise((resolve) => server!.close(resolve));
    server = undefined;
  });

  it('serves SNI-selected leaves that a client trusting only the CA accepts', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    server = await startServer((name) => ca.secureContextFor(name));
    const { port } = server.address() as net.AddressInfo;

    for (const servername of ['api.example.test', 'other.example.test']) {
      const greeting = await fetchGreeting(port, { servername, ca: [ca.certificatePem()] });
      expect(greeting).toBe('hello from wirekey');
    }
  });

  it('fails verification for a client that trusts only the system CAs', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    server = await startServer((name) => ca.secureContextFor(name));
    const { port } = server.address() as net.AddressInfo;
    await expect(fetchGreeting(port, { servername: 'api.example.test' })).rejects.toMatchObject({
      code: expect.stringMatching(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY/),
    });
  });

  it('fails verification when the leaf names a different host than the client asked for', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    server = await startServer(() => ca.secureContextFor('api.example.test'));
    const { port } = server.address() as net.AddressInfo;
    await expect(
      fetchGreeting(port, { servername: 'evil.example.test', ca: [ca.certificatePem()] }),
    ).rejects.toMatchObject({ code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    // The same server is fine for the name it serves.
    expect(await fetchGreeting(port, { servername: 'api.example.test', ca: [ca.certificatePem()] })).toBe(
      'hello from wirekey',
    );
  });

  it('fails verification against a different wirekey CA', async () => {
    const ca = await LocalCa.loadOrCreate(dir);
    const stranger = await LocalCa.loadOrCreate(path.join(root, 'stranger'));
    server = await startServer((name) => ca.secureContextFor(name));
    const { port } = server.address() as net.AddressInfo;
    await expect(
      fetchGreeting(port, { servername: 'api.example.test', ca: [stranger.certificatePem()] }),
    ).rejects.toMatchObject({ code: expect.stringMatching(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|CERT_SIGNATURE_FAILURE/) });
  });
});
