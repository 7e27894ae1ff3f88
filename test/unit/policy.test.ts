import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { PolicyError, type PolicyDiagnostic } from '../../controller/errors.js';
import { compilePolicy } from '../../controller/policy/compile.js';
import { lintPolicyPath, loadPolicy, validatePolicyPath } from '../../controller/policy/load.js';
import { parsePolicyText } from '../../controller/policy/parse.js';
import { ownedCopy, removeCopy } from '../support/paths.js';

// Copies this process owns: the repository may be another user's (see ownedCopy).
const EXAMPLES = ownedCopy('policies/examples');
afterAll(() => removeCopy(EXAMPLES));
const EXAMPLE = join(EXAMPLES, 'openai-bearer.yaml');
const KERNEL_EXAMPLE = join(EXAMPLES, 'plaintext-kernel.yaml');
const EGRESS_EXAMPLE = join(EXAMPLES, 'egress.yaml');
const SCHEMA = fileURLToPath(new URL('../../policies/wirekey.schema.json', import.meta.url));

const HEADER = 'apiVersion: wirekey.dev/v1alpha1\n';

const VALID = `${HEADER}kind: CredentialSource
metadata: {name: openai-key}
spec: {file: {path: /etc/wirekey/openai-key}}
---
${HEADER}kind: Service
metadata: {name: openai}
spec:
  hosts: [API.OpenAI.com., api.openai.com]
  port: 443
  tls: true
---
${HEADER}kind: Workload
metadata: {name: zeta}
spec: {selector: {cgroup: "wirekey-demo//app/"}}
---
${HEADER}kind: Workload
metadata: {name: alpha}
spec: {selector: {cgroup: /system.slice/billing.service}}
---
${HEADER}kind: Binding
metadata: {name: zeta-openai}
spec:
  workload: zeta
  service: openai
  inject: {bearer: {credential: openai-key}}
---
`;

const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A temporary policy directory holding `files` (name -> text). */
async function policyDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'wirekey-policy-'));
  dirs.push(dir);
  await Promise.all(Object.entries(files).map(([name, text]) => writeFile(join(dir, name), text)));
  return dir;
}

/** Diagnostics as `file:line:column: message`, with file names relative to `dir`. */
function render(dir: string, diagnostics: PolicyDiagnostic[]): string[] {
  return diagnostics.map((d) => `${relative(dir, d.file)}:${d.line}:${d.column}: ${d.message}`);
}

async function problems(files: Record<string, string>): Promise<string[]> {
  const dir = await policyDir(files);
  return render(dir, await validatePolicyPath(dir));
}

describe('loadPolicy', () => {
  it('loads and compiles a valid multi-document file', async () => {
    const dir = await policyDir({ 'policy.yaml': VALID });
    const { policy, files } = await loadPolicy(dir);
    expect(files).toEqual([join(dir, 'policy.yaml')]);
    expect(policy.documents.map((d) => d.kind)).toEqual([
      'CredentialSource',
      'Service',
      'Workload',
      'Workload',
      'Binding',
    ]);
    expect(policy.documents[1]?.source).toEqual({ file: join(dir, 'policy.yaml'), line: 6, column: 1 });

    const plan = compilePolicy(policy);
    expect(plan.credentials.get('openai-key')).toEqual({
      name: 'openai-key',
      file: { path: '/etc/wirekey/openai-key' },
      source: { file: join(dir, 'policy.yaml'), line: 1, column: 1 },
    });
    expect(plan.services.get('openai')).toEqual({ name: 'openai', datapath: 'proxy', hosts: ['api.openai.com'], port: 443, tls: true });
    expect([...plan.workloads.values()]).toEqual([
      { name: 'alpha', id: 1, selector: { cgroup: '/system.slice/billing.service' } },
      { name: 'zeta', id: 2, selector: { cgroup: '/wirekey-demo/app' } },
    ]);
    expect(plan.bindings).toEqual([
      { name: 'zeta-openai', workload: 'zeta', service: 'openai', inject: { kind: 'bearer', credential: 'openai-key' } },
    ]);
  });

  it('reads *.yaml and *.yml files of a directory in name order and ignores others', async () => {
    const [credential, service] = VALID.split('---\n');
    const dir = await policyDir({
      'b.yml': service!,
      'a.yaml': credential!,
      'notes.txt': 'not: [yaml',
      '.#a.yaml': 'editor: lock file',
    });
    await mkdir(join(dir, 'sub.yaml'));
    const { policy, files } = await loadPolicy(dir);
    expect(files).toEqual([join(dir, 'a.yaml'), join(dir, 'b.yml')]);
    expect(policy.documents.map((d) => d.metadata.name)).toEqual(['openai-key', 'openai']);
  });

  it('throws a PolicyError carrying the problems of every file', async () => {
    const dir = await policyDir({
      'a.yaml': `${HEADER}kind: Servise\n`,
      'b.yaml': `${HEADER}kind: Workload\nmetadata: {name: w}\nspce: {}\n`,
    });
    const error = await loadPolicy(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PolicyError);
    const policyError = error as PolicyError;
    expect(policyError.code).toBe('WK_POLICY_INVALID');
    expect(render(dir, policyError.diagnostics)).toEqual([
      'a.yaml:2:7: unknown kind "Servise": did you mean Service? (expected one of VaultConnection, CredentialSource, Service, Workload, Binding)',
      // One mistake, one message: the misspelt spec is not also reported missing.
      'b.yaml:4:1: Workload "w": unknown field "spce": did you mean "spec"? (expected apiVersion, kind, metadata or spec)',
    ]);
    expect(policyError.message).toContain(`${join(dir, 'a.yaml')}:2:7: unknown kind "Servise"`);
  });

  it('reports an empty directory', async () => {
    const dir = await policyDir({});
    expect(render(dir, await validatePolicyPath(dir))).toEqual([
      ':1:1: no policy files (*.yaml or *.yml) in this directory',
    ]);
    await expect(loadPolicy(dir)).rejects.toBeInstanceOf(PolicyError);
  });

  it('reports a path that does not exist', async () => {
    const dir = await policyDir({});
    const missing = join(dir, 'nope.yaml');
    expect(await validatePolicyPath(missing)).toEqual([
      { file: missing, line: 1, column: 1, message: 'cannot read policy: no such file or directory' },
    ]);
  });

  it('ignores empty documents', async () => {
    expect(await problems({ 'p.yaml': '---\n# nothing here\n---\n' + VALID + '---\n' })).toEqual([]);
  });
});

describe('document diagnostics', () => {
  it('reports a YAML syntax error at its position, without echoing the text', async () => {
    const text = `${HEADER}kind: Service\nmetadata: {name: openai\nspec: {port: "sk-SECRET}\n`;
    const found = await problems({ 'p.yaml': text });
    // At the { left open, in words a config file's author knows.
    expect(found).toEqual([
      'p.yaml:3:11: invalid YAML: this { is never closed: end the mapping with } (a {...} that spans lines must indent its continuation lines)',
      'p.yaml:4:14: invalid YAML: this "quoted string is never closed: add the closing "',
    ]);
    expect(found.join('\n')).not.toContain('sk-SECRET');
  });

  it('reports an unknown kind at the kind value', async () => {
    expect(await problems({ 'p.yaml': `${HEADER}kind: Servise\nmetadata: {name: x}\nspec: {}\n` })).toEqual([
      'p.yaml:2:7: unknown kind "Servise": did you mean Service? (expected one of VaultConnection, CredentialSource, Service, Workload, Binding)',
    ]);
  });

  it('reports a missing kind at the document start', async () => {
    expect(await problems({ 'p.yaml': `# comment\n---\n${HEADER}metadata: {name: x}\n` })).toEqual([
      'p.yaml:3:1: missing required field "kind"',
    ]);
  });

  it('reports an unknown field at its key', async () => {
    const text = `${HEADER}kind: Service\nmetadata: {name: openai}\nspec:\n  hosts: [a.example]\n  port: 443\n  tls: true\n  prot: 80\n`;
    expect(await problems({ 'p.yaml': text })).toEqual([
      'p.yaml:8:3: Service "openai": unknown field "spec.prot": did you mean "port"? (expected hosts, addresses, port, tls or datapath)',
    ]);
  });

  it('reports a value of the wrong type once, at the value', async () => {
    const text = `${HEADER}kind: Service\nmetadata: {name: openai}\nspec: {hosts: [a.example], port: "443", tls: yes}\n`;
    expect(await problems({ 'p.yaml': text })).toEqual([
      'p.yaml:4:34: Service "openai": spec.port: must be an integer',
      'p.yaml:4:46: Service "openai": spec.tls: must be true or false',
    ]);
  });

  it('reports an out-of-range port', async () => {
    const text = `${HEADER}kind: Service\nmetadata:\n  name: openai\nspec:\n  hosts: [api.openai.com]\n  port: 65536\n  tls: true\n`;
    expect(await problems({ 'p.yaml': text })).toEqual(['p.yaml:7:9: Service "openai": spec.port: must be <= 65535']);
  });

  it('refuses an integer field written otherwise than in decimal digits, at the value, naming the field', async () => {
    const service = (port: string) => `${HEADER}kind: Service\nmetadata: {name: openai}\nspec:\n  hosts: [api.openai.com]\n  port: ${port}\n  tls: true\n`;
    const cases: [string, string][] = [
      ['0x1bb', 'YAML reads 0x1bb as 443 (write 443 if that is what is meant)'],
      ['0o673', 'YAML reads 0o673 as 443 (write 443 if that is what is meant)'],
      ['1e3', 'YAML reads 1e3 as 1000 (write 1000 if that is what is meant)'],
      ['443.0', 'YAML reads 443.0 as 443 (write 443 if that is what is meant)'],
      ['+443', 'YAML reads +443 as 443 (write 443 if that is what is meant)'],
      // Out of range too: the one message is about how it is written.
      ['0x10000', 'YAML reads 0x10000 as 65536 (write 65536 if that is what is meant)'],
    ];
    for (const [port, reading] of cases) {
      expect(await problems({ 'p.yaml': service(port) }), port).toEqual([
        `p.yaml:6:9: Service "openai": spec.port: must be an integer written in decimal digits: ${reading}`,
      ]);
    }
    // A leading zero: YAML 1.2 reads decimal, YAML 1.1 (and the habits built on it) octal.
    const leading: [string, string][] = [
      ['0673', 'YAML reads 0673 as 673, YAML 1.1 as octal 443 (write 673 or 443, whichever is meant)'],
      ['0443', 'YAML reads 0443 as 443, YAML 1.1 as octal 291 (write 443 or 291, whichever is meant)'],
      ['0080', 'YAML reads 0080 as 80 (write 80 if that is what is meant)'],
    ];
    for (const [port, reading] of leading) {
      expect(await problems({ 'p.yaml': service(port) }), port).toEqual([
        `p.yaml:6:9: Service "openai": spec.port: must be an integer written in decimal digits, without a leading zero: ${reading}`,
      ]);
    }
    expect(await problems({ 'p.yaml': service('443') })).toEqual([]);
    // Not a number a port can be: the type error says so, once.
    expect(await problems({ 'p.yaml': service('443.5') })).toEqual(['p.yaml:6:9: Service "openai": spec.port: must be an integer']);
  });

  it('refuses uids, KV versions and egress ports so written too, through aliases, alongside other problems', async () => {
    const text = `${HEADER}kind: Workload\nmetadata: {name: app}\nspec:\n  selector: {cgroup: /app, uid: 1e3}\n` +
      `  egress:\n    mode: enforce\n    allow:\n      - {cidr: 10.0.0.0/8, ports: [&p 0x50, 8000-8999, *p]}\n` +
      `---\n${HEADER}kind: CredentialSource\nmetadata: {name: k}\nspec: {vault: {connection: v, kv: secret/k, version: 0o2}, unknown: 0x1}\n`;
    expect(await problems({ 'p.yaml': text })).toEqual([
      'p.yaml:5:33: Workload "app": spec.selector.uid: must be an integer written in decimal digits: YAML reads 1e3 as 1000 (write 1000 if that is what is meant)',
      'p.yaml:9:39: Workload "app": spec.egress.allow[0].ports[0]: must be an integer written in decimal digits: YAML reads 0x50 as 80 (write 80 if that is what is meant)',
      // The alias, where it is written.
      'p.yaml:9:56: Workload "app": spec.egress.allow[0].ports[2]: must be an integer written in decimal digits: YAML reads 0x50 as 80 (write 80 if that is what is meant)',
      // An unknown field is one problem, whatever its value.
      expect.stringMatching(/^p\.yaml:14:\d+: CredentialSource "k": unknown field "spec\.unknown"/),
      'p.yaml:14:54: CredentialSource "k": spec.vault.version: must be an integer written in decimal digits: YAML reads 0o2 as 2 (write 2 if that is what is meant)',
    ]);
  });

  it('a number where the schema wants a string keeps its type error, not advice on digits', async () => {
    const text = `${HEADER}kind: Service\nmetadata: {name: 0x1bb}\nspec: {hosts: [api.openai.com], port: 443, tls: true}\n`;
    expect(await problems({ 'p.yaml': text })).toEqual(['p.yaml:3:18: Service: metadata.name: must be a string']);
  });

  it('reports a missing required field at the mapping that lacks it', async () => {
    const text = `${HEADER}kind: Service\nmetadata: {name: openai}\nspec:\n  port: 443\n  tls: true\n`;
    expect(await problems({ 'p.yaml': text })).toEqual([
      'p.yaml:5:3: Service "openai": spec.hosts: a TLS service needs the host names it answers to',
    ]);
  });

  it('reports a bad apiVersion', async () => {
    const text = `apiVersion: wirekey.dev/v1\nkind: Workload\nmetadata: {name: w}\nspec: {selector: {cgroup: /a}}\n`;
    expect(await problems({ 'p.yaml': text })).toEqual([
      'p.yaml:1:13: Workload "w": apiVersion: must be "wirekey.dev/v1alpha1"',
    ]);
  });

  it('words pattern and shape errors for people', () => {
    const text = `${HEADER}kind: Binding
metadata: {name: Billing_OpenAI}
spec:
  workload: billing
  service: openai
  inject: {}
---
${HEADER}kind: Service
metadata: {name: s}
spec: {hosts: ["https://api.openai.com", a.example, a.example], port: 443, tls: false}
---
${HEADER}kind: Workload
metadata: {name: w}
spec: {selector: {cgroup: "/a/../b"}}
---
${HEADER}kind: Workload
metadata: {name: v}
spec: {selector: {}}
---
${HEADER}kind: CredentialSource
metadata: {name: c}
spec: {file: {path: relative/path}}
---
${HEADER}kind: Binding
metadata: {name: b}
spec: {workload: w, service: s, inject: {bearer: {credential: c}, cookie: {}}}
---
${HEADER}kind: Service
metadata: {}
spec: {hosts: [], port: 443, tls: true}
`;
    const messages = parsePolicyText(text, 'p.yaml').diagnostics.map((d) => `${d.line}:${d.column}: ${d.message}`);
    expect(messages).toEqual([
      "3:18: Binding \"Billing_OpenAI\": metadata.name: must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
      '7:11: Binding "Billing_OpenAI": spec.inject: must set at least one of bearer, header, basic, sigv4',
      '12:16: Service "s": spec.hosts[0]: must be a plain DNS host name such as api.example.com (no wildcard, scheme, port or path)',
      '12:53: Service "s": spec.hosts[2]: duplicate of spec.hosts[1]',
      `17:27: Workload "w": spec.selector.cgroup: must be a cgroup v2 path relative to the cgroup root, without '..' segments or control characters`,
      '22:18: Workload "v": spec.selector: must set at least one of cgroup, systemdUnit, executable, user, uid',
      '27:21: CredentialSource "c": spec.file.path: must be an absolute path',
      '32:67: Binding "b": unknown field "spec.inject.cookie" (expected bearer, header, basic or sigv4)',
      '36:11: Service: missing required field "metadata.name"',
      '37:15: Service: spec.hosts: must not be empty',
    ]);
  });
});

describe('cross-document checks', () => {
  it('reports a duplicate name across two files at the second one, naming the first', async () => {
    const workload = `${HEADER}kind: Workload\nmetadata:\n  name: billing\nspec: {selector: {cgroup: /a}}\n`;
    const dir = await policyDir({ 'a.yaml': workload, 'b.yaml': `# second\n${workload}` });
    expect(render(dir, await validatePolicyPath(dir))).toEqual([
      `b.yaml:5:9: duplicate Workload "billing": already defined at ${join(dir, 'a.yaml')}:4`,
    ]);
  });

  it('allows the same name in different kinds', async () => {
    const text = VALID.replace('name: zeta}', 'name: openai}').replace('workload: zeta', 'workload: openai');
    expect(await problems({ 'p.yaml': text })).toEqual([]);
  });

  it('reports a dangling reference at the referencing value', async () => {
    const text = VALID.replace('workload: zeta', 'workload: billing').replace(
      'credential: openai-key',
      'credential: openai-token',
    );
    expect(await problems({ 'p.yaml': text })).toEqual([
      'p.yaml:28:13: Binding "zeta-openai": spec.workload: no Workload named "billing"',
      'p.yaml:30:33: Binding "zeta-openai": spec.inject.bearer.credential: no CredentialSource named "openai-token"',
    ]);
  });

  it('reports two bindings for one workload and service', async () => {
    const second = `---\n${HEADER}kind: Binding\nmetadata: {name: again}\nspec: {workload: zeta, service: openai, inject: {bearer: {credential: openai-key}}}\n`;
    const dir = await policyDir({ 'p.yaml': VALID, 'q.yaml': second });
    expect(render(dir, await validatePolicyPath(dir))).toEqual([
      `q.yaml:4:18: Binding "again": workload "zeta" and service "openai" are already bound by ` +
        `Binding "zeta-openai" at ${join(dir, 'p.yaml')}:26; two bindings for one workload and service are ambiguous`,
    ]);
  });

  it('reports two services that share a host and port', async () => {
    const other = `${HEADER}kind: Service\nmetadata: {name: other}\nspec: {hosts: [x.example, api.openai.COM], port: 443, tls: true}\n`;
    const dir = await policyDir({ 'p.yaml': VALID, 'q.yaml': other });
    expect(render(dir, await validatePolicyPath(dir))).toEqual([
      `q.yaml:4:27: Service "other": api.openai.com:443 is already claimed by Service "openai" at ${join(dir, 'p.yaml')}:10`,
    ]);
    const otherPort = other.replace('port: 443', 'port: 8443');
    expect(await problems({ 'p.yaml': VALID, 'q.yaml': otherPort })).toEqual([]);
  });
});

describe('plaintext services (kernel datapath)', () => {
  const doc = (kind: string, name: string, spec: string) => `${HEADER}kind: ${kind}\nmetadata: {name: ${name}}\nspec: ${spec}\n`;
  const base = [
    doc('CredentialSource', 'k', '{file: {path: /etc/wirekey/k}}'),
    doc('Workload', 'w', '{selector: {cgroup: /a}}'),
  ];
  const policy = (...docs: string[]) => [...base, ...docs].join('---\n');

  it('compiles addresses and CIDRs to their canonical form, and header and basic injections', async () => {
    const text = policy(
      doc('Service', 'internal', '{addresses: [10.1.2.3, 10.9.0.77/16, "FD00:0::1", "fd00:1::/64"], port: 8080, tls: false}'),
      doc('Binding', 'b1', '{workload: w, service: internal, inject: {header: {credential: k, name: X-Api-Key}}}'),
      doc('Service', 'internal2', '{addresses: [192.0.2.1], port: 80, tls: false, datapath: kernel}'),
      doc('Binding', 'b2', '{workload: w, service: internal2, inject: {basic: {credential: k, username: svc}}}'),
    );
    const dir = await policyDir({ 'p.yaml': text });
    expect(await validatePolicyPath(dir)).toEqual([]);
    const plan = compilePolicy((await loadPolicy(dir)).policy);
    expect(plan.services.get('internal')).toEqual({
      name: 'internal', datapath: 'kernel', addresses: ['10.1.2.3', '10.9.0.0/16', 'fd00::1', 'fd00:1::/64'], hosts: [], port: 8080, tls: false,
    });
    expect(plan.bindings.map((b) => b.inject)).toEqual([
      { kind: 'header', credential: 'k', name: 'X-Api-Key', format: '{secret}' },
      { kind: 'basic', credential: 'k', username: 'svc' },
    ]);
  });

  it('says which of hosts and addresses each kind of service takes, and which datapath', async () => {
    const text = policy(
      doc('Service', 'a', '{hosts: [a.example], port: 80, tls: false}'),
      doc('Service', 'b', '{addresses: [10.0.0.1], hosts: [b.example], port: 443, tls: true, datapath: kernel}'),
      doc('Service', 'c', '{addresses: [10.0.0.1, 10.0.0.300, "10.1/8"], port: 80, tls: false, datapath: proxy}'),
    );
    expect(await problems({ 'p.yaml': text })).toEqual([
      'p.yaml:14:7: Service "a": spec.addresses: a plaintext service (tls: false) needs the IP addresses or CIDRs it is pinned to',
      'p.yaml:19:19: Service "b": spec.addresses: pinned addresses are for plaintext services (tls: false); a TLS service is matched by its hosts',
      'p.yaml:19:83: Service "b": spec.datapath: the kernel datapath injects into plaintext HTTP only; a TLS service needs datapath: proxy',
      'p.yaml:24:85: Service "c": spec.datapath: the proxy handles TLS services; a plaintext service (tls: false) uses datapath: kernel',
      'p.yaml:24:30: Service "c": spec.addresses[1]: "10.0.0.300" is not an IP address or CIDR',
      'p.yaml:24:42: Service "c": spec.addresses[2]: "10.1/8" is not an IP address or CIDR',
    ]);
  });

  it('plaintext services may list hosts: compiled lower-case without a trailing dot; validate warns when they do not', async () => {
    const text = policy(
      doc('Service', 'listed', '{addresses: [10.1.2.3], hosts: [Inventory.Internal., inventory.internal, alt.internal], port: 8080, tls: false}'),
      doc('Service', 'open', '{addresses: [10.1.2.4], port: 8080, tls: false}'),
      // The same host on another plaintext service or a TLS one is no conflict: plaintext services are found by address.
      doc('Service', 'other', '{addresses: [10.1.2.5], hosts: [alt.internal], port: 8080, tls: false}'),
      doc('Service', 'tls', '{hosts: [alt.internal], port: 8080, tls: true}'),
    );
    const dir = await policyDir({ 'p.yaml': text });
    expect(await validatePolicyPath(dir)).toEqual([]);
    const loaded = await loadPolicy(dir);
    expect(render(dir, loaded.warnings)).toEqual([
      'p.yaml:19:7: Service "open": spec.hosts: a plaintext service without hosts injects whatever Host a request names; ' +
        'behind a front that routes by Host (a reverse proxy, an ingress, a load balancer) the credential goes to ' +
        'whichever backend that Host selects; list the host names the service answers to',
    ]);
    expect(loaded.warnings[0]?.severity).toBe('warning');
    expect((await lintPolicyPath(dir)).map((d) => d.severity)).toEqual(['warning']);
    const plan = compilePolicy(loaded.policy);
    expect(plan.services.get('listed')).toMatchObject({ datapath: 'kernel', hosts: ['inventory.internal', 'alt.internal'] });
    expect(plan.services.get('open')).toMatchObject({ datapath: 'kernel', hosts: [] });
  });

  it('refuses plaintext hosts the kernel cannot hold: too long, or too many together', async () => {
    const long = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(62)}`; // 254 characters: a valid DNS pattern, one too many
    const many = Array.from({ length: 2049 }, (_, i) => `h${i}.internal`);
    const text = policy(
      doc('Service', 'long', `{addresses: [10.1.2.3], hosts: [${long}, ok.internal], port: 80, tls: false}`),
      doc('Service', 'm1', `{addresses: [10.1.2.4], hosts: [${many.join(', ')}], port: 80, tls: false}`),
      doc('Service', 'm2', `{addresses: [10.1.2.5], hosts: [${many.join(', ')}], port: 80, tls: false}`),
    );
    const found = await problems({ 'p.yaml': text });
    expect(found).toHaveLength(2);
    expect(found[0]).toMatch(/^p\.yaml:14:\d+: Service "long": spec\.hosts\[0\]: longer than 253 characters$/);
    expect(found[1]).toMatch(/^p\.yaml:\d+:\d+: Service "m2": spec\.hosts: plaintext services may list at most 4096 hosts together; this makes 4100$/);
  });

  it('refuses prefixes so broad that the credential would go to much of the Internet', async () => {
    const text = policy(doc('Service', 'wide', '{addresses: [0.0.0.0/0, 10.0.0.0/7, "::ffff:0:0/96", "2001:db8::/31", 10.0.0.0/8, "2001:db8::/32"], port: 80, tls: false}'));
    const messages = await problems({ 'p.yaml': text });
    expect(messages.map((m) => m.replace(/ is too broad.*/, ''))).toEqual([
      'p.yaml:14:20: Service "wide": spec.addresses[0]: 0.0.0.0/0',
      'p.yaml:14:31: Service "wide": spec.addresses[1]: 10.0.0.0/7',
      'p.yaml:14:43: Service "wide": spec.addresses[2]: ::ffff:0:0/96',
      'p.yaml:14:60: Service "wide": spec.addresses[3]: 2001:db8::/31',
    ]);
    expect(messages[0]).toContain('at most /8 for IPv4, /32 for IPv6');
  });

  it('refuses a SigV4 scope that sets service without region, or region without service (it would be ignored)', async () => {
    const text = policy(
      doc('Service', 'aws', '{hosts: [s3.amazonaws.com], port: 443, tls: true}'),
      doc('Binding', 'b1', '{workload: w, service: aws, inject: {sigv4: {credential: k, region: eu-west-1}}}'),
      doc('Binding', 'b2', '{workload: w, service: aws, inject: {sigv4: {credential: k, service: s3}}}'),
      doc('Binding', 'b3', '{workload: w, service: aws, inject: {sigv4: {credential: k, service: s3, region: eu-west-1}}}'),
    );
    const dir = await policyDir({ 'p.yaml': text });
    const messages = render(dir, await validatePolicyPath(dir));
    expect(messages.filter((m) => m.includes('spec.inject.sigv4'))).toEqual([
      expect.stringMatching(/^p\.yaml:\d+:\d+: Binding "b1": spec\.inject\.sigv4: region is set without service: set both, or neither to infer them from the host$/),
      expect.stringMatching(/^p\.yaml:\d+:\d+: Binding "b2": spec\.inject\.sigv4: service is set without region: set both, or neither to infer them from the host$/),
    ]);
  });

  it('refuses SigV4 on the kernel datapath, reserved header names, overlapping pins and a port the proxy takes', async () => {
    const text = policy(
      doc('Service', 'p1', '{addresses: [10.0.0.0/8], port: 80, tls: false}'),
      doc('Service', 'p2', '{addresses: [10.2.3.4], port: 80, tls: false}'),
      doc('Service', 'p3', '{addresses: [10.2.3.4], port: 8080, tls: false}'),
      doc('Service', 't', '{hosts: [t.example], port: 8080, tls: true}'),
      doc('Binding', 'b1', '{workload: w, service: p1, inject: {sigv4: {credential: k, service: s3, region: us-east-1}}}'),
      doc('Binding', 'b2', '{workload: w, service: p2, inject: {header: {credential: k, name: Content-Length}}}'),
      doc('Binding', 'b3', '{workload: w, service: p3, inject: {bearer: {credential: k}}}'),
      doc('Binding', 'b4', '{workload: w, service: t, inject: {bearer: {credential: k}}}'),
    );
    const dir = await policyDir({ 'p.yaml': text });
    const messages = render(dir, await validatePolicyPath(dir));
    expect(messages).toContain(
      'p.yaml:34:50: Binding "b1": spec.inject.sigv4: SigV4 signs the whole request and needs the proxy; Service "p1" is plaintext (kernel datapath), which takes bearer, header or basic',
    );
    expect(messages).toContain('p.yaml:39:73: Binding "b2": spec.inject.header.name: Content-Length frames or routes the request and cannot carry a credential');
    expect(messages).toContain(
      `p.yaml:19:20: Service "p2": 10.2.3.4 port 80 overlaps 10.0.0.0/8 of Service "p1" at ${join(dir, 'p.yaml')}:14; an address can belong to one service per port`,
    );
    expect(messages.find((m) => m.includes('Binding "b3": workload "w" has its port 8080 connections sent to the proxy by Binding "b4"'))).toBeTruthy();
    expect(messages).toHaveLength(4);
  });
});

describe('policies/', () => {
  it('the example validates', async () => {
    expect(await validatePolicyPath(EXAMPLE)).toEqual([]);
    const plan = compilePolicy((await loadPolicy(EXAMPLE)).policy);
    expect(plan.bindings).toEqual([
      {
        name: 'billing-openai',
        workload: 'billing',
        service: 'openai',
        inject: { kind: 'bearer', credential: 'openai-key' },
      },
    ]);
  });

  it('the plaintext example validates', async () => {
    expect(await validatePolicyPath(KERNEL_EXAMPLE)).toEqual([]);
    const plan = compilePolicy((await loadPolicy(KERNEL_EXAMPLE)).policy);
    expect(plan.services.get('inventory')).toMatchObject({ datapath: 'kernel', addresses: ['10.20.0.0/24', 'fd00:20::5'], port: 8080 });
    expect(plan.bindings[0]?.inject).toEqual({ kind: 'header', credential: 'inventory-key', name: 'X-Api-Key', format: 'Key {secret}' });
  });

  it('the schema root (as editors use it) accepts the examples and rejects unknown kinds', async () => {
    const schema = JSON.parse(await readFile(SCHEMA, 'utf8')) as object;
    const ajv = new Ajv2020({ strict: true, allErrors: true, allowUnionTypes: true });
    ajv.addKeyword({ keyword: 'patternErrorMessage', schemaType: 'string' });
    const validate = ajv.compile(schema);
    const texts = await Promise.all([EXAMPLE, KERNEL_EXAMPLE, EGRESS_EXAMPLE].map((f) => readFile(f, 'utf8')));
    for (const doc of texts.flatMap((t) => parseAllDocuments(t))) {
      expect(validate(doc.toJS()), JSON.stringify(validate.errors)).toBe(true);
    }
    expect(validate({ apiVersion: 'wirekey.dev/v1alpha1', kind: 'Servise', metadata: { name: 'x' }, spec: {} })).toBe(
      false,
    );
  });
});
