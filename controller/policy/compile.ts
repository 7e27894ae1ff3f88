/**
 * A checked policy to the plan the agent applies: names resolved to small
 * ids, hosts and cgroup paths in one canonical spelling. Pure.
 */
import type {
  BindingDoc,
  CredentialSourceDoc,
  Plan,
  PlanBinding,
  PlanCredential,
  PlanService,
  PlanWorkload,
  Policy,
  PolicyDoc,
  ServiceDoc,
  WorkloadDoc,
} from './types.js';

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

  const workloads = byName<WorkloadDoc>('Workload');
  return {
    credentials: new Map(byName<CredentialSourceDoc>('CredentialSource').map((d) => [d.metadata.name, credential(d)])),
    services: new Map(byName<ServiceDoc>('Service').map((d) => [d.metadata.name, service(d)])),
    // Ids follow name order so that the same policy always gets the same ids.
    workloads: new Map(workloads.map((d, i) => [d.metadata.name, workload(d, i + 1)])),
    bindings: byName<BindingDoc>('Binding').map(binding),
  };
}

/** Host names compare case-insensitively and `example.com.` is `example.com`. */
export function normalizeHost(host: string): string {
  return host.toLowerCase().replace(/\.$/, '');
}

/** `a//b/` and `a/b` name the same cgroup; the kernel side wants `/a/b`. */
function normalizeCgroup(path: string): string {
  const segments = path.split('/').filter((s) => s !== '');
  return `/${segments.join('/')}`;
}

// Code-unit order, not localeCompare: ids must not depend on the host's locale.
function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function credential(doc: CredentialSourceDoc): PlanCredential {
  return { name: doc.metadata.name, file: { ...doc.spec.file }, source: doc.source };
}

function service(doc: ServiceDoc): PlanService {
  const hosts = [...new Set(doc.spec.hosts.map(normalizeHost))];
  return { name: doc.metadata.name, hosts, port: doc.spec.port, tls: true };
}

function workload(doc: WorkloadDoc, id: number): PlanWorkload {
  return { name: doc.metadata.name, id, cgroup: normalizeCgroup(doc.spec.selector.cgroup) };
}

function binding(doc: BindingDoc): PlanBinding {
  const { workload, service, inject } = doc.spec;
  return {
    name: doc.metadata.name,
    workload,
    service,
    inject: { kind: 'bearer', credential: inject.bearer.credential },
  };
}
