import crypto from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { chmod, link, lstat, mkdir, open, rename, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import * as x509 from '@peculiar/x509';
import { ProxyTlsError } from '../errors.js';
import { normalizeHostName } from './client-hello.js';

x509.cryptoProvider.set(crypto.webcrypto as unknown as Crypto);

const HOUR_MS = 60 * 60 * 1000;
const DAY_MS = 24 * HOUR_MS;
const CA_VALIDITY_YEARS = 10;
/** Short-lived leaves, each with a key of its own, limit the damage of a leaked leaf key; the CA re-mints freely. */
const LEAF_VALIDITY_MS = 7 * DAY_MS;
/** Clients whose clock runs a little behind must still accept a fresh leaf. */
const LEAF_BACKDATE_MS = HOUR_MS;
const LEAF_RENEW_BEFORE_MS = DAY_MS;
const DEFAULT_MAX_CACHED_LEAVES = 1024;

const EC_KEY_ALGORITHM: EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING_ALGORITHM: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };

export interface LocalCaOptions {
  /**
   * How many host names keep a minted leaf in memory; the least recently
   * used is dropped beyond this. Host names come from workloads' SNI, so the
   * cache must not grow without bound. Default 1024.
   */
  maxCachedLeaves?: number;
  /**
   * How long a CA key found without its certificate waits for it (ms): a
   * process creating the CA at that moment writes the certificate just
   * after the key. Default 5000.
   */
  certificateWaitMs?: number;
}

/** A leaf certificate and its private key, both PEM. */
export interface LeafCertificate {
  certPem: string;
  keyPem: string;
}

interface MintedLeaf extends LeafCertificate {
  context: tls.SecureContext;
  /** When a request should stop using this leaf and mint a new one (epoch ms). */
  renewAt: number;
}

interface CacheEntry {
  promise: Promise<MintedLeaf>;
  /** Set once minted: from then on, a request past this time mints anew. */
  renewAt: number | undefined;
}

/** 16 random bytes with the top bit clear: a positive DER INTEGER of full length. */
function randomSerialHex(): string {
  const bytes = crypto.randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

function describeMode(st: Stats): string {
  return `0${(st.mode & 0o777).toString(8).padStart(3, '0')}`;
}

async function existsNoFollow(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new ProxyTlsError(`cannot inspect ${file}`, { cause: err });
  }
}

/**
 * Reads a file after checking, on the opened descriptor, that it is a
 * regular file; `check` sees the same inode that is then read.
 */
async function readChecked(file: string, check: (st: Stats) => void): Promise<Buffer> {
  let handle;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    throw new ProxyTlsError(`cannot open ${file}`, { cause: err });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new ProxyTlsError(`${file} is not a regular file`);
    check(st);
    return await handle.readFile();
  } catch (err) {
    if (err instanceof ProxyTlsError) throw err;
    throw new ProxyTlsError(`cannot read ${file}`, { cause: err });
  } finally {
    await handle.close();
  }
}

/**
 * Writes `data` to a fresh temporary file in the target's directory with
 * exactly `mode` (umask notwithstanding) and fsyncs it. Renaming it into place
 * is left to the caller, so a crash never leaves a partially written file
 * under the final name.
 */
async function writeTemp(target: string, data: string, mode: number): Promise<string> {
  const temp = `${target}.tmp-${crypto.randomBytes(6).toString('hex')}`;
  const handle = await open(
    temp,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    mode,
  );
  try {
    await handle.chmod(mode);
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await unlink(temp).catch(() => {});
    throw err;
  }
  await handle.close();
  return temp;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function spkiDer(key: crypto.KeyObject): Buffer {
  return crypto.createPublicKey(key).export({ type: 'spki', format: 'der' });
}

/**
 * The host's local certificate authority. Workloads trust its certificate;
 * the proxy terminates their TLS with leaves it mints per host name.
 */
export class LocalCa {
  private readonly leaves = new Map<string, CacheEntry>();

  private constructor(
    private readonly caCert: x509.X509Certificate,
    private readonly caKey: CryptoKey,
    private readonly authorityKeyId: x509.AuthorityKeyIdentifierExtension,
    private readonly maxCachedLeaves: number,
  ) {}

  /**
   * Loads the CA from `dir/ca.key` and `dir/ca.crt`, creating both on first
   * use (and `dir` itself, mode 0700). The key is written 0600 and the
   * certificate 0644, each complete in a temporary file first; the key is
   * put in place with link(), so that of two creators at once (`wirekey ca
   * cert --create` and a first `wirekey run`) one wins and both use its CA.
   *
   * @throws ProxyTlsError when only one of the two files exists; when
   *   `ca.key` is not a regular file, is accessible by group or others, or is
   *   owned by a user other than root or the current one; when the files do
   *   not hold an ECDSA P-256 key and the matching, unexpired CA certificate;
   *   or when the directory or files cannot be read or written.
   */
  static async loadOrCreate(dir: string, options: LocalCaOptions = {}): Promise<LocalCa> {
    const keyPath = path.join(dir, 'ca.key');
    const certPath = path.join(dir, 'ca.crt');
    try {
      const created = await mkdir(dir, { recursive: true, mode: 0o700 });
      // mkdir's mode is filtered by the umask; an existing directory is the
      // operator's choice and left alone.
      if (created !== undefined) await chmod(dir, 0o700);
    } catch (err) {
      throw new ProxyTlsError(`cannot create CA directory ${dir}`, { cause: err });
    }

    let [haveKey, haveCert] = await Promise.all([existsNoFollow(keyPath), existsNoFollow(certPath)]);
    let cert: x509.X509Certificate;
    let key: CryptoKey;
    let created: { cert: x509.X509Certificate; key: CryptoKey } | undefined;
    if (!haveKey && !haveCert) {
      // Another process (or call) may be creating it too: the key goes in with link(), which only one can win.
      created = await createCa(dir, keyPath, certPath);
      if (!created) haveKey = true;
    }
    // A key without its certificate may be a creator's between its two steps.
    if (haveKey && !haveCert) haveCert = await appears(certPath, options.certificateWaitMs ?? CERT_WAIT_MS);
    if (created) {
      ({ cert, key } = created);
    } else if (haveKey && haveCert) {
      ({ cert, key } = await loadCa(keyPath, certPath));
    } else {
      const [present, missing] = haveKey ? [keyPath, certPath] : [certPath, keyPath];
      throw new ProxyTlsError(
        `${present} exists but ${missing} does not; restore ${missing}, or remove ${present} to create a ` +
          'new CA (workloads will then have to trust the new certificate)',
      );
    }

    // Leaves must name the CA key the way the CA names itself, or path
    // building by key identifier fails for CAs made elsewhere.
    const caKeyId = cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
    const authorityKeyId =
      caKeyId !== undefined
        ? new x509.AuthorityKeyIdentifierExtension(caKeyId)
        : await x509.AuthorityKeyIdentifierExtension.create(cert.publicKey);
    return new LocalCa(cert, key, authorityKeyId, options.maxCachedLeaves ?? DEFAULT_MAX_CACHED_LEAVES);
  }

  /** The CA certificate, PEM; what workloads must trust. Never throws. */
  certificatePem(): string {
    return this.caCert.toString('pem');
  }

  /**
   * A leaf certificate for `host` (a DNS name; case-insensitive), minted on
   * first use and cached; concurrent calls for the same host share one
   * minting, and a leaf within a day of expiry is replaced.
   *
   * @throws ProxyTlsError when `host` is not a valid DNS host name (IP
   *   literals and wildcards included), when the CA has expired, or when
   *   minting fails. `renewAt`: when to stop using it (epoch ms), for a
   *   proxy worker thread that keeps its own SecureContext of it.
   */
  async leafFor(host: string): Promise<LeafCertificate & { renewAt: number }> {
    const { certPem, keyPem, renewAt } = await this.entryFor(host);
    return { certPem, keyPem, renewAt };
  }

  /**
   * A TLS secure context serving the leaf for `host`, for use from an
   * SNICallback. Cached along with the leaf.
   *
   * @throws ProxyTlsError as {@link LocalCa.leafFor}.
   */
  async secureContextFor(host: string): Promise<tls.SecureContext> {
    return (await this.entryFor(host)).context;
  }

  private entryFor(host: string): Promise<MintedLeaf> {
    const name = normalizeHostName(host);
    if (name === undefined) {
      return Promise.reject(
        new ProxyTlsError(`cannot mint a certificate for ${JSON.stringify(host.slice(0, 256))}: not a DNS host name`),
      );
    }
    const existing = this.leaves.get(name);
    if (existing !== undefined) {
      this.leaves.delete(name);
      if (existing.renewAt === undefined || Date.now() < existing.renewAt) {
        this.leaves.set(name, existing);
        return existing.promise;
      }
    }
    const entry: CacheEntry = { promise: this.mint(name), renewAt: undefined };
    entry.promise.then(
      (leaf) => {
        entry.renewAt = leaf.renewAt;
      },
      () => {
        // A failure is not cached: the next request tries again.
        if (this.leaves.get(name) === entry) this.leaves.delete(name);
      },
    );
    this.leaves.set(name, entry);
    if (this.leaves.size > this.maxCachedLeaves) {
      const oldest = this.leaves.keys().next().value;
      if (oldest !== undefined) this.leaves.delete(oldest);
    }
    return entry.promise;
  }

  private async mint(name: string): Promise<MintedLeaf> {
    const now = Date.now();
    const caNotAfter = this.caCert.notAfter.getTime();
    if (caNotAfter <= now) {
      throw new ProxyTlsError(`the local CA certificate expired on ${this.caCert.notAfter.toISOString()}`);
    }
    // A leaf outliving its CA would fail verification anyway.
    const notAfter = Math.min(now + LEAF_VALIDITY_MS, caNotAfter);
    // Near CA expiry, renewing a day ahead would mean re-minting on every
    // request; halfway through the remaining life is the fallback.
    const renewAt = Math.max(notAfter - LEAF_RENEW_BEFORE_MS, now + (notAfter - now) / 2);
    try {
      // A key of its own for every leaf, a re-mint's included: one leaked key serves one host name until its leaf expires.
      const leafKeys = (await crypto.webcrypto.subtle.generateKey(EC_KEY_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
      const keyPem = crypto.KeyObject.from(leafKeys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString();
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: randomSerialHex(),
        subject: new x509.Name([{ CN: [name] }]),
        issuer: this.caCert.subjectName,
        notBefore: new Date(now - LEAF_BACKDATE_MS),
        notAfter: new Date(notAfter),
        signingAlgorithm: SIGNING_ALGORITHM,
        publicKey: leafKeys.publicKey,
        signingKey: this.caKey,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
          new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: name }]),
          this.authorityKeyId,
          await x509.SubjectKeyIdentifierExtension.create(leafKeys.publicKey),
        ],
      });
      const certPem = cert.toString('pem');
      const context = tls.createSecureContext({ cert: certPem, key: keyPem });
      return { certPem, keyPem, context, renewAt };
    } catch (err) {
      throw new ProxyTlsError(`cannot mint a leaf certificate for ${name}`, { cause: err });
    }
  }
}

async function loadCa(keyPath: string, certPath: string): Promise<{ cert: x509.X509Certificate; key: CryptoKey }> {
  const keyPem = await readChecked(keyPath, (st) => {
    if ((st.mode & 0o077) !== 0) {
      throw new ProxyTlsError(
        `${keyPath} has mode ${describeMode(st)}; the CA key must not be accessible by group or others (chmod 600)`,
      );
    }
    const euid = process.geteuid?.();
    if (euid !== undefined && st.uid !== 0 && st.uid !== euid) {
      throw new ProxyTlsError(`${keyPath} is owned by uid ${st.uid}; it must be owned by ${euid === 0 ? 'root' : `root or uid ${euid}`}`);
    }
  });
  const certPem = await readChecked(certPath, () => {});

  let keyObject: crypto.KeyObject;
  try {
    keyObject = crypto.createPrivateKey(keyPem);
  } catch {
    // The parser's message never quotes key material, but the cause is not
    // kept anyway: nothing about a private key belongs in a log.
    throw new ProxyTlsError(`${keyPath} does not hold a PEM private key`);
  }
  if (keyObject.asymmetricKeyType !== 'ec' || keyObject.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new ProxyTlsError(`${keyPath} is not an ECDSA P-256 key`);
  }

  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem.toString('utf8'));
  } catch (err) {
    throw new ProxyTlsError(`${certPath} does not hold a PEM certificate`, { cause: err });
  }
  if (!Buffer.from(cert.publicKey.rawData).equals(spkiDer(keyObject))) {
    throw new ProxyTlsError(`${certPath} does not match the key in ${keyPath}`);
  }
  if (cert.getExtension(x509.BasicConstraintsExtension)?.ca !== true) {
    throw new ProxyTlsError(`${certPath} is not a CA certificate (basicConstraints CA is not set)`);
  }
  if (cert.notAfter.getTime() <= Date.now()) {
    throw new ProxyTlsError(
      `${certPath} expired on ${cert.notAfter.toISOString()}; remove ca.key and ca.crt to create a new CA`,
    );
  }

  const key = await crypto.webcrypto.subtle.importKey(
    'pkcs8',
    keyObject.export({ type: 'pkcs8', format: 'der' }),
    EC_KEY_ALGORITHM,
    false,
    ['sign'],
  );
  return { cert, key: key as CryptoKey };
}

async function createCa(
  dir: string,
  keyPath: string,
  certPath: string,
): Promise<{ cert: x509.X509Certificate; key: CryptoKey } | undefined> {
  const keys = (await crypto.webcrypto.subtle.generateKey(EC_KEY_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
  const notBefore = new Date(Date.now() - LEAF_BACKDATE_MS);
  const notAfter = new Date(notBefore);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + CA_VALIDITY_YEARS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialHex(),
    name: new x509.Name([{ CN: [`wirekey local CA ${os.hostname()}`] }]),
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING_ALGORITHM,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const keyPem = crypto.KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString();

  // Both files are complete on disk before either appears under its final
  // name. The key goes first, with link(), which fails if a key is there:
  // of two creators at once, one wins and the other uses its CA (undefined).
  const temps: string[] = [];
  try {
    temps.push(await writeTemp(keyPath, keyPem, 0o600));
    temps.push(await writeTemp(certPath, cert.toString('pem'), 0o644));
    try {
      await link(temps[0]!, keyPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return undefined;
      throw err;
    }
    await rename(temps[1]!, certPath);
    await syncDir(dir);
  } catch (err) {
    throw new ProxyTlsError(`cannot write the local CA to ${dir}`, { cause: err });
  } finally {
    await Promise.all(temps.map((t) => unlink(t).catch(() => {})));
  }
  return { cert, key: keys.privateKey };
}

/** How long a CA key may wait for its certificate by default: a creator takes milliseconds between the two. */
const CERT_WAIT_MS = 5000;

/** Whether `file` exists, or comes to within `waitMs` (polled: another process writes it). */
async function appears(file: string, waitMs: number): Promise<boolean> {
  const until = Date.now() + waitMs;
  while (!(await existsNoFollow(file))) {
    if (Date.now() >= until) return false;
    await sleep(20);
  }
  return true;
}
