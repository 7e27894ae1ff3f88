/**
 * Egress policy from YAML to answers: the schema's errors and the checks'
 * (each at the line and column to fix), what compilePolicy makes of the
 * rules, and what the matcher the kernel maps and the proxy share allows.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { validate } from '../../controller/cli/validate.js';
import { formatEgress } from '../../controller/host/explain.js';
import { checkPolicy, policyWarnings } from '../../controller/policy/check.js';
import { compilePolicy } from '../../controller/policy/compile.js';
import {
  canonicalCidr,
  egressAllowsAddress,
  egressAllowsName,
  egressHostProblem,
  egressNamePorts,
  mergePorts,
  portRangeProblem,
} from '../../controller/policy/egress.js';
import { loadPolicy } from '../../controller/policy/load.js';
import { parsePolicyText } from '../../controller/policy/parse.js';
import type { PlanEgress, PlanEgressRule } from '../../controller/policy/types.js';
import { parseAddressPrefix } from '../../controller/addresses.js';
import { ownedCopy, removeCopy } from '../support/paths.js';

// A copy this process owns: the repository may be another user's (see ownedCopy).
const EXAMPLE = ownedCopy('policies/examples/egress.yaml');
afterAll(() => removeCopy(EXAMPLE));
const HEADER = 'apiVersion: wirekey.dev/v1alpha1\n';

/** Two services and a credential; the workload under test follows. */
const BASE = `${HEADER}kind: Service
metadata: {name: openai}
spec: {hosts: [API.OpenAI.com.], port: 443, tls: true}
---
${HEADER}kind: Service
metadata: {name: inventory}
spec: {addresses: [10.20.0.7, "::ffff:10.20.1.0/120"], hosts: [inventory.internal], port: 8080, tls: false}
---
${HEADER}kind: CredentialSource
metadata: {name: key}
spec: {file: {path: /etc/wirekey/key}}
---
`;

/** A workload `app` (line 16 of the text; spec.egress from line 21) with `egress` written under spec (indented by 2). */
function withEgress(egress: string, extra = ''): string {
  return `${BASE}${HEADER}kind: Workload
metadata: {name: app}
spec:
  selector: {cgroup: /app}
${egress.replace(/^/gm, '  ').replace(/ +$/gm, '')}\n${extra ? `---\n${extra}` : ''}`;
}

const BINDING = `${HEADER}kind: Binding
metadata: {name: app-openai}
spec: {workload: app, service: openai, inject: {bearer: {credential: key}}}
`;

/** Every diagnostic, `line:column: [warning: ]message`, as `wirekey validate` gives them (schema first, then checks, then warnings). */
function lint(text: string): string[] {
  const parsed = parsePolicyText(text, 'p.yaml');
  let found = parsed.diagnostics;
  if (found.length === 0) found = checkPolicy({ documents: parsed.documents });
  if (found.length === 0) found = policyWarnings({ documents: parsed.documents });
  return found.map((d) => `${d.line}:${d.column}: ${d.severity ? 'warning: ' : ''}${d.message}`);
}

function compiled(text: string): PlanEgress | undefined {
  const parsed = parsePolicyText(text, 'p.yaml');
  expect(parsed.diagnostics).toEqual([]);
  expect(checkPolicy({ documents: parsed.documents })).toEqual([]);
  return compilePolicy({ documents: parsed.documents }).workloads.get('app')?.egress;
}

describe('schema: spec.egress', () => {
  it('a workload without egress is valid and unrestricted', () => {
    expect(compiled(withEgress(''))).toBeUndefined();
  });

  it('mode and allow are required, mode is enforce or audit, and unknown fields are named with a guess', () => {
    expect(lint(withEgress('egress: {allow: []}'))).toEqual(['21:11: Workload "app": missing required field "spec.egress.mode"']);
    expect(lint(withEgress('egress: {mode: enforce}'))).toEqual(['21:11: Workload "app": missing required field "spec.egress.allow"']);
    expect(lint(withEgress('egress: {mode: block, allow: []}'))).toEqual(['21:18: Workload "app": spec.egress.mode: must be enforce or audit']);
    expect(lint(withEgress('egress: {mode: audit, alow: []}'))).toEqual([
      '21:25: Workload "app": unknown field "spec.egress.alow": did you mean "allow"? (expected mode or allow)',
    ]);
    expect(lint(withEgress('egres: {mode: audit, allow: []}'))).toEqual([
      '21:3: Workload "app": unknown field "spec.egres": did you mean "egress"? (expected selector or egress)',
    ]);
  });

  it('an empty allow list is valid', () => {
    expect(lint(withEgress('egress: {mode: enforce, allow: []}'))).toEqual([]);
    expect(compiled(withEgress('egress: {mode: enforce, allow: []}'))).toEqual({ mode: 'enforce', rules: [] });
  });

  it('a rule gives exactly one of service, cidr, cidrs, host and hosts: one message, at the second one', () => {
    const text = withEgress(`egress:
  mode: enforce
  allow:
    - {cidr: 10.0.0.0/8, host: a.example.com}
    - {ports: [80]}
    - {service: openai, cidrs: [10.0.0.1], hosts: [a.example.com]}`);
    expect(lint(text)).toEqual([
      '24:28: Workload "app": spec.egress.allow[0]: gives cidr and host: give only one of service, cidr, cidrs, host or hosts',
      '25:9: Workload "app": spec.egress.allow[1]: must give one of service, cidr, cidrs, host or hosts',
      '26:27: Workload "app": spec.egress.allow[2]: gives service, cidrs and hosts: give only one of service, cidr, cidrs, host or hosts',
    ]);
  });

  it('a misspelt destination field is one mistake, with a guess', () => {
    expect(lint(withEgress('egress: {mode: enforce, allow: [{hots: [a.example.com]}]}'))).toEqual([
      '21:36: Workload "app": unknown field "spec.egress.allow[0].hots": did you mean "host"? (expected service, cidr, cidrs, host, hosts, ports, protocol or tls)',
    ]);
  });

  it('ports are integers 1-65535 or "lo-hi" strings; protocol is tcp, udp or any; tls is a boolean', () => {
    const text = withEgress(`egress:
  mode: enforce
  allow:
    - cidr: 10.0.0.1
      ports: [0, "80-x", true, 70000, "443"]
      protocol: sctp
    - {host: a.example.com, tls: "yes", ports: []}`);
    expect(lint(text)).toEqual([
      '25:17: Workload "app": spec.egress.allow[0].ports[0]: must be >= 1',
      '25:20: Workload "app": spec.egress.allow[0].ports[1]: must be a port number or a range such as "8000-8999"',
      '25:28: Workload "app": spec.egress.allow[0].ports[2]: must be an integer or a string',
      '25:34: Workload "app": spec.egress.allow[0].ports[3]: must be <= 65535',
      '25:41: Workload "app": spec.egress.allow[0].ports[4]: must be a port number or a range such as "8000-8999"',
      '26:19: Workload "app": spec.egress.allow[0].protocol: must be tcp, udp or any',
      '27:50: Workload "app": spec.egress.allow[1].ports: must not be empty',
      '27:36: Workload "app": spec.egress.allow[1].tls: must be true or false',
    ]);
  });

  it('cidrs and hosts are non-empty lists without repeats', () => {
    expect(lint(withEgress('egress: {mode: enforce, allow: [{cidrs: []}, {hosts: [a.example.com, a.example.com]}]}'))).toEqual([
      '21:43: Workload "app": spec.egress.allow[0].cidrs: must not be empty',
      '21:72: Workload "app": spec.egress.allow[1].hosts[1]: duplicate of spec.egress.allow[1].hosts[0]',
    ]);
  });

  it('every egress field has a description (editors show them, and "did you mean" reads the field names)', async () => {
    const schema = (await import('../../policies/wirekey.schema.json', { with: { type: 'json' } })).default as {
      $defs: Record<string, { description?: string; properties?: Record<string, { description?: string }> }>;
    };
    for (const name of ['Egress', 'EgressRule', 'EgressHost', 'EgressPort']) {
      const def = schema.$defs[name];
      expect(def?.description, name).toBeTruthy();
      for (const [field, sub] of Object.entries(def?.properties ?? {})) expect(sub.description, `${name}.${field}`).toBeTruthy();
    }
  });
});

describe('checks', () => {
  it('an unknown service, with a guess', () => {
    expect(lint(withEgress('egress: {mode: enforce, allow: [{service: openia}, {service: nothing-like-it}]}'))).toEqual([
      '21:45: Workload "app": spec.egress.allow[0].service: no Service named "openia": did you mean "openai"?',
      '21:64: Workload "app": spec.egress.allow[1].service: no Service named "nothing-like-it"',
    ]);
  });

  it('ports, protocol and tls on a service rule are refused: the service says them', () => {
    const text = withEgress(`egress:
  mode: enforce
  allow:
    - service: openai
      ports: [8443]
      protocol: udp
      tls: false`);
    expect(lint(text)).toEqual([
      '25:16: Workload "app": spec.egress.allow[0].ports: a service rule takes no ports: Service "openai" says it (port 443, tls: true)',
      '26:19: Workload "app": spec.egress.allow[0].protocol: a service rule takes no protocol: a service is reached over TCP',
      '27:14: Workload "app": spec.egress.allow[0].tls: a service rule takes no tls: Service "openai" says it (port 443, tls: true)',
    ]);
  });

  it('invalid addresses and CIDRs', () => {
    const text = withEgress(`egress:
  mode: enforce
  allow:
    - cidr: 10.0.0.0/33
    - cidrs: ["10.1", "fd00::/129", 010.0.0.1, "1:2:3", 10.0.0.0/8]`);
    expect(lint(text)).toEqual([
      '24:15: Workload "app": spec.egress.allow[0].cidr: "10.0.0.0/33" is not an IP address or CIDR',
      '25:17: Workload "app": spec.egress.allow[1].cidrs[0]: "10.1" is not an IP address or CIDR',
      '25:25: Workload "app": spec.egress.allow[1].cidrs[1]: "fd00::/129" is not an IP address or CIDR',
      '25:39: Workload "app": spec.egress.allow[1].cidrs[2]: "010.0.0.1" is not an IP address or CIDR',
      '25:50: Workload "app": spec.egress.allow[1].cidrs[3]: "1:2:3" is not an IP address or CIDR',
    ]);
  });

  it('port ranges: out of range, or backwards', () => {
    const text = withEgress(`egress:
  mode: enforce
  allow:
    - {cidr: 10.0.0.0/8, ports: ["0-80", "80-65536", "9000-8000", "1-65535", "443-443"]}`);
    expect(lint(text)).toEqual([
      '24:36: Workload "app": spec.egress.allow[0].ports[0]: "0-80": port 0 is not between 1 and 65535',
      '24:44: Workload "app": spec.egress.allow[0].ports[1]: "80-65536": port 65536 is not between 1 and 65535',
      '24:56: Workload "app": spec.egress.allow[0].ports[2]: "9000-8000": the range starts after it ends (write "8000-9000")',
    ]);
  });

  it('host rules are TCP only, and say why', () => {
    const lines = lint(withEgress('egress: {mode: enforce, allow: [{host: a.example.com, protocol: udp}, {host: b.example.com, protocol: any}, {host: c.example.com, protocol: tcp}]}'));
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^21:67: Workload "app": spec\.egress\.allow\[0\]\.protocol: host rules are TCP only: .*a UDP datagram carries neither, so UDP to a name cannot be checked; allow UDP with a cidr rule$/);
    expect(lines[1]).toMatch(/^21:105: Workload "app": spec\.egress\.allow\[1\]\.protocol: host rules are TCP only: .*UDP \(any\)/);
  });

  it('tls on an address rule is refused', () => {
    expect(lint(withEgress('egress: {mode: enforce, allow: [{cidr: 10.0.0.1, tls: true}]}'))).toEqual([
      '21:57: Workload "app": spec.egress.allow[0].tls: tls is for host rules: an address rule allows addresses whatever is sent to them; to allow names, use host or hosts',
    ]);
  });

  it('host rules of one workload cover at most 64 ports: the kernel sends each to the proxy', () => {
    const lines = lint(withEgress('egress: {mode: enforce, allow: [{host: a.example.com, ports: ["1000-1060"]}, {host: b.example.com, ports: ["2000-2010"]}]}'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/spec\.egress\.allow\[1\]\.ports: host rules of one workload may cover at most 64 ports .*allow wide port ranges with a cidr rule$/);
    expect(lint(withEgress('egress: {mode: enforce, allow: [{host: a.example.com, ports: ["1000-1063"]}, {cidr: 0.0.0.0/0, ports: ["1-65535"]}]}'))).toEqual([]);
  });

  it('a plaintext host rule on the port of a kernel-datapath binding is refused: it would take those connections to the proxy', () => {
    const binding = `${HEADER}kind: Binding\nmetadata: {name: app-inventory}\nspec: {workload: app, service: inventory, inject: {bearer: {credential: key}}}\n`;
    const lines = lint(withEgress('egress: {mode: enforce, allow: [{host: mirror.internal, tls: false, ports: ["8070-8090"]}]}', binding));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^21:35: Workload "app": spec\.egress\.allow\[0\]: port 8080 has a plaintext host rule here and Binding "app-inventory" \(.*\), which the kernel datapath injects on that port; .*use another port for one of them$/);
    expect(lint(withEgress('egress: {mode: enforce, allow: [{host: mirror.internal, tls: false, ports: [80]}]}', binding))).toEqual([]);
  });

  it('a plaintext host rule must give its ports', () => {
    expect(lint(withEgress('egress: {mode: enforce, allow: [{host: a.example.com, tls: false}]}'))).toEqual([
      '21:62: Workload "app": spec.egress.allow[0].tls: a plaintext host rule (tls: false) needs ports, such as [80]: only TLS host rules default to 443',
    ]);
    expect(lint(withEgress('egress: {mode: enforce, allow: [{host: a.example.com, tls: false, ports: [80]}]}'))).toEqual([]);
  });

  it('host names and wildcards', () => {
    const text = withEgress(`egress:
  mode: enforce
  allow:
    - hosts: ["*", "*.com", "a.*.example.com", "**.example.com", "-a.example.com", "a_b.example.com", "10.0.0.1", "https://a.example.com", "*.example.com", "Example.COM.", localhost]`);
    expect(lint(text)).toEqual([
      '24:17: Workload "app": spec.egress.allow[0].hosts[0]: "*" alone would allow every name: list the domains, as *.example.com',
      '24:22: Workload "app": spec.egress.allow[0].hosts[1]: "*.com" would allow every name under a top-level domain: a wildcard needs at least two labels after "*.", as in *.example.com',
      '24:31: Workload "app": spec.egress.allow[0].hosts[2]: "a.*.example.com": "*" may only be the whole first label, as in *.example.com',
      '24:50: Workload "app": spec.egress.allow[0].hosts[3]: "**.example.com": "*" may only be the whole first label, as in *.example.com',
      '24:68: Workload "app": spec.egress.allow[0].hosts[4]: "-a.example.com" is not a host name such as api.example.com (letters, digits, \'-\' and dots)',
      '24:86: Workload "app": spec.egress.allow[0].hosts[5]: "a_b.example.com" is not a host name such as api.example.com (letters, digits, \'-\' and dots)',
      '24:105: Workload "app": spec.egress.allow[0].hosts[6]: "10.0.0.1" is an address: allow it with cidr',
      '24:117: Workload "app": spec.egress.allow[0].hosts[7]: "https://a.example.com" is not a host name such as api.example.com (letters, digits, \'-\' and dots)',
    ]);
    expect(egressHostProblem('a.example.com.')).toBeUndefined();
    expect(egressHostProblem('*.example.com.')).toBeUndefined();
    expect(egressHostProblem('*.')).toMatch(/alone/);
    expect(egressHostProblem(`${'a'.repeat(64)}.example.com`)).toMatch(/not a host name/);
  });

  it('TLS and plaintext host rules on one port of one workload are refused, bindings and service rules included', () => {
    const text = withEgress(`egress:
  mode: enforce
  allow:
    - {host: a.example.com, ports: ["8000-8100"]}
    - {host: b.example.com, tls: false, ports: [80, "8050-8060"]}
    - {host: c.example.com, tls: false, ports: [443]}`, BINDING);
    expect(lint(text)).toEqual([
      '25:9: Workload "app": spec.egress.allow[1]: port 8050 has a plaintext host rule here and a TLS one in spec.egress.allow[0] (p.yaml:24); ' +
        'the proxy checks either the TLS server name or the Host on a port, not both: use another port for one of them',
      '26:9: Workload "app": spec.egress.allow[2]: port 443 has a plaintext host rule here and a TLS one in Binding "app-openai" (p.yaml:31); ' +
        'the proxy checks either the TLS server name or the Host on a port, not both: use another port for one of them',
    ]);
    // A plaintext service's rule is an address rule: no clash on its port.
    expect(lint(withEgress('egress: {mode: enforce, allow: [{service: inventory}, {host: a.example.com, tls: false, ports: [8080]}]}'))).toEqual([]);
  });

  it('a rule that repeats an earlier one is a warning, compared in canonical form', () => {
    const text = withEgress(`egress:
  mode: audit
  allow:
    - {cidr: 10.0.0.1, ports: [443, 80]}
    - {cidrs: [10.0.0.1/32], ports: [80, "443-443"], protocol: tcp}
    - {host: A.example.com.}
    - {hosts: [a.example.com], ports: [443], tls: true}
    - {cidr: 10.0.0.1, ports: [443, 80], protocol: udp}
    - {service: openai}`, BINDING);
    expect(lint(text)).toEqual([
      '25:9: warning: Workload "app": spec.egress.allow[1]: allows the same as spec.egress.allow[0] (p.yaml:24); remove one',
      '27:9: warning: Workload "app": spec.egress.allow[3]: allows the same as spec.egress.allow[2] (p.yaml:26); remove one',
    ]);
  });

  it('a restricted workload selected by executable is a warning: running another program leaves the workload and its restriction', () => {
    const text = withEgress('egress: {mode: enforce, allow: [{service: openai}]}').replace('selector: {cgroup: /app}', 'selector: {cgroup: /app, executable: /usr/bin/app}');
    expect(lint(text)).toEqual([
      expect.stringMatching(/^\d+:\d+: warning: Workload "app": spec\.egress: the workload is selected by executable, so a process of it that runs another program .* select it by cgroup or systemdUnit \(and user\) alone$/),
    ]);
    expect(lint(withEgress('egress: {mode: enforce, allow: [{service: openai}]}'))).toEqual([]);
  });

  it('a workload defined twice: the copy is reported, the first definition checked', () => {
    const text = withEgress('egress: {mode: enforce, allow: [{service: nope}]}', `${HEADER}kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: /app}}
`);
    expect(lint(text)).toEqual([
      '25:18: duplicate Workload "app": already defined at p.yaml:18',
      '21:45: Workload "app": spec.egress.allow[0].service: no Service named "nope"',
    ]);
  });
});

describe('compilePolicy: egress', () => {
  it('numbers the rules in allow order, then one per binding; canonical cidrs, names and ports; sources', () => {
    const egress = compiled(withEgress(`egress:
  mode: enforce
  allow:
    - cidrs: [10.1.2.3/8, "::ffff:192.168.1.9/120", 192.168.1.1, "2001:DB8:0:0::1/64", "fd00::1", "::ffff:1.2.3.4", 0.0.0.0/0, "::/0", 10.9.9.9/8]
      ports: [443, "80-90", 91, "8000-8080", "8050-8100", 1]
      protocol: any
    - {host: API.Example.COM., ports: [8443, 8443]}
    - {hosts: ["*.Example.org", b.example.com], tls: false, ports: ["80-81"]}
    - {service: inventory}
    - {service: openai}
    - {cidr: "fe80::1:2:3:4/16", protocol: udp}`, BINDING));
    const at = (line: number, column = 9) => ({ file: 'p.yaml', line, column });
    expect(egress).toEqual({
      mode: 'enforce',
      rules: [
        {
          id: 1, label: 'allow[1]', source: at(24),
          cidrs: ['10.0.0.0/8', '192.168.1.0/24', '192.168.1.1/32', '2001:db8::/64', 'fd00::1/128', '1.2.3.4/32', '0.0.0.0/0', '::/0'],
          hosts: [], ports: [[1, 1], [80, 91], [443, 443], [8000, 8100]], protocol: 'any', tls: false,
        },
        { id: 2, label: 'allow[2]', source: at(27), cidrs: [], hosts: ['api.example.com'], ports: [[8443, 8443]], protocol: 'tcp', tls: true },
        { id: 3, label: 'allow[3]', source: at(28), cidrs: [], hosts: ['*.example.org', 'b.example.com'], ports: [[80, 81]], protocol: 'tcp', tls: false },
        { id: 4, label: 'allow[4]', source: at(29), service: 'inventory', cidrs: ['10.20.0.7/32', '10.20.1.0/24'], hosts: [], ports: [[8080, 8080]], protocol: 'tcp', tls: false },
        { id: 5, label: 'allow[5]', source: at(30), service: 'openai', cidrs: [], hosts: ['api.openai.com'], ports: [[443, 443]], protocol: 'tcp', tls: true },
        { id: 6, label: 'allow[6]', source: at(31), cidrs: ['fe80::/16'], hosts: [], ports: [[1, 65535]], protocol: 'udp', tls: false },
        { id: 7, label: 'binding app-openai', source: at(33, 1), service: 'openai', cidrs: [], hosts: ['api.openai.com'], ports: [[443, 443]], protocol: 'tcp', tls: true },
      ],
    });
  });

  it('defaults: an address rule allows every port over TCP; a host rule port 443 with TLS', () => {
    const egress = compiled(withEgress('egress: {mode: audit, allow: [{cidr: "fd00::/8"}, {host: a.example.com}]}'));
    expect(egress?.rules.map(({ cidrs, hosts, ports, protocol, tls }) => ({ cidrs, hosts, ports, protocol, tls }))).toEqual([
      { cidrs: ['fd00::/8'], hosts: [], ports: [[1, 65535]], protocol: 'tcp', tls: false },
      { cidrs: [], hosts: ['a.example.com'], ports: [[443, 443]], protocol: 'tcp', tls: true },
    ]);
    expect(egress?.mode).toBe('audit');
  });

  it('a binding allows its service even with an empty allow list; a workload without egress gets no rules from its bindings', () => {
    const egress = compiled(withEgress('egress: {mode: enforce, allow: []}', BINDING));
    expect(egress?.rules.map((r) => r.label)).toEqual(['binding app-openai']);
    expect(compiled(withEgress('', BINDING))).toBeUndefined();
  });

  it('is deterministic and independent of binding order', () => {
    const other = `${HEADER}kind: Binding
metadata: {name: app-inventory}
spec: {workload: app, service: inventory, inject: {bearer: {credential: key}}}
---
`;
    const a = compiled(withEgress('egress: {mode: enforce, allow: []}', `${BINDING}---\n${other}`));
    const b = compiled(withEgress('egress: {mode: enforce, allow: []}', `${other}${BINDING}`));
    expect(a?.rules.map((r) => r.label)).toEqual(['binding app-inventory', 'binding app-openai']);
    expect(b?.rules.map(({ source: _s, ...r }) => r)).toEqual(a?.rules.map(({ source: _s, ...r }) => r));
    expect(JSON.stringify(compiled(withEgress('egress: {mode: enforce, allow: [{cidr: 10.0.0.1}]}')))).toBe(
      JSON.stringify(compiled(withEgress('egress: {mode: enforce, allow: [{cidr: 10.0.0.1}]}'))),
    );
  });

  it('canonicalCidr and mergePorts', () => {
    const c = (t: string) => canonicalCidr(parseAddressPrefix(t)!);
    expect(c('::ffff:0.0.0.0/96')).toBe('0.0.0.0/0');
    expect(c('::ffff:10.1.2.3/104')).toBe('10.0.0.0/8');
    expect(c('::')).toBe('::/128');
    expect(c('2001:0db8:0000:0000:0001:0000:0000:0001/128')).toBe('2001:db8::1:0:0:1/128');
    expect(c('255.255.255.255/31')).toBe('255.255.255.254/31');
    // IPv4-compatible (deprecated), not mapped: ::1.2.3.4 is ::102:304.
    expect(c('::1.2.3.4')).toBe('::102:304/128');
    expect(c('64:ff9b::1.2.3.4/120')).toBe('64:ff9b::102:300/120');
    expect(mergePorts(undefined, [443, 443])).toEqual([[443, 443]]);
    expect(mergePorts([65535, '1-10', 11, '20-30', '25-26'], [1, 65535])).toEqual([[1, 11], [20, 30], [65535, 65535]]);
    expect(portRangeProblem('1-65535')).toBeUndefined();
    expect(portRangeProblem(0)).toMatch(/not between 1 and 65535/);
  });

  it('the example validates, and its summary is printed', async () => {
    const plan = compilePolicy((await loadPolicy(EXAMPLE)).policy);
    expect(plan.workloads.get('support-agent')?.egress?.rules.map((r) => r.label)).toEqual([
      'allow[1]', 'allow[2]', 'allow[3]', 'allow[4]', 'allow[5]', 'binding support-agent-tickets',
    ]);
    const out = await validate(EXAMPLE);
    expect(out.code).toBe(0);
    expect(out.stdout).toEqual([]);
    expect(out.stderr).toEqual([
      'workload support-agent: egress enforce, 6 rule(s) (5 written, 1 from bindings)',
      `${EXAMPLE}: valid`,
    ]);
  });
});

/** A rule with the given fields and harmless defaults for the rest. */
function rule(id: number, fields: Partial<PlanEgressRule>): PlanEgressRule {
  return { id, label: `allow[${id}]`, source: { file: 'p.yaml', line: id, column: 1 }, cidrs: [], hosts: [], ports: [[1, 65535]], protocol: 'tcp', tls: false, ...fields };
}

describe('egressAllowsAddress', () => {
  const egress: PlanEgress = {
    mode: 'enforce',
    rules: [
      rule(1, { cidrs: ['10.0.0.0/8'], ports: [[1, 1], [65535, 65535]] }),
      rule(2, { cidrs: ['192.168.1.1/32'], protocol: 'udp', ports: [[53, 53]] }),
      rule(3, { cidrs: ['fd00::/64'], protocol: 'any', ports: [[443, 443]] }),
      rule(4, { hosts: ['a.example.com'], ports: [[443, 443]], tls: true }),
      rule(5, { cidrs: ['10.1.0.0/16'], ports: [[80, 90]] }),
    ],
  };
  const allows = (address: string, port: number, protocol: 'tcp' | 'udp' = 'tcp') => egressAllowsAddress(egress, { address, port, protocol })?.id;

  it('port range edges: 1 and 65535, and just inside and outside a range', () => {
    expect(allows('10.2.3.4', 1)).toBe(1);
    expect(allows('10.2.3.4', 65535)).toBe(1);
    expect(allows('10.2.3.4', 2)).toBeUndefined();
    expect(allows('10.2.3.4', 65534)).toBeUndefined();
    expect(allows('10.1.0.1', 80)).toBe(5);
    expect(allows('10.1.0.1', 90)).toBe(5);
    expect(allows('10.1.0.1', 79)).toBeUndefined();
    expect(allows('10.1.0.1', 91)).toBeUndefined();
    expect(allows('10.2.3.4', 0)).toBeUndefined();
    expect(allows('10.2.3.4', 65536)).toBeUndefined();
  });

  it('the first matching rule wins', () => {
    expect(allows('10.1.0.1', 1)).toBe(1);
  });

  it('prefix edges', () => {
    expect(allows('10.255.255.255', 1)).toBe(1);
    expect(allows('11.0.0.0', 1)).toBeUndefined();
    expect(allows('9.255.255.255', 1)).toBeUndefined();
    expect(allows('fd00::ffff:ffff:ffff:ffff', 443)).toBe(3);
    expect(allows('fd00:0:0:1::', 443)).toBeUndefined();
  });

  it('IPv4-mapped IPv6 addresses match IPv4 rules; an IPv6 rule never matches an IPv4 address it does not contain', () => {
    expect(allows('::ffff:10.2.3.4', 1)).toBe(1);
    expect(allows('::FFFF:0a02:0304', 65535)).toBe(1);
    expect(allows('::ffff:192.168.1.1', 53, 'udp')).toBe(2);
    expect(allows('::10.2.3.4', 1)).toBeUndefined();
  });

  it('udp vs tcp vs any', () => {
    expect(allows('192.168.1.1', 53, 'udp')).toBe(2);
    expect(allows('192.168.1.1', 53, 'tcp')).toBeUndefined();
    expect(allows('10.2.3.4', 1, 'udp')).toBeUndefined();
    expect(allows('fd00::1', 443, 'tcp')).toBe(3);
    expect(allows('fd00::1', 443, 'udp')).toBe(3);
  });

  it('name rules never allow an address; what is not an address is allowed by nothing', () => {
    expect(egressAllowsAddress({ mode: 'enforce', rules: [rule(1, { hosts: ['a.example.com'], ports: [[1, 65535]] })] }, { address: '1.2.3.4', port: 443, protocol: 'tcp' })).toBeUndefined();
    for (const address of ['a.example.com', '10.0.0.0/8', '', '10.1', '10.0.0.1:1']) expect(allows(address, 1)).toBeUndefined();
    expect(egressAllowsAddress(egress, { address: '10.0.0.1', port: 1, protocol: 'sctp' as 'tcp' })).toBeUndefined();
  });

  it('/0: 0.0.0.0/0 is every IPv4 address (mapped too) and no IPv6 one; ::/0 is every address', () => {
    const v4all: PlanEgress = { mode: 'enforce', rules: [rule(1, { cidrs: ['0.0.0.0/0'] })] };
    const all: PlanEgress = { mode: 'enforce', rules: [rule(1, { cidrs: ['::/0'] })] };
    const a = (e: PlanEgress, address: string) => egressAllowsAddress(e, { address, port: 443, protocol: 'tcp' })?.id;
    expect(a(v4all, '0.0.0.0')).toBe(1);
    expect(a(v4all, '255.255.255.255')).toBe(1);
    expect(a(v4all, '::ffff:8.8.8.8')).toBe(1);
    expect(a(v4all, '2001:db8::1')).toBeUndefined();
    expect(a(v4all, '::')).toBeUndefined();
    expect(a(all, '2001:db8::1')).toBe(1);
    expect(a(all, '8.8.8.8')).toBe(1);
  });

  it('an empty policy allows nothing', () => {
    expect(egressAllowsAddress({ mode: 'enforce', rules: [] }, { address: '127.0.0.1', port: 80, protocol: 'tcp' })).toBeUndefined();
  });
});

describe('egressAllowsName', () => {
  const egress: PlanEgress = {
    mode: 'enforce',
    rules: [
      rule(1, { hosts: ['api.example.com'], ports: [[443, 443]], tls: true }),
      rule(2, { hosts: ['*.example.org'], ports: [[443, 443]], tls: true }),
      rule(3, { hosts: ['plain.example.com'], ports: [[80, 80], [8000, 8100]], tls: false }),
      rule(4, { cidrs: ['0.0.0.0/0', '::/0'] }),
    ],
  };
  const allows = (name: string, port = 443, tls = true) => egressAllowsName(egress, { name, port, tls })?.id;

  it('exact names, case-insensitive, trailing dot ignored', () => {
    expect(allows('api.example.com')).toBe(1);
    expect(allows('API.Example.COM.')).toBe(1);
    expect(allows('api.example.com..')).toBeUndefined();
    expect(allows('xapi.example.com')).toBeUndefined();
    expect(allows('api.example.com.evil')).toBeUndefined();
    expect(allows('example.com')).toBeUndefined();
  });

  it('a wildcard allows names below it at any depth, but not the name itself', () => {
    expect(allows('a.example.org')).toBe(2);
    expect(allows('a.b.example.org')).toBe(2);
    expect(allows('A.B.C.Example.Org.')).toBe(2);
    expect(allows('example.org')).toBeUndefined();
    expect(allows('.example.org')).toBeUndefined();
    expect(allows('aexample.org')).toBeUndefined();
    expect(allows('a.example.org.evil.com')).toBeUndefined();
  });

  it('TLS rules match SNI only, plaintext rules Host only, each on its ports', () => {
    expect(allows('plain.example.com', 80, false)).toBe(3);
    expect(allows('plain.example.com', 8000, false)).toBe(3);
    expect(allows('plain.example.com', 8100, false)).toBe(3);
    expect(allows('plain.example.com', 8101, false)).toBeUndefined();
    expect(allows('plain.example.com', 80, true)).toBeUndefined();
    expect(allows('api.example.com', 443, false)).toBeUndefined();
    expect(allows('api.example.com', 8443)).toBeUndefined();
  });

  it('address rules never allow a name; what is not a name is allowed by nothing', () => {
    expect(allows('10.0.0.1')).toBeUndefined();
    for (const name of ['', '.', '*.example.org', 'a..example.org', 'a example.org', `${'a'.repeat(64)}.example.org`]) expect(allows(name)).toBeUndefined();
    expect(allows('api.example.com', 0)).toBeUndefined();
  });
});

describe('egressNamePorts', () => {
  it('the distinct (port, tls) pairs of name rules, sorted, ranges expanded; address rules give none', () => {
    const egress: PlanEgress = {
      mode: 'enforce',
      rules: [
        rule(1, { hosts: ['a.example.com'], ports: [[443, 443]], tls: true }),
        rule(2, { hosts: ['b.example.com'], ports: [[80, 80], [8000, 8002]], tls: false }),
        rule(3, { hosts: ['c.example.com'], ports: [[443, 443], [8443, 8443]], tls: true }),
        rule(4, { cidrs: ['10.0.0.0/8'], ports: [[1, 65535]] }),
      ],
    };
    expect(egressNamePorts(egress)).toEqual([
      { port: 80, tls: false },
      { port: 443, tls: true },
      { port: 8000, tls: false },
      { port: 8001, tls: false },
      { port: 8002, tls: false },
      { port: 8443, tls: true },
    ]);
    expect(egressNamePorts({ mode: 'audit', rules: [] })).toEqual([]);
  });
});

describe('explain: egress lines', () => {
  it('unrestricted, empty, and one line per rule', () => {
    expect(formatEgress(null)).toEqual(['egress: unrestricted']);
    expect(formatEgress({ mode: 'enforce', rules: [] })).toEqual([
      'egress: enforce, 0 rule(s): nothing is allowed',
      '  sockets other than TCP and UDP (raw, ICMP, SCTP, UDP-Lite): refused at socket()',
    ]);
    const egress = compiled(withEgress(`egress:
  mode: audit
  allow:
    - {cidrs: [10.0.0.0/8, "fd00::/64"], protocol: any}
    - {cidr: 10.0.0.53, ports: [53]}
    - {host: "*.example.com", ports: [443, "8443-8444"]}
    - {host: plain.example.com, tls: false, ports: [80]}
    - {service: inventory}`, BINDING));
    expect(formatEgress(egress ?? null)).toEqual([
      'egress: audit (nothing is refused; what would be is logged), 6 rule(s)',
      '  allow[1]: 10.0.0.0/8, fd00::/64 any port any',
      '  allow[2]: 10.0.0.53/32 port 53 tcp',
      '  allow[3]: *.example.com ports 443, 8443-8444 tcp, TLS server name',
      '  allow[4]: plain.example.com port 80 tcp, plaintext Host',
      '  allow[5]: service inventory: 10.20.0.7/32, 10.20.1.0/24 port 8080 tcp',
      '  binding app-openai: service openai: api.openai.com port 443 tcp, TLS server name',
      '  sockets other than TCP and UDP (raw, ICMP, SCTP, UDP-Lite): would be refused at socket()',
    ]);
  });
});
