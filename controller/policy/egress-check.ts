/**
 * The checks of Workload spec.egress that need more than the schema:
 * services named, addresses, ports, names, and what one workload's rules
 * say together. Pure; positions come from parse.ts.
 */
import type { PolicyDiagnostic } from '../errors.js';
import { parseAddressPrefix } from '../addresses.js';
import { compilePolicy } from './compile.js';
import { egressHostProblem, mergePorts, portRangeProblem } from './egress.js';
import { positionOf, type PolicyPath } from './parse.js';
import { label, repeats, where } from './diagnostic-text.js';
import { closest } from './suggest.js';
import type { BindingDoc, EgressRuleSpec, PlanEgressRule, Policy, PolicyDoc, PortRange, ServiceDoc, WorkloadDoc } from './types.js';

/**
 * Warnings: a restricted workload selected by executable (running another
 * program leaves it); an allow rule that allows exactly what an earlier one of the same
 * workload does, once both are in canonical form (`10.0.0.1` is
 * `10.0.0.1/32`, `[443, 80]` is `[80, 443]`): harmless, and probably a
 * copy meant to be edited. Expects a policy without errors. Never throws.
 */
export function egressWarnings(policy: Policy): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  const plan = compilePolicy(policy);
  for (const doc of policy.documents) {
    if (doc.kind !== 'Workload' || !doc.spec.egress) continue;
    if (doc.spec.selector.executable !== undefined) {
      out.push({
        ...positionOf(doc, ['spec', 'selector', 'executable']),
        message: `${label(doc)}: spec.egress: the workload is selected by executable, so a process of it that runs another program ` +
          '(a shell, a copy of itself) is no longer the workload and its egress is not restricted; to restrict everything it runs, select it by cgroup or systemdUnit (and user) alone',
        severity: 'warning',
      });
    }
    const rules = (plan.workloads.get(doc.metadata.name)?.egress?.rules ?? []).slice(0, doc.spec.egress.allow.length);
    const what = (r: PlanEgressRule) => JSON.stringify([r.cidrs, r.hosts, r.ports, r.protocol, r.tls]);
    for (const [later, earlier] of repeats(rules.map((r, i) => ({ r, i })), ({ r }) => what(r))) {
      out.push({
        ...positionOf(doc, ['spec', 'egress', 'allow', later.i]),
        message: `${label(doc)}: spec.egress.allow[${later.i}]: allows the same as spec.egress.allow[${earlier.i}] (${where(earlier.r.source)}); remove one`,
        severity: 'warning',
      });
    }
  }
  return out;
}

/**
 * Each egress rule on its own (the schema has made sure it names exactly
 * one kind of destination), then what the rules of one workload say
 * together. Empty when there is nothing to say. Never throws.
 */
export function checkEgress(workloads: WorkloadDoc[], services: ServiceDoc[], bindings: BindingDoc[]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  const byName = new Map(services.map((s) => [s.metadata.name, s]));
  for (const w of workloads) {
    const egress = w.spec.egress;
    if (!egress) continue;
    const before = out.length;
    egress.allow.forEach((rule, i) => {
      const base = ['spec', 'egress', 'allow', i] as const;
      const say = (path: PolicyPath, message: string) =>
        out.push({ ...positionOf(w, [...base, ...path]), message: `${label(w)}: spec.egress.allow[${i}]${path.length ? `.${path.join('.').replace(/\.(\d+)/g, '[$1]')}` : ''}: ${message}` });
      if (rule.service !== undefined) {
        const service = byName.get(rule.service);
        if (!service) {
          const guess = closest(rule.service, [...byName.keys()]);
          say(['service'], `no Service named ${JSON.stringify(rule.service)}${guess ? `: did you mean ${JSON.stringify(guess)}?` : ''}`);
        }
        const says = service ? `${label(service)} says it (port ${service.spec.port}, tls: ${service.spec.tls})` : 'the service says it';
        if (rule.ports !== undefined) say(['ports'], `a service rule takes no ports: ${says}`);
        if (rule.protocol !== undefined) say(['protocol'], 'a service rule takes no protocol: a service is reached over TCP');
        if (rule.tls !== undefined) say(['tls'], `a service rule takes no tls: ${says}`);
        return;
      }
      rule.ports?.forEach((p, j) => {
        const problem = portRangeProblem(p);
        if (problem) say(['ports', j], problem);
      });
      const cidrs = rule.cidr !== undefined ? [{ text: rule.cidr, path: ['cidr'] }] : rule.cidrs?.map((text, j) => ({ text, path: ['cidrs', j] }));
      if (cidrs) {
        for (const c of cidrs) {
          if (!parseAddressPrefix(c.text)) say(c.path, `${JSON.stringify(c.text)} is not an IP address or CIDR`);
        }
        if (rule.tls !== undefined) {
          say(['tls'], 'tls is for host rules: an address rule allows addresses whatever is sent to them; to allow names, use host or hosts');
        }
        return;
      }
      const hosts = rule.host !== undefined ? [{ text: rule.host, path: ['host'] }] : (rule.hosts ?? []).map((text, j) => ({ text, path: ['hosts', j] }));
      for (const h of hosts) {
        const problem = egressHostProblem(h.text);
        if (problem) say(h.path, problem);
      }
      if (rule.protocol !== undefined && rule.protocol !== 'tcp') {
        say(['protocol'], `host rules are TCP only: names are matched on the TLS server name (SNI) or the HTTP Host header, ` +
          `and a UDP datagram carries neither, so ${rule.protocol === 'udp' ? 'UDP' : 'UDP (any)'} to a name cannot be checked; ` +
          'allow UDP with a cidr rule');
      }
      if (rule.tls === false && rule.ports === undefined) {
        say(['tls'], 'a plaintext host rule (tls: false) needs ports, such as [80]: only TLS host rules default to 443');
      }
    });
    if (out.length === before) out.push(...mixedNamePorts(w, egress.allow, byName, bindings));
    if (out.length === before) out.push(...tooManyNamePorts(w, egress.allow));
    if (out.length === before) out.push(...namePortsOverKernelBindings(w, egress.allow, byName, bindings));
  }
  return out;
}

/**
 * The kernel sends a port's TCP connections to the proxy, which checks
 * the TLS server name there or the plaintext Host: one port of one
 * workload cannot be both.
 */
function mixedNamePorts(w: WorkloadDoc, allow: EgressRuleSpec[], services: Map<string, ServiceDoc>, bindings: BindingDoc[]): PolicyDiagnostic[] {
  interface Claim { ranges: PortRange[]; tls: boolean; doc: PolicyDoc; path: PolicyPath; what: string }
  const claims: Claim[] = [];
  const tlsService = (name: string) => services.get(name)?.spec.tls === true;
  allow.forEach((rule, i) => {
    const path = ['spec', 'egress', 'allow', i];
    const what = `spec.egress.allow[${i}]`;
    if (rule.host !== undefined || rule.hosts !== undefined) {
      claims.push({ ranges: mergePorts(rule.ports, [443, 443]), tls: rule.tls ?? true, doc: w, path, what });
    } else if (rule.service !== undefined && tlsService(rule.service)) {
      const port = (services.get(rule.service) as ServiceDoc).spec.port;
      claims.push({ ranges: [[port, port]], tls: true, doc: w, path, what });
    }
  });
  for (const b of bindings.filter((b) => b.spec.workload === w.metadata.name && tlsService(b.spec.service))) {
    const port = (services.get(b.spec.service) as ServiceDoc).spec.port;
    claims.push({ ranges: [[port, port]], tls: true, doc: b, path: ['spec', 'service'], what: label(b) });
  }
  const out: PolicyDiagnostic[] = [];
  claims.forEach((claim, i) => {
    for (const earlier of claims.slice(0, i)) {
      if (earlier.tls === claim.tls) continue;
      const port = firstCommonPort(claim.ranges, earlier.ranges);
      if (port === undefined) continue;
      // Said at the plaintext rule, which is always one of the workload's own.
      const [plain, other] = claim.tls ? [earlier, claim] : [claim, earlier];
      out.push({
        ...positionOf(w, plain.path),
        message:
          `${label(w)}: ${plain.what}: port ${port} has a plaintext host rule here and a TLS one in ${other.what} ` +
          `(${where(positionOf(other.doc, other.path))}); the proxy checks either the TLS server name or the Host on a port, not both: ` +
          'use another port for one of them',
      });
      return;
    }
  });
  return out;
}

/**
 * Ports the name rules of one workload may cover: each is a (workload,
 * port) entry the kernel sends to the proxy, and those entries are shared
 * with bindings (WK_MAX_BINDINGS for all workloads together).
 */
export const EGRESS_MAX_NAME_PORTS = 64;

function tooManyNamePorts(w: WorkloadDoc, allow: EgressRuleSpec[]): PolicyDiagnostic[] {
  const ports = new Set<number>();
  for (const [i, rule] of allow.entries()) {
    if (rule.host === undefined && rule.hosts === undefined) continue;
    for (const [lo, hi] of mergePorts(rule.ports, [443, 443])) {
      for (let p = lo; p <= hi && ports.size <= EGRESS_MAX_NAME_PORTS; p++) ports.add(p);
    }
    if (ports.size > EGRESS_MAX_NAME_PORTS) {
      return [{
        ...positionOf(w, ['spec', 'egress', 'allow', i, 'ports']),
        message: `${label(w)}: spec.egress.allow[${i}].ports: host rules of one workload may cover at most ${EGRESS_MAX_NAME_PORTS} ports ` +
          '(each port\'s TCP connections go to the proxy, which checks the name); allow wide port ranges with a cidr rule',
      }];
    }
  }
  return [];
}

/**
 * A plaintext service bound to the workload is injected by the kernel
 * datapath on the connection's own way out; a plaintext host rule on the
 * same port would send those connections to the proxy instead, where no
 * credential is added. Said at the host rule.
 */
function namePortsOverKernelBindings(w: WorkloadDoc, allow: EgressRuleSpec[], services: Map<string, ServiceDoc>, bindings: BindingDoc[]): PolicyDiagnostic[] {
  const kernelPorts = new Map<number, BindingDoc>();
  for (const b of bindings.filter((b) => b.spec.workload === w.metadata.name)) {
    const service = services.get(b.spec.service);
    if (service && service.spec.tls === false && !kernelPorts.has(service.spec.port)) kernelPorts.set(service.spec.port, b);
  }
  for (const [i, rule] of allow.entries()) {
    if ((rule.host === undefined && rule.hosts === undefined) || rule.tls !== false) continue;
    for (const [port, binding] of kernelPorts) {
      if (!mergePorts(rule.ports, [443, 443]).some(([lo, hi]) => port >= lo && port <= hi)) continue;
      return [{
        ...positionOf(w, ['spec', 'egress', 'allow', i]),
        message: `${label(w)}: spec.egress.allow[${i}]: port ${port} has a plaintext host rule here and ${label(binding)} ` +
          `(${where(positionOf(binding, ['spec', 'service']))}), which the kernel datapath injects on that port; ` +
          'the host rule would send those connections to the proxy, which adds no credential: use another port for one of them',
      }];
    }
  }
  return [];
}

function firstCommonPort(a: readonly PortRange[], b: readonly PortRange[]): number | undefined {
  let best: number | undefined;
  for (const [alo, ahi] of a) {
    for (const [blo, bhi] of b) {
      const lo = Math.max(alo, blo);
      if (lo <= Math.min(ahi, bhi) && (best === undefined || lo < best)) best = lo;
    }
  }
  return best;
}
