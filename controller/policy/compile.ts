/**
 * A checked policy to the plan the agent applies: names resolved to small
 * ids, hosts and cgroup paths in one canonical spelling. Pure.
 */
import type {
  BindingDoc,
  CredentialSourceDoc,
  Injection,
  PlanInjection,
  PlanVaultRead,
  VaultConnectionDoc,
  VaultCredentialSpec,
  Plan,
  PlanBinding,
  PlanCredential,
  PlanService,
  PlanEgress,
  PlanEgressRule,
  PlanWorkload,
  EgressRuleSpec,
  Policy,
  PolicyDoc,
  ServiceDoc,
  WorkloadDoc,
} from './types.js';
import { comparePrecedence } from './precedence.js';
import { parseAddressPrefix } from '../addresses.js';
import { canonicalCidr, mergePorts, normalizeName } from './egress.js';
import { positionOf } from './parse.js';

/** A header injection's value when the policy gives no format: the secret alone. */
export const DEFAULT_HEADER_FORMAT = '{secret}';

/**
 * Compiles `policy` into a plan. Expects a policy that loadPolicy returned
 * (schema-valid, cross-checked): it does not re-check references. Every map
 * and the binding list are ordered by name, so the plan does not depend on
 * file order. Never throws.
 */
export function compilePolicy(policy: Policy): Plan {
  const byName = <D extends PolicyDoc>(kind: D['kind']): D[] =>
    policy.documents
      .filter((d): d is D => d.kind === kind)
      .sort((a, b) => compareNames(a.metadata.name, b.metadata.name));

  // Ids follow precedence, then name, so that the same policy always gets
  // the same ids and the kernel's lowest-id-wins rule is the documented one.
  const workloads = byName<WorkloadDoc>('Workload').sort((a, b) => comparePrecedence(a.spec.selector, b.spec.selector));
  const services = new Map(byName<ServiceDoc>('Service').map((d) => [d.metadata.name, service(d)]));
  const bindings = byName<BindingDoc>('Binding');
  return {
    vaultConnections: new Map(byName<VaultConnectionDoc>('VaultConnection').map((d) => [d.metadata.name, { name: d.metadata.name, ...d.spec, source: d.source }])),
    credentials: new Map(byName<CredentialSourceDoc>('CredentialSource').map((d) => [d.metadata.name, credential(d)])),
    services,
    workloads: new Map(workloads.map((d, i) => [d.metadata.name, workload(d, i + 1, services, bindings)])),
    bindings: bindings.map(binding),
  };
}

/** Host names compare case-insensitively and `example.com.` is `example.com`. */
export function normalizeHost(host: string): string {
  return normalizeName(host);
}

/** `a//b/` and `a/b` name the same cgroup; the kernel side wants `/a/b`. */
export function normalizeCgroup(path: string): string {
  const segments = path.split('/').filter((s) => s !== '');
  return `/${segments.join('/')}`;
}

// Code-unit order, not localeCompare: ids must not depend on the host's locale.
function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function credential(doc: CredentialSourceDoc): PlanCredential {
  const { file, vault } = doc.spec;
  if (file) return { name: doc.metadata.name, file: { ...file }, source: doc.source };
  return { name: doc.metadata.name, vault: vaultRead(vault as VaultCredentialSpec), source: doc.source };
}

/** check.ts has made sure exactly one of kv, aws and path is set, with the fields each needs. */
function vaultRead(v: VaultCredentialSpec): PlanVaultRead {
  if (v.kv !== undefined) {
    const slash = v.kv.indexOf('/');
    return {
      kind: 'kv',
      connection: v.connection,
      mount: v.kv.slice(0, slash),
      path: v.kv.slice(slash + 1),
      field: v.field as string,
      ...(v.version !== undefined ? { version: v.version } : {}),
      refreshMs: parseDuration(v.refresh ?? '5m'),
    };
  }
  if (v.aws !== undefined) return { kind: 'aws', connection: v.connection, path: v.aws };
  return { kind: 'leased', connection: v.connection, path: v.path as string, field: v.field as string };
}

/** `30s`, `5m`, `1h`, `500ms` in milliseconds (the schema allows nothing else). */
export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(text);
  if (!m) throw new RangeError(`not a duration: ${text}`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Number(m[1]) * unit;
}

/** check.ts has made sure a TLS service has hosts and a plaintext one valid addresses. */
function service(doc: ServiceDoc): PlanService {
  const { name } = doc.metadata;
  const hosts = [...new Set((doc.spec.hosts ?? []).map(normalizeHost))];
  if (doc.spec.tls) return { name, datapath: 'proxy', hosts, port: doc.spec.port, tls: true };
  const addresses = [...new Set((doc.spec.addresses ?? []).map((a) => parseAddressPrefix(a)?.text ?? a))];
  return { name, datapath: 'kernel', addresses, hosts, port: doc.spec.port, tls: false };
}

function workload(doc: WorkloadDoc, id: number, services: Map<string, PlanService>, bindings: BindingDoc[]): PlanWorkload {
  const { cgroup, systemdUnit, executable, user, uid } = doc.spec.selector;
  const selector: PlanWorkload['selector'] = {};
  if (cgroup !== undefined) selector.cgroup = normalizeCgroup(cgroup);
  if (systemdUnit !== undefined) selector.systemdUnit = systemdUnit;
  if (executable !== undefined) {
    selector.executable = typeof executable === 'string' ? { path: executable } : { path: executable.path };
    if (typeof executable !== 'string' && executable.sha256) selector.executable.sha256 = executable.sha256.toLowerCase();
  }
  if (user !== undefined) selector.user = user;
  if (uid !== undefined) selector.uid = uid;
  const plan: PlanWorkload = { name: doc.metadata.name, id, selector };
  if (doc.spec.egress) plan.egress = egress(doc, services, bindings.filter((b) => b.spec.workload === doc.metadata.name));
  return plan;
}

/** Every port, and the one port name rules default to (HTTPS). */
const ALL_PORTS = [1, 65535] as const;
const HTTPS_PORT = [443, 443] as const;

/**
 * The allow rules in order (allow[1], allow[2], ...), then one rule per
 * service the workload is bound to, in binding name order: a binding
 * allows its own service. check.ts has made sure every rule is sound.
 */
function egress(doc: WorkloadDoc, services: Map<string, PlanService>, bindings: BindingDoc[]): PlanEgress {
  const spec = doc.spec.egress as NonNullable<WorkloadDoc['spec']['egress']>;
  const rules: PlanEgressRule[] = [];
  spec.allow.forEach((rule, i) => {
    const head = { id: rules.length + 1, label: `allow[${i + 1}]`, source: positionOf(doc, ['spec', 'egress', 'allow', i]) };
    rules.push({ ...head, ...(rule.service !== undefined ? serviceRule(rule.service, services.get(rule.service)) : writtenRule(rule)) });
  });
  for (const b of bindings) {
    rules.push({ id: rules.length + 1, label: `binding ${b.metadata.name}`, source: b.source, ...serviceRule(b.spec.service, services.get(b.spec.service)) });
  }
  return { mode: spec.mode, rules };
}

type RuleBody = Omit<PlanEgressRule, 'id' | 'label' | 'source'>;

/** A Service at its port: a TLS one by its hosts (SNI), a plaintext one by its addresses. */
function serviceRule(name: string, s: PlanService | undefined): RuleBody {
  // Unknown (checkPolicy refuses that): a rule that allows nothing.
  if (s === undefined) return { service: name, cidrs: [], hosts: [], ports: [], protocol: 'tcp', tls: false };
  const ports = [[s.port, s.port] as const];
  if (s.datapath === 'proxy') return { service: s.name, cidrs: [], hosts: s.hosts, ports, protocol: 'tcp', tls: true };
  return { service: s.name, cidrs: canonicalCidrs(s.addresses), hosts: [], ports, protocol: 'tcp', tls: false };
}

/** Canonical and without repeats; text that is no address (checkPolicy refuses it) is left out. */
function canonicalCidrs(texts: string[]): string[] {
  return unique(texts.map(parseAddressPrefix).filter((p) => p !== null).map(canonicalCidr));
}

function writtenRule(rule: EgressRuleSpec): RuleBody {
  const cidrs = rule.cidr !== undefined ? [rule.cidr] : rule.cidrs;
  if (cidrs !== undefined) {
    return {
      cidrs: canonicalCidrs(cidrs),
      hosts: [],
      ports: mergePorts(rule.ports, ALL_PORTS),
      protocol: rule.protocol ?? 'tcp',
      tls: false,
    };
  }
  const hosts = rule.host !== undefined ? [rule.host] : (rule.hosts ?? []);
  return { cidrs: [], hosts: unique(hosts.map(normalizeName)), ports: mergePorts(rule.ports, HTTPS_PORT), protocol: 'tcp', tls: rule.tls ?? true };
}

function unique(items: string[]): string[] {
  return [...new Set(items)];
}

function binding(doc: BindingDoc): PlanBinding {
  const { workload, service } = doc.spec;
  return { name: doc.metadata.name, workload, service, inject: injection(doc.spec.inject) };
}

/** The schema guarantees exactly one injection. */
function injection(inject: Injection): PlanInjection {
  if (inject.sigv4) {
    const { credential, service, region } = inject.sigv4;
    return { kind: 'sigv4', credential, ...(service !== undefined ? { service } : {}), ...(region !== undefined ? { region } : {}) };
  }
  if (inject.header) {
    const { credential, name, format } = inject.header;
    return { kind: 'header', credential, name, format: format ?? DEFAULT_HEADER_FORMAT };
  }
  if (inject.basic) {
    const { credential, username } = inject.basic;
    return { kind: 'basic', credential, ...(username !== undefined ? { username } : {}) };
  }
  return { kind: 'bearer', credential: (inject.bearer as { credential: string }).credential };
}
