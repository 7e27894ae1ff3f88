/**
 * Applying a policy: Vault connections log in together and sources are
 * read together (one slow server does not hold up the others), and each
 * failure names its connection and where the policy defines it.
 *
 * The Vault API here is a stand-in: a loopback HTTP server that answers
 * the few calls these tests make, and holds the requests of a test until
 * all of them have arrived, so a test can only pass when they were in
 * flight at the same time.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CredentialSources } from '../../controller/credentials/sources.js';
import { compilePolicy } from '../../controller/policy/compile.js';
import { parsePolicyText } from '../../controller/policy/parse.js';
import type { Plan } from '../../controller/policy/types.js';
import { createLogger } from '../../controller/log.js';
import { WirekeyError } from '../../controller/errors.js';

interface Held {
  path: string;
  token: string | undefined;
  res: http.ServerResponse;
}

/** A stand-in for Vault's HTTP API on loopback: requests are held until `expect` of them arrived, then answered by `answer`. */
class StandInVault {
  readonly server = http.createServer((req, res) => this.#take(req, res));
  #held: Held[] = [];
  #expect = 0;
  #answer: (h: Held) => { status: number; body: unknown } = () => ({ status: 404, body: { errors: [] } });
  /** Most requests held at once. */
  maxHeld = 0;

  /** Holds the next `n` requests (those for which `hold` is true; others are answered at once) until the last arrives. */
  gate(n: number, answer: (h: Held) => { status: number; body: unknown }, hold: (h: Held) => boolean = () => true): void {
    this.#expect = n;
    this.#answer = answer;
    this.#hold = hold;
    this.#held = [];
    this.maxHeld = 0;
  }

  #hold: (h: Held) => boolean = () => true;

  get address(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  #take(req: http.IncomingMessage, res: http.ServerResponse): void {
    req.resume();
    req.on('end', () => {
      const h: Held = { path: (req.url ?? '').replace(/^\/v1\//, ''), token: req.headers['x-vault-token'] as string | undefined, res };
      if (!this.#hold(h)) return this.#send(h);
      this.#held.push(h);
      this.maxHeld = Math.max(this.maxHeld, this.#held.length);
      if (this.#held.length < this.#expect) return;
      const all = this.#held;
      this.#held = [];
      for (const held of all) this.#send(held);
    });
  }

  #send(h: Held): void {
    const { status, body } = this.#answer(h);
    h.res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  }
}

const H = 'apiVersion: wirekey.dev/v1alpha1\n';
const LOOKUP = { status: 200, body: { data: { ttl: 0, renewable: false } } };
const DENIED = { status: 403, body: { errors: ['permission denied'] } };

describe('applying a policy with several Vault connections and sources', () => {
  const vault = new StandInVault();
  const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-apply-'));
  const log = createLogger('error', () => {});
  let held: CredentialSources | undefined;

  beforeAll(async () => {
    await new Promise<void>((resolve) => vault.server.listen(0, '127.0.0.1', resolve));
    for (const name of ['a', 'b']) writeFileSync(path.join(dir, `token-${name}`), `tok-${name}`, { mode: 0o600 });
  });
  afterEach(async () => {
    await held?.close();
    held = undefined;
  });
  afterAll(async () => {
    vault.server.closeAllConnections();
    await new Promise((resolve) => vault.server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  /** Connections a and b (token auth, on the stand-in), and `extra` documents. */
  function plan(extra: string[] = []): Plan {
    const docs = ['a', 'b'].map((n) =>
      `${H}kind: VaultConnection\nmetadata: {name: ${n}}\nspec:\n  address: ${vault.address}\n  auth: {token: {file: ${path.join(dir, `token-${n}`)}}}\n`);
    const parsed = parsePolicyText([...docs, ...extra].join('---\n'), 'p.yaml');
    expect(parsed.diagnostics).toEqual([]);
    return compilePolicy({ documents: parsed.documents });
  }

  it('logs the connections in together: the stand-in answers neither login until both have arrived', async () => {
    vault.gate(2, () => LOOKUP);
    held = await CredentialSources.build(plan(), CredentialSources.empty(), log);
    expect(vault.maxHeld).toBe(2);
    expect(held.connections().map((c) => c.name)).toEqual(['a', 'b']);
  });

  it('a login that fails names its connection and its place in the policy', async () => {
    vault.gate(2, (h) => (h.token === 'tok-a' ? DENIED : LOOKUP));
    const err = (await CredentialSources.build(plan(), CredentialSources.empty(), log).catch((e: unknown) => e)) as WirekeyError;
    expect(err).toBeInstanceOf(WirekeyError);
    expect(err.code).toBe('WK_VAULT');
    expect(err.message).toMatch(/^p\.yaml:1:1: vault connection "a": GET auth\/token\/lookup-self failed: HTTP 403: /);
    expect(err.message.split('\n')).toHaveLength(1);
  });

  it('every connection that fails is named, one line each, in the policy\'s order', async () => {
    vault.gate(2, () => DENIED);
    const err = (await CredentialSources.build(plan(), CredentialSources.empty(), log).catch((e: unknown) => e)) as WirekeyError;
    const lines = err.message.split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^p\.yaml:1:1: vault connection "a": GET auth\/token\/lookup-self failed: HTTP 403/);
    expect(lines[1]).toMatch(/^p\.yaml:\d+:1: vault connection "b": GET auth\/token\/lookup-self failed: HTTP 403/);
  });

  it('reads the sources together, and says which could not be read', async () => {
    const source = (name: string, conn: string, kv: string) =>
      `${H}kind: CredentialSource\nmetadata: {name: ${name}}\nspec: {vault: {connection: ${conn}, kv: ${kv}, field: key, refresh: 1s}}\n`;
    const p = plan([source('x', 'a', 'secret/x'), source('y', 'b', 'secret/y')]);
    // Logins are answered at once; the two reads wait for each other.
    vault.gate(2, (h) => {
      if (h.path.startsWith('auth/')) return LOOKUP;
      if (h.path === 'secret/data/x') return { status: 200, body: { data: { data: { key: 'value-x' }, metadata: { version: 1 } } } };
      return { status: 404, body: { errors: [] } };
    }, (h) => !h.path.startsWith('auth/'));
    held = await CredentialSources.build(p, CredentialSources.empty(), log);
    const failed = await held.readAll();
    expect(vault.maxHeld).toBe(2);
    expect([...failed.keys()]).toEqual(['y']);
    expect(failed.get('y')?.message).toMatch(/^credential "y": /);
  });
});
