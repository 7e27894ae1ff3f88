/** VaultConnection and Vault credential sources in policy: shapes, rules, compiled form. */
import { describe, expect, it } from 'vitest';
import { parsePolicyText } from '../../controller/policy/parse.js';
import { checkPolicy } from '../../controller/policy/check.js';
import { compilePolicy, parseDuration } from '../../controller/policy/compile.js';

const CONNECTION = `apiVersion: wirekey.dev/v1alpha1
kind: VaultConnection
metadata: {name: main}
spec:
  address: https://vault.internal:8200
  tls: {caFile: /etc/wirekey/vault-ca.pem}
  auth: {approle: {roleIdFile: /etc/wirekey/role-id, secretIdFile: /etc/wirekey/secret-id}}
`;

const source = (name: string, vault: string) => `---
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: ${name}}
spec: {vault: ${vault}}
`;

function problems(text: string): string[] {
  const { documents, diagnostics } = parsePolicyText(text, 'p.yaml');
  return (diagnostics.length ? diagnostics : checkPolicy({ documents })).map((d) => `${d.line}:${d.column}: ${d.message}`);
}

describe('Vault in policy', () => {
  it('compiles connections and each kind of Vault read', () => {
    const text = CONNECTION +
      source('openai', '{connection: main, kv: secret/openai, field: api_key, refresh: 30s}') +
      source('pinned', '{connection: main, kv: kv/team/app, field: token, version: 3}') +
      source('aws-billing', '{connection: main, aws: aws/creds/billing}') +
      source('db', '{connection: main, path: database/creds/ro, field: password}');
    expect(problems(text)).toEqual([]);
    const plan = compilePolicy({ documents: parsePolicyText(text, 'p.yaml').documents });
    expect(plan.vaultConnections.get('main')).toMatchObject({ address: 'https://vault.internal:8200', auth: { approle: { roleIdFile: '/etc/wirekey/role-id' } } });
    expect(plan.credentials.get('openai')?.vault).toEqual({ kind: 'kv', connection: 'main', mount: 'secret', path: 'openai', field: 'api_key', refreshMs: 30_000 });
    expect(plan.credentials.get('pinned')?.vault).toEqual({ kind: 'kv', connection: 'main', mount: 'kv', path: 'team/app', field: 'token', version: 3, refreshMs: 300_000 });
    expect(plan.credentials.get('aws-billing')?.vault).toEqual({ kind: 'aws', connection: 'main', path: 'aws/creds/billing' });
    expect(plan.credentials.get('db')?.vault).toEqual({ kind: 'leased', connection: 'main', path: 'database/creds/ro', field: 'password' });
  });

  it('names what is wrong, where', () => {
    const text = CONNECTION +
      source('a', '{connection: nope, kv: secret/a, field: f}') +
      source('b', '{connection: main, kv: secret/b}') +
      source('c', '{connection: main, aws: aws/creds/x, field: f}') +
      source('d', '{connection: main, kv: secret/d, aws: aws/creds/d, field: f}') +
      source('e', '{connection: main, aws: aws/creds/e, refresh: 1m}');
    expect(problems(text)).toEqual([
      '12:28: CredentialSource "a": spec.vault.connection: no VaultConnection named "nope"',
      '17:38: CredentialSource "b": spec.vault: kv needs a field: the key of the value to inject',
      '22:59: CredentialSource "c": spec.vault: aws yields access key, secret key and session token together; remove field',
      '27:15: CredentialSource "d": spec.vault: set exactly one of kv, aws and path',
      '32:61: CredentialSource "e": spec.vault: refresh applies to kv only (leased secrets follow their lease)',
    ]);
  });

  it('checks shapes with the schema', () => {
    const bad = `apiVersion: wirekey.dev/v1alpha1
kind: VaultConnection
metadata: {name: main}
spec: {address: vault.internal, auth: {approle: {roleIdFile: /r}, token: {file: /t}}}
` + source('x', '{connection: main, kv: secret, field: f, refresh: 5 minutes}');
    expect(problems(bad)).toEqual([
      '4:17: VaultConnection "main": spec.address: must be a URL such as https://vault.internal:8200',
      '4:39: VaultConnection "main": spec.auth: must set only one of token, approle, jwt, kubernetes',
      '4:49: VaultConnection "main": missing required field "spec.auth.approle.secretIdFile"',
      '9:38: CredentialSource "x": spec.vault.kv: must be MOUNT/PATH, such as secret/openai',
      '9:65: CredentialSource "x": spec.vault.refresh: must be a duration such as 30s, 5m or 1h',
    ]);
  });

  it('allows plaintext http:// to loopback only', () => {
    const conn = (name: string, address: string) => `---
apiVersion: wirekey.dev/v1alpha1
kind: VaultConnection
metadata: {name: ${name}}
spec:
  address: ${address}
  auth: {token: {file: /etc/wirekey/token}}
`;
    const text = conn('v4', 'http://127.0.0.1:8200') + conn('v6', 'http://[::1]:8200') + conn('name', 'http://localhost:8200') +
      conn('tls', 'https://vault.internal:8200') + conn('remote', 'http://vault.internal:8200') + conn('lan', 'http://10.0.0.5:8200') +
      conn('userinfo', 'http://127.0.0.1@vault.internal:8200');
    expect(problems(text)).toEqual([
      '34:12: VaultConnection "remote": spec.address: plaintext http:// is only allowed to a loopback address (127.0.0.0/8, ::1, localhost), not vault.internal; use https://',
      '41:12: VaultConnection "lan": spec.address: plaintext http:// is only allowed to a loopback address (127.0.0.0/8, ::1, localhost), not 10.0.0.5; use https://',
      '48:12: VaultConnection "userinfo": spec.address: plaintext http:// is only allowed to a loopback address (127.0.0.0/8, ::1, localhost), not vault.internal; use https://',
    ]);
  });

  it('parses durations', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('2h')).toBe(7_200_000);
    expect(() => parseDuration('5 minutes')).toThrow(RangeError);
  });
});
