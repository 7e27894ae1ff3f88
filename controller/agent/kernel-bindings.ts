/**
 * The plan's plaintext services as the kernel HTTP datapath holds them:
 * pinned destinations, and per (workload, service) the header line its
 * binding injects, kept current as credentials rotate.
 *
 * Service ids are this class's own and stable across reloads (a name keeps
 * its id); workload ids are the plan's. When a reload gives a workload name
 * another id, the kernel's epoch is bumped, so a connection opened under the
 * old numbering has its next request refused instead of taking another
 * binding's header.
 */
import { createHash } from 'node:crypto';
import type { KernelHttp, HttpBinding, PinnedDestination } from '../datapath/kernel-http.js';
import { headerLine } from '../datapath/kernel-http.js';
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
}

export class KernelBindings {
  readonly #kh: KernelHttp;
  readonly #log: Logger;
  readonly #serviceIds = new Map<string, number>();
  #nextServiceId = 1;
  /** Workload name -> id the kernel's entries were written under. */
  #workloadIds = new Map<string, number>();
  /** `${workloadId}:${serviceId}` -> digest of what the kernel holds. */
  #pushed = new Map<string, string>();
  /** Bumped by apply(): a refresh that started under an earlier plan writes nothing. */
  #generation = 0;
  /** Problems already logged, so a refresh loop does not repeat them. */
  #reported = new Set<string>();

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
    const generation = ++this.#generation;
    const wanted = await this.#wanted(plan, credentials);
    if (generation !== this.#generation) return; // a later apply() took over
    const workloadIds = new Map([...plan.workloads.values()].map((w) => [w.name, w.id]));
    const oldNames = new Map([...this.#workloadIds].map(([name, id]) => [id, name]));
    const renumbered = [...workloadIds].some(([name, id]) => {
      const before = this.#workloadIds.get(name);
      return (before !== undefined && before !== id) || (oldNames.has(id) && oldNames.get(id) !== name);
    });
    if (renumbered) {
      this.#kh.bumpEpoch();
      this.#log.info('kernel datapath: workload ids changed; open plaintext connections of bound workloads take no further requests');
    }
    this.#kh.setDestinations(dests);
    this.#kh.setBindings(wanted.map((w) => ({ workloadId: w.workloadId, serviceId: w.serviceId, header: w.header })));
    this.#workloadIds = workloadIds;
    this.#pushed = new Map(wanted.map((w) => [`${w.workloadId}:${w.serviceId}`, w.digest]));
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
      if (w.header) this.#kh.setHeader(w.workloadId, w.serviceId, w.header);
      else this.#kh.withhold(w.workloadId, w.serviceId);
      this.#pushed.set(key, w.digest);
      this.#log.info('kernel datapath: binding %s now %s', w.binding.name, w.header ? 'injects the current credential' : 'withholds (no credential)');
    }
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
      try {
        const source = credentials.get(binding.inject.credential);
        if (!source) throw new Error(`credential ${binding.inject.credential} is not defined`);
        const h = credentialHeader(binding.inject, await source.get());
        const value = h.value.reveal();
        headerLine({ name: h.name, value }); // throws, naming the header only, for a value the kernel must not send
        header = { name: h.name, value };
      } catch (err) {
        const line = `kernel datapath: binding ${binding.name} withholds its credential: ${(err as Error).message}`;
        problems.add(line);
        if (!this.#reported.has(line)) this.#log.warn('%s', line);
      }
      const digest = header ? createHash('sha256').update(`${header.name}\0${header.value as string}`).digest('hex') : 'withhold';
      out.push({ binding, workloadId: workload.id, serviceId, header, digest });
    }
    this.#reported = problems;
    return out;
  }
}
