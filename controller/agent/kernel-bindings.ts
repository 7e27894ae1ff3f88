/**
 * The plan's plaintext services as the kernel HTTP datapath holds them:
 * pinned destinations, and per (workload, service) the header line its
 * binding injects, kept current as credentials rotate.
 *
 * Service ids are this class's own and stable across reloads (a name keeps
 * its id); workload ids are the plan's. When a reload gives a workload name
 * another id, the kernel's epoch is bumped, so a connection opened under the
 * old numbering has its next request refused instead of taking another
 * binding's header. When a reload gives a bound workload other selectors,
 * its selection moves on, and its connections opened under the old
 * selectors have their next request refused; other workloads' go on.
 */
import { createHash } from 'node:crypto';
import type { KernelHttp, HttpBinding, PinnedDestination, ServiceHosts } from '../datapath/kernel-http.js';
import type { KernelHttpEvent } from '../datapath/kernel-events.js';
import type { AuditEvent } from '../audit/audit-log.js';
import { headerLine } from '../datapath/kernel-http.js';
import { httpStatRefusal } from '../datapath/layout.js';
import type { CredentialSources } from '../credentials/sources.js';
import { credentialHeader } from '../inject/inject.js';
import type { Plan, PlanBinding, PlanKernelService } from '../policy/types.js';
import type { Logger } from '../log.js';

/** What one kernel-path binding injects now: a header, or nothing (withheld). */
interface Wanted {
  binding: PlanBinding;
  workloadId: number;
  serviceId: number;
  header: HttpBinding['header'];
  /** A digest of the line, to tell a rotation from a refresh that changed nothing. */
  digest: string;
  /** The credential's own version (a KV version), for audit. */
  credentialVersion: string | undefined;
}

/** What an audit line says about a binding: names, and which credential version each header version carried. */
interface Described {
  workload: string;
  service: string;
  credential: string;
  /** header version (KernelHttp's counter) -> credential version; the last few only. */
  versions: Map<number, string | undefined>;
}

/** Header versions remembered per binding, for events that arrive after a rotation. */
const VERSIONS_KEPT = 8;
/** Earlier id epochs whose names are kept, for usage counted under them and read after a renumbering. */
const EPOCHS_KEPT = 4;

/** Who a kernel usage entry (KernelHttp.usage()) counts, by the policy's names. */
export interface UsageNames {
  workload: string;
  service: string;
  credential?: string;
  credentialVersion?: string;
  /** Still the binding's line under the current epoch: requests may still be counted under it. */
  current: boolean;
}

export class KernelBindings {
  readonly #kh: KernelHttp;
  readonly #log: Logger;
  readonly #serviceIds = new Map<string, number>();
  #nextServiceId = 1;
  /** Workload name -> id the kernel's entries were written under. */
  #workloadIds = new Map<string, number>();
  /** Workload name -> its selectors (JSON) in the last plan that had it (never forgotten: a workload may come back). */
  readonly #selectors = new Map<string, string>();
  /** Workload name -> its selection (HttpBinding.selection): moved on when its selectors change. */
  readonly #selection = new Map<string, number>();
  /** `${workloadId}:${serviceId}` -> digest of what the kernel holds. */
  #pushed = new Map<string, string>();
  /** Bumped by apply(): a refresh that started under an earlier plan writes nothing. */
  #generation = 0;
  /** `${workloadId}:${serviceId}` -> names for audit lines. */
  #described = new Map<string, Described>();
  /** Problems already logged, so a refresh loop does not repeat them. */
  #reported = new Set<string>();
  /** The id epoch the kernel's entries are written under now. */
  #epoch = 0;
  /** `${workloadId}:${serviceId}` -> the header version the kernel holds now. */
  #current = new Map<string, number>();
  /** Earlier epochs' names (the last few), for usage counted before a renumbering. */
  #earlier = new Map<number, Map<string, Described>>();

  constructor(kh: KernelHttp, log: Logger) {
    this.#kh = kh;
    this.#log = log;
  }

  /**
   * Makes the kernel hold `plan`'s plaintext services and bindings. A
   * binding whose credential cannot be read now is withheld (its requests
   * are refused) and reported; it is injected once the credential can be read.
   * @throws BpfError when the maps cannot hold the plan (before any change
   *   to the destinations).
   */
  async apply(plan: Plan, credentials: CredentialSources): Promise<void> {
    const services = [...plan.services.values()].filter((s): s is PlanKernelService => s.datapath === 'kernel');
    for (const s of services) {
      if (!this.#serviceIds.has(s.name)) this.#serviceIds.set(s.name, this.#nextServiceId++);
    }
    const dests: PinnedDestination[] = services.flatMap((s) =>
      s.addresses.map((address) => ({ address, port: s.port, serviceId: this.#serviceIds.get(s.name) as number })),
    );
    const hosts: ServiceHosts[] = services.filter((s) => s.hosts.length).map((s) => ({ serviceId: this.#serviceIds.get(s.name) as number, hosts: s.hosts }));
    const generation = ++this.#generation;
    const wanted = await this.#wanted(plan, credentials);
    if (generation !== this.#generation) return; // a later apply() took over
    const workloadIds = new Map([...plan.workloads.values()].map((w) => [w.name, w.id]));
    const oldNames = new Map([...this.#workloadIds].map(([name, id]) => [id, name]));
    const renumbered = [...workloadIds].some(([name, id]) => {
      const before = this.#workloadIds.get(name);
      return (before !== undefined && before !== id) || (oldNames.has(id) && oldNames.get(id) !== name);
    });
    // A bound workload whose selectors changed may no longer be the
    // processes whose connections the kernel bound to it (an executable
    // taken out, another user): as the proxy refuses its open connections
    // (binding-changed), so does the kernel, from their next request. The
    // agent has written the new selectors already (the kernel's judgement
    // of a connecting process relies on that order).
    const selectors = new Map([...plan.workloads.values()].map((w) => [w.name, JSON.stringify(w.selector)]));
    const boundBefore = new Set([...this.#current.keys()].map((k) => oldNames.get(Number(k.split(':')[0]))));
    const reselected = [...selectors].filter(([name, sel]) => this.#selectors.has(name) && this.#selectors.get(name) !== sel).map(([name]) => name);
    // Destinations (and hosts) first: it checks capacity before changing anything.
    this.#kh.setDestinations(dests, hosts);
    if (renumbered) {
      this.#earlier.set(this.#kh.idEpoch(), this.#described);
      for (const e of this.#earlier.keys()) if (this.#earlier.size > EPOCHS_KEPT) this.#earlier.delete(e);
      this.#kh.bumpEpoch();
      this.#log.info('kernel datapath: workload ids changed; open plaintext connections of bound workloads take no further requests');
    }
    // Moved on for every workload whose selectors changed, bound now or
    // not: a connection made while it was bound before stays refused if
    // it is bound again.
    for (const name of reselected) {
      this.#selection.set(name, ((this.#selection.get(name) ?? 0) + 1) >>> 0);
      if (boundBefore.has(name)) this.#log.info('kernel datapath: the selectors of %s changed; its open plaintext connections take no further requests', name);
    }
    const versions = this.#kh.setBindings(
      wanted.map((w) => ({ workloadId: w.workloadId, serviceId: w.serviceId, header: w.header, selection: this.#selection.get(w.binding.workload) ?? 0 })),
    );
    this.#epoch = this.#kh.idEpoch();
    this.#workloadIds = workloadIds;
    for (const [name, sel] of selectors) this.#selectors.set(name, sel);
    this.#pushed = new Map(wanted.map((w) => [`${w.workloadId}:${w.serviceId}`, w.digest]));
    this.#current = new Map(wanted.map((w, i) => [`${w.workloadId}:${w.serviceId}`, versions[i] as number]));
    const described = new Map<string, Described>();
    wanted.forEach((w, i) => {
      const key = `${w.workloadId}:${w.serviceId}`;
      const before = this.#described.get(key);
      const same = before?.workload === w.binding.workload && before.service === w.binding.service;
      const d: Described = {
        workload: w.binding.workload,
        service: w.binding.service,
        credential: w.binding.inject.credential,
        versions: new Map(same ? before.versions : []),
      };
      described.set(key, d);
      remember(d, versions[i] as number, w.credentialVersion);
    });
    this.#described = described;
  }

  /**
   * Reads the credentials again and rewrites the header lines that changed
   * (rotation): the next request on every connection carries the new one.
   */
  async refresh(plan: Plan, credentials: CredentialSources): Promise<void> {
    const generation = this.#generation;
    const wanted = await this.#wanted(plan, credentials);
    if (generation !== this.#generation) return;
    for (const w of wanted) {
      const key = `${w.workloadId}:${w.serviceId}`;
      if (this.#pushed.get(key) === w.digest) continue;
      const version = w.header ? this.#kh.setHeader(w.workloadId, w.serviceId, w.header) : this.#kh.withhold(w.workloadId, w.serviceId);
      this.#pushed.set(key, w.digest);
      this.#current.set(key, version);
      const d = this.#described.get(key);
      if (d) remember(d, version, w.credentialVersion);
      this.#log.info('kernel datapath: binding %s now %s', w.binding.name, w.header ? 'injects the current credential' : 'withholds (no credential)');
    }
  }

  /**
   * The audit line for a kernel event: the binding's names, the credential
   * version its header carried, and the kernel's identity of the caller.
   */
  auditEvent(e: KernelHttpEvent): AuditEvent {
    const d = this.#described.get(`${e.workloadId}:${e.serviceId}`);
    const credentialVersion = d?.versions.get(e.headerVersion);
    return {
      decision: e.kind === 'injected' ? 'inject' : 'deny',
      datapath: 'kernel',
      workload: d?.workload ?? `#${e.workloadId}`,
      pid: e.pid,
      uid: e.uid,
      service: d?.service ?? `#${e.serviceId}`,
      address: e.address,
      port: e.port,
      ...(d ? { credential: d.credential } : {}),
      ...(credentialVersion !== undefined ? { credentialVersion } : {}),
      ...(e.kind === 'refused' ? { reason: httpStatRefusal(e.reason) ?? e.reason } : {}),
      connection: e.cookie.toString(),
      seen: e.time.toISOString(),
    };
  }

  /**
   * The names a kernel usage entry counts under: those of the epoch it was
   * counted in (the current one, or one of the last few before a
   * renumbering); undefined for ids no plan this agent kept named.
   */
  usageNames(u: { workloadId: number; serviceId: number; headerVersion: number; epoch: number }): UsageNames | undefined {
    const key = `${u.workloadId}:${u.serviceId}`;
    const current = u.epoch === this.#epoch;
    const d = (current ? this.#described : this.#earlier.get(u.epoch))?.get(key);
    if (!d) return undefined;
    const credentialVersion = d.versions.get(u.headerVersion);
    return {
      workload: d.workload,
      service: d.service,
      credential: d.credential,
      ...(credentialVersion !== undefined ? { credentialVersion } : {}),
      current: current && this.#current.get(key) === u.headerVersion,
    };
  }

  async #wanted(plan: Plan, credentials: CredentialSources): Promise<Wanted[]> {
    const out: Wanted[] = [];
    const problems = new Set<string>();
    for (const binding of plan.bindings) {
      const service = plan.services.get(binding.service);
      const workload = plan.workloads.get(binding.workload);
      if (service?.datapath !== 'kernel' || !workload) continue;
      const serviceId = this.#serviceIds.get(service.name);
      // check.ts refuses SigV4 on plaintext services; this guards a plan made some other way.
      if (serviceId === undefined || binding.inject.kind === 'sigv4') continue;
      let header: Wanted['header'] = null;
      let credentialVersion: string | undefined;
      try {
        const source = credentials.get(binding.inject.credential);
        if (!source) throw new Error(`credential ${binding.inject.credential} is not defined`);
        const credential = await source.get();
        credentialVersion = credential.version;
        const h = credentialHeader(binding.inject, credential);
        const value = h.value.reveal();
        headerLine({ name: h.name, value }); // throws, naming the header only, for a value the kernel must not send
        header = { name: h.name, value };
      } catch (err) {
        const line = `kernel datapath: binding ${binding.name} withholds its credential: ${(err as Error).message}`;
        problems.add(line);
        if (!this.#reported.has(line)) this.#log.warn('%s', line);
      }
      const digest = header ? createHash('sha256').update(`${header.name}\0${header.value as string}`).digest('hex') : 'withhold';
      out.push({ binding, workloadId: workload.id, serviceId, header, digest, credentialVersion });
    }
    this.#reported = problems;
    return out;
  }
}

function remember(d: Described, headerVersion: number, credentialVersion: string | undefined): void {
  d.versions.set(headerVersion, credentialVersion);
  for (const v of d.versions.keys()) {
    if (d.versions.size <= VERSIONS_KEPT) break;
    d.versions.delete(v);
  }
}
