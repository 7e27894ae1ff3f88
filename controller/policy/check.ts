/**
 * Checks that need every document at once: names, references and conflicts.
 * Pure; positions come from parse.ts.
 */
import type { PolicyDiagnostic } from '../errors.js';
import { normalizeHost } from './compile.js';
import { checkEgress, egressWarnings } from './egress-check.js';
import { positionOf, type PolicyPath } from './parse.js';
import { label, repeats, where } from './diagnostic-text.js';
import type { BindingDoc, CredentialSourceDoc, InjectionKind, Kind, Policy, PolicyDoc, ServiceDoc, VaultConnectionDoc, WorkloadDoc, WorkloadSelector } from './types.js';
import { MIN_PREFIX, parseAddressPrefix, prefixesOverlap, tooBroad, vaultAddressProblem, type AddressPrefix } from '../addresses.js';
import { inferAwsScope } from './aws-scope.js';
import { MAX_WORKLOADS, comparePrecedence, couldOverlap } from './precedence.js';
import { WK_HTTP_HOST_MAX, WK_HTTP_MAX_HOSTS } from '../kernel-limits.js';

/**
 * Cross-document problems in `policy`, in document order; empty when there
 * are none. Expects documents that each passed parsePolicyText. Never throws.
 */
export function checkPolicy(policy: Policy): PolicyDiagnostic[] {
  const duplicates = repeats(policy.documents, (d) => `${d.kind}/${d.metadata.name}`);
  // A name defined twice is one mistake, said once: the checks below see
  // only its first definition, or a copied file would also be reported for
  // every binding, host and selector it shares with the original.
  const repeated = new Set(duplicates.map(([doc]) => doc));
  const docs = policy.documents.filter((d) => !repeated.has(d));
  const bindings = docs.filter((d): d is BindingDoc => d.kind === 'Binding');
  const services = docs.filter((d): d is ServiceDoc => d.kind === 'Service');
  const workloads = docs.filter((d): d is WorkloadDoc => d.kind === 'Workload');
  return [
    ...duplicateNames(policy.documents, duplicates),
    ...danglingReferences(docs),
    ...vaultSources(docs.filter((d): d is CredentialSourceDoc => d.kind === 'CredentialSource')),
    ...vaultAddresses(docs.filter((d): d is VaultConnectionDoc => d.kind === 'VaultConnection')),
    ...ambiguousBindings(bindings),
    ...serviceShapes(services),
    ...plaintextHosts(services),
    ...sigv4Scopes(bindings, services),
    ...kernelBindings(bindings, services),
    ...headerNames(bindings),
    ...sharedEndpoints(services),
    ...sharedAddresses(services),
    ...userAndUid(workloads),
    ...ambiguousWorkloads(workloads),
    ...tooManyWorkloads(workloads),
    ...checkEgress(workloads, services, bindings),
  ];
}

/**
 * What is valid but probably not meant: a plaintext service without hosts
 * sends its credential to whatever answers on its addresses, whichever host
 * a request names. Empty when there is nothing to say. Never throws.
 */
export function policyWarnings(policy: Policy): PolicyDiagnostic[] {
  const openServices = policy.documents
    .filter((d): d is ServiceDoc => d.kind === 'Service' && d.spec.tls === false && !d.spec.hosts)
    .map((s) => ({
      ...positionOf(s, ['spec']),
      message:
        `${label(s)}: spec.hosts: a plaintext service without hosts injects whatever Host a request names; ` +
        'behind a front that routes by Host (a reverse proxy, an ingress, a load balancer) the credential goes to ' +
        'whichever backend that Host selects; list the host names the service answers to',
      severity: 'warning' as const,
    }));
  const broad = policy.documents
    .filter((d): d is WorkloadDoc => d.kind === 'Workload')
    .flatMap((w) => {
      const why = broadSelector(w.spec.selector);
      return why ? [{ ...positionOf(w, ['spec', 'selector']), message: `${label(w)}: spec.selector: ${why}`, severity: 'warning' as const }] : [];
    });
  return [...openServices, ...broad, ...egressWarnings(policy)];
}

/**
 * Why a selector matches far more than a service, or undefined: the root
 * cgroup (every process on the host) with nothing else, or root's uid with
 * no cgroup, unit or executable (every process of root). Valid, and almost
 * never meant: every such process gets the workload's bindings.
 */
function broadSelector(s: WorkloadSelector): string | undefined {
  const rootCgroup = s.cgroup !== undefined && s.cgroup.split('/').every((seg) => seg === '' || seg === '.');
  const narrowed = (s.cgroup !== undefined && !rootCgroup) || s.systemdUnit !== undefined || s.executable !== undefined;
  const root = s.uid === 0 || s.user === 'root';
  if (rootCgroup && !s.systemdUnit && !s.executable && s.uid === undefined && s.user === undefined) {
    return 'the root cgroup alone matches every process on the host, and each gets this workload\'s bindings; select the service\'s own cgroup or unit';
  }
  if (root && !narrowed) {
    return 'root alone matches every process of root, and each gets this workload\'s bindings; select the service\'s cgroup, unit or executable as well';
  }
  return undefined;
}

function userAndUid(workloads: WorkloadDoc[]): PolicyDiagnostic[] {
  return workloads
    .filter((w) => w.spec.selector.user !== undefined && w.spec.selector.uid !== undefined)
    .map((w) => ({
      ...positionOf(w, ['spec', 'selector', 'uid']),
      message: `${label(w)}: spec.selector: give user or uid, not both`,
    }));
}

/**
 * Two workloads that could match the same process and that precedence
 * (controller/policy/precedence.ts) cannot order: which one a process
 * belongs to would be arbitrary, so the policy must say.
 */
function ambiguousWorkloads(workloads: WorkloadDoc[]): PolicyDiagnostic[] {
  // Pairwise, so quadratic: a policy over the limit is refused for that alone (tooManyWorkloads), not checked for minutes.
  if (workloads.length > MAX_WORKLOADS) return [];
  const out: PolicyDiagnostic[] = [];
  for (let i = 0; i < workloads.length; i++) {
    for (let j = 0; j < i; j++) {
      const [a, b] = [workloads[i] as WorkloadDoc, workloads[j] as WorkloadDoc];
      if (a.metadata.name === b.metadata.name) continue; // reported as a duplicate name
      if (comparePrecedence(a.spec.selector, b.spec.selector) !== 0) continue;
      if (!couldOverlap(a.spec.selector, b.spec.selector)) continue;
      out.push({
        ...positionOf(a, ['spec', 'selector']),
        message:
          `${label(a)} and ${label(b)} (${where(positionOf(b, ['spec', 'selector']))}) could both match one process ` +
          'and neither is more specific; add a selector to one of them or make them disjoint',
      });
    }
  }
  return out;
}

function tooManyWorkloads(workloads: WorkloadDoc[]): PolicyDiagnostic[] {
  const extra = workloads[MAX_WORKLOADS];
  if (!extra) return [];
  return [{ ...positionOf(extra, ['metadata', 'name']), message: `at most ${MAX_WORKLOADS} workloads are supported; this is number ${MAX_WORKLOADS + 1}` }];
}

/**
 * One message per document defined again, except for a file whose every
 * document repeats one file (a copy, or a renamed file left behind): one
 * message for that file.
 */
function duplicateNames(all: PolicyDoc[], duplicates: [PolicyDoc, PolicyDoc][]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  const copies = new Set<string>();
  for (const [doc, earlier] of duplicates) {
    const file = doc.source.file;
    if (copies.has(file)) continue;
    const inFile = all.filter((d) => d.source.file === file);
    const originals = inFile.map((d) => duplicates.find(([repeat]) => repeat === d)?.[1]);
    const from = originals[0]?.source.file;
    if (inFile.length > 1 && from !== file && originals.every((o) => o !== undefined && o.source.file === from)) {
      copies.add(file);
      out.push({
        ...positionOf(inFile[0] as PolicyDoc, ['metadata', 'name']),
        message: `all ${inFile.length} documents of this file are already defined in ${from} (${inFile.slice(0, 3).map(label).join(', ')}${inFile.length > 3 ? ', ...' : ''}); ` +
          'is it a copy? Keep one of the two files',
      });
      continue;
    }
    out.push({
      ...positionOf(doc, ['metadata', 'name']),
      message: `duplicate ${label(doc)}: already defined at ${where(positionOf(earlier, ['metadata', 'name']))}`,
    });
  }
  return out;
}


interface Reference {
  path: PolicyPath;
  kind: Kind;
  name: string;
}

/** Every name a binding refers to, with where it is written. */
function bindingReferences(binding: BindingDoc): Reference[] {
  const { spec } = binding;
  return [
    { path: ['spec', 'workload'], kind: 'Workload', name: spec.workload },
    { path: ['spec', 'service'], kind: 'Service', name: spec.service },
    { path: ['spec', 'inject', injectionKind(binding), 'credential'], kind: 'CredentialSource', name: injectionOf(binding).credential },
  ];
}

/** The one injection key a binding sets (the schema guarantees exactly one). */
function injectionKind(binding: BindingDoc): InjectionKind {
  return INJECTION_KINDS.find((k) => binding.spec.inject[k] !== undefined) ?? 'bearer';
}

function injectionOf(binding: BindingDoc): { credential: string } {
  return binding.spec.inject[injectionKind(binding)] as { credential: string };
}

const INJECTION_KINDS: InjectionKind[] = ['bearer', 'header', 'basic', 'sigv4'];

/**
 * TLS services name hosts and go through the proxy; plaintext services are
 * pinned to addresses and injected by the kernel. Each address must parse.
 */
function serviceShapes(services: ServiceDoc[]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  for (const s of services) {
    const say = (path: PolicyPath, message: string) => out.push({ ...positionOf(s, path), message: `${label(s)}: ${message}` });
    const { hosts, addresses, tls, datapath } = s.spec;
    if (tls) {
      if (!hosts) say(['spec'], 'spec.hosts: a TLS service needs the host names it answers to');
      if (addresses) say(['spec', 'addresses'], 'spec.addresses: pinned addresses are for plaintext services (tls: false); a TLS service is matched by its hosts');
      if (datapath === 'kernel') {
        say(['spec', 'datapath'], 'spec.datapath: the kernel datapath injects into plaintext HTTP only; a TLS service needs datapath: proxy');
      }
      (hosts ?? []).forEach((h, i) => {
        // An IPv4 literal (a numeric last label) or an IPv6 one: TLS clients send no server name for an address.
        if (/(^|\.)[0-9]+\.?$/.test(h) || h.includes(':')) {
          say(['spec', 'hosts', i], `spec.hosts[${i}]: ${JSON.stringify(h)} is an IP address: clients send no TLS server name for an address, so no connection would ever match it; name the service's host names`);
        }
      });
      continue;
    }
    if (!addresses) say(['spec'], 'spec.addresses: a plaintext service (tls: false) needs the IP addresses or CIDRs it is pinned to');
    if (datapath === 'proxy') {
      say(['spec', 'datapath'], 'spec.datapath: the proxy handles TLS services; a plaintext service (tls: false) uses datapath: kernel');
    }
    (addresses ?? []).forEach((a, i) => {
      const prefix = parseAddressPrefix(a);
      if (!prefix) say(['spec', 'addresses', i], `spec.addresses[${i}]: ${JSON.stringify(a)} is not an IP address or CIDR`);
      else if (tooBroad(prefix)) {
        say(['spec', 'addresses', i], `spec.addresses[${i}]: ${a} is too broad: the credential would go to every address in it ` +
          `(pin the service's own addresses; at most /${MIN_PREFIX.ipv4} for IPv4, /${MIN_PREFIX.ipv6} for IPv6)`);
      }
    });
  }
  return out;
}

/**
 * A plaintext service's hosts are checked by the kernel against each
 * request's Host: each must fit the kernel's key (WK_HTTP_HOST_MAX), and
 * all of them together its map (WK_HTTP_MAX_HOSTS), or the policy could
 * not be applied whole.
 */
function plaintextHosts(services: ServiceDoc[]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  let total = 0;
  for (const s of services) {
    if (s.spec.tls !== false) continue;
    const hosts = s.spec.hosts ?? [];
    hosts.forEach((h, i) => {
      if (normalizeHost(h).length > WK_HTTP_HOST_MAX) {
        out.push({ ...positionOf(s, ['spec', 'hosts', i]), message: `${label(s)}: spec.hosts[${i}]: longer than ${WK_HTTP_HOST_MAX} characters` });
      }
    });
    total += new Set(hosts.map(normalizeHost)).size;
    if (total > WK_HTTP_MAX_HOSTS) {
      out.push({
        ...positionOf(s, ['spec', 'hosts']),
        message: `${label(s)}: spec.hosts: plaintext services may list at most ${WK_HTTP_MAX_HOSTS} hosts together; this makes ${total}`,
      });
      total = -Infinity; // said once
    }
  }
  return out;
}

/**
 * What the kernel datapath cannot do: sign (SigV4 reads the whole request),
 * and reach a plaintext service on a port whose connections the same
 * workload has redirected to the proxy.
 */
function kernelBindings(bindings: BindingDoc[], services: ServiceDoc[]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  const byName = new Map(services.map((s) => [s.metadata.name, s]));
  const isKernel = (s: ServiceDoc | undefined) => s !== undefined && s.spec.tls === false;
  for (const b of bindings) {
    const service = byName.get(b.spec.service);
    if (!isKernel(service)) continue;
    if (b.spec.inject.sigv4) {
      out.push({
        ...positionOf(b, ['spec', 'inject', 'sigv4']),
        message: `${label(b)}: spec.inject.sigv4: SigV4 signs the whole request and needs the proxy; ${label(service as ServiceDoc)} is plaintext (kernel datapath), which takes bearer, header or basic`,
      });
    }
    const viaProxy = bindings.find((o) => o.spec.workload === b.spec.workload && !isKernel(byName.get(o.spec.service)) &&
      byName.get(o.spec.service)?.spec.port === service?.spec.port);
    if (viaProxy) {
      out.push({
        ...positionOf(b, ['spec', 'service']),
        message:
          `${label(b)}: workload ${JSON.stringify(b.spec.workload)} has its port ${service?.spec.port} connections sent to the proxy by ` +
          `${label(viaProxy)} (${where(positionOf(viaProxy, ['spec', 'service']))}), so the kernel datapath would never see them; ` +
          'use a different port or workload',
      });
    }
  }
  return out;
}

/** Headers that frame or route the request: injecting one would change what the request means. */
const RESERVED_HEADERS = new Set([
  'host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive', 'proxy-connection', 'expect',
]);

function headerNames(bindings: BindingDoc[]): PolicyDiagnostic[] {
  return bindings
    .filter((b) => b.spec.inject.header && RESERVED_HEADERS.has(b.spec.inject.header.name.toLowerCase()))
    .map((b) => ({
      ...positionOf(b, ['spec', 'inject', 'header', 'name']),
      message: `${label(b)}: spec.inject.header.name: ${b.spec.inject.header?.name} frames or routes the request and cannot carry a credential`,
    }));
}

/**
 * SigV4 needs a signing name and region: given, or inferred from every host
 * of the service (an AWS host name).
 */
function sigv4Scopes(bindings: BindingDoc[], services: ServiceDoc[]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  for (const b of bindings) {
    const sig = b.spec.inject.sigv4;
    if (!sig || (sig.service && sig.region)) continue;
    if (sig.service || sig.region) {
      // One without the other would be ignored, the host's inferred scope used instead.
      const given = sig.service ? 'service' : 'region';
      out.push({
        ...positionOf(b, ['spec', 'inject', 'sigv4', given]),
        message: `${label(b)}: spec.inject.sigv4: ${given} is set without ${sig.service ? 'region' : 'service'}: set both, or neither to infer them from the host`,
      });
      continue;
    }
    const service = services.find((s) => s.metadata.name === b.spec.service);
    const unknown = (service?.spec.hosts ?? []).filter((h) => !inferAwsScope(normalizeHost(h)));
    if (unknown.length) {
      out.push({
        ...positionOf(b, ['spec', 'inject', 'sigv4']),
        message: `${label(b)}: spec.inject.sigv4: set service and region: they cannot be inferred from ${unknown.join(', ')}`,
      });
    }
  }
  return out;
}

/** Every name a document refers to, with where it is written. */
function references(doc: PolicyDoc): Reference[] {
  if (doc.kind === 'Binding') return bindingReferences(doc);
  if (doc.kind === 'CredentialSource' && doc.spec.vault) {
    return [{ path: ['spec', 'vault', 'connection'], kind: 'VaultConnection', name: doc.spec.vault.connection }];
  }
  return [];
}

function danglingReferences(docs: PolicyDoc[]): PolicyDiagnostic[] {
  const defined = new Set(docs.map((d) => `${d.kind}/${d.metadata.name}`));
  return docs.flatMap((doc) =>
    references(doc)
      .filter((ref) => !defined.has(`${ref.kind}/${ref.name}`))
      .map((ref) => ({
        ...positionOf(doc, ref.path),
        message: `${label(doc)}: ${ref.path.join('.')}: no ${ref.kind} named ${JSON.stringify(ref.name)}`,
      })),
  );
}

/**
 * A Vault source reads exactly one of kv, aws and path; kv and path need a
 * field (AWS keys come as a set); version and refresh apply to kv only.
 */
/** The agent's token and every secret go over this address: in clear only on loopback. */
function vaultAddresses(connections: VaultConnectionDoc[]): PolicyDiagnostic[] {
  return connections.flatMap((doc) => {
    const problem = vaultAddressProblem(doc.spec.address);
    return problem ? [{ ...positionOf(doc, ['spec', 'address']), message: `${label(doc)}: spec.address: ${problem}` }] : [];
  });
}

function vaultSources(sources: CredentialSourceDoc[]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  for (const doc of sources) {
    const v = doc.spec.vault;
    if (!v) continue;
    const at = (key: string) => positionOf(doc, ['spec', 'vault', key]);
    const say = (key: string, message: string) => out.push({ ...at(key), message: `${label(doc)}: spec.vault: ${message}` });
    const reads = (['kv', 'aws', 'path'] as const).filter((k) => v[k] !== undefined);
    if (reads.length !== 1) {
      out.push({ ...positionOf(doc, ['spec', 'vault']), message: `${label(doc)}: spec.vault: set exactly one of kv, aws and path` });
      continue;
    }
    const read = reads[0] as 'kv' | 'aws' | 'path';
    if (read !== 'aws' && v.field === undefined) say(read, `${read} needs a field: the key of the value to inject`);
    if (read === 'aws' && v.field !== undefined) say('field', 'aws yields access key, secret key and session token together; remove field');
    if (read !== 'kv' && v.version !== undefined) say('version', 'version applies to kv only');
    if (read !== 'kv' && v.refresh !== undefined) say('refresh', 'refresh applies to kv only (leased secrets follow their lease)');
  }
  return out;
}

function ambiguousBindings(bindings: BindingDoc[]): PolicyDiagnostic[] {
  const pair = (b: BindingDoc) => JSON.stringify([b.spec.workload, b.spec.service]);
  return repeats(bindings, pair).map(([binding, earlier]) => ({
    ...positionOf(binding, ['metadata', 'name']),
    message:
      `${label(binding)}: workload ${JSON.stringify(binding.spec.workload)} and service ` +
      `${JSON.stringify(binding.spec.service)} are already bound by ${label(earlier)} at ` +
      `${where(positionOf(earlier, ['metadata', 'name']))}; two bindings for one workload and service are ambiguous`,
  }));
}

function sharedEndpoints(services: ServiceDoc[]): PolicyDiagnostic[] {
  // Plaintext services are found by address; their hosts only restrict what a request may name.
  const claims = services.filter((s) => s.spec.tls).flatMap((service) =>
    (service.spec.hosts ?? []).map((host, i) => ({ service, i, endpoint: `${normalizeHost(host)}:${service.spec.port}` })),
  );
  // The proxy picks a service by host and port; two owners would make that a guess.
  // One service naming a host twice (in different case) is harmless.
  return repeats(claims, (c) => c.endpoint)
    .filter(([claim, earlier]) => claim.service !== earlier.service)
    .map(([claim, earlier]) => ({
      ...positionOf(claim.service, ['spec', 'hosts', claim.i]),
      message:
        `${label(claim.service)}: ${claim.endpoint} is already claimed by ${label(earlier.service)} ` +
        `at ${where(positionOf(earlier.service, ['spec', 'hosts', earlier.i]))}`,
    }));
}

/** One plaintext destination, one service: the kernel looks a connection up by address and port. */
function sharedAddresses(services: ServiceDoc[]): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  const seen: { service: ServiceDoc; i: number; prefix: AddressPrefix }[] = [];
  for (const service of services) {
    if (service.spec.tls !== false) continue;
    (service.spec.addresses ?? []).forEach((text, i) => {
      const prefix = parseAddressPrefix(text);
      if (!prefix) return; // reported by serviceShapes
      const clash = seen.find((e) => e.service !== service && e.service.spec.port === service.spec.port && prefixesOverlap(e.prefix, prefix));
      if (clash) {
        out.push({
          ...positionOf(service, ['spec', 'addresses', i]),
          message:
            `${label(service)}: ${text} port ${service.spec.port} overlaps ${clash.prefix.text} of ${label(clash.service)} ` +
            `at ${where(positionOf(clash.service, ['spec', 'addresses', clash.i]))}; an address can belong to one service per port`,
        });
      }
      seen.push({ service, i, prefix });
    });
  }
  return out;
}
