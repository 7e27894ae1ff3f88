/**
 * Who may use which credential where, on the proxy datapath: the plan's
 * bindings to TLS services indexed the way the redirect and the proxy ask
 * for them; and where the proxy must see a restricted workload's
 * connections to check the names its egress rules allow.
 */
import type { Plan, PlanBinding, PlanEgress, PlanProxyService, PlanWorkload } from '../policy/types.js';
import { normalizeHost } from '../policy/compile.js';
import { egressNamePorts } from '../policy/egress.js';

export interface Route {
  workload: PlanWorkload;
  service: PlanProxyService;
  binding: PlanBinding;
  /**
   * Everything that decides what this route sends where: the workload's
   * name, selectors and egress rules (a restricted workload's connection
   * goes to an address they allow, judged at its ClientHello), the
   * service's hosts and port, the binding and its injection. Two routes with the same fingerprint are interchangeable;
   * an open connection whose route's fingerprint changed must not carry on.
   */
  fingerprint: string;
}

export class RouteTable {
  readonly #byWorkloadId = new Map<number, PlanWorkload>();
  readonly #byWorkloadName = new Map<string, PlanWorkload>();
  /** key: `${workloadName}\0${port}\0${host}` */
  readonly #routes = new Map<string, Route>();
  readonly #ports = new Map<string, { workloadId: number; port: number }>();

  constructor(plan: Plan) {
    for (const w of plan.workloads.values()) {
      this.#byWorkloadId.set(w.id, w);
      this.#byWorkloadName.set(w.name, w);
    }
    for (const binding of plan.bindings) {
      const workload = plan.workloads.get(binding.workload);
      const service = plan.services.get(binding.service);
      // compile() guarantees both exist; a missing one is a bug, not input.
      if (!workload || !service) throw new Error(`binding ${binding.name} refers to a missing workload or service`);
      // Plaintext services are the kernel's (agent/kernel-bindings.ts): never redirected.
      if (service.datapath !== 'proxy') continue;
      const fingerprint = JSON.stringify([
        workload.name, workload.selector, egressShape(workload.egress), service.name, service.hosts, service.port, binding.name, binding.inject,
      ]);
      for (const host of service.hosts) {
        this.#routes.set(routeKey(workload.name, service.port, host), { workload, service, binding, fingerprint });
      }
      this.#ports.set(`${workload.id}:${service.port}`, { workloadId: workload.id, port: service.port });
    }
    // A restricted workload's connections on a port where a name rule
    // allows names come to the proxy, which reads the SNI (or each Host)
    // and relays, terminates or refuses: the kernel alone knows only
    // addresses.
    for (const workload of plan.workloads.values()) {
      if (!workload.egress) continue;
      for (const { port } of egressNamePorts(workload.egress)) {
        this.#ports.set(`${workload.id}:${port}`, { workloadId: workload.id, port });
      }
    }
  }

  workload(id: number): PlanWorkload | undefined {
    return this.#byWorkloadId.get(id);
  }

  /** The workload named `name` in this plan: how a connection accepted under an earlier plan finds its egress rules now. */
  workloadByName(name: string): PlanWorkload | undefined {
    return this.#byWorkloadName.get(name);
  }

  /**
   * The route of workload `workloadName` to `host:port` in this plan: how a
   * connection accepted under an earlier plan finds what is in force now
   * (workload ids may be numbered differently from one plan to the next).
   */
  matchByName(workloadName: string, port: number, host: string): Route | undefined {
    return this.#routes.get(routeKey(workloadName, port, normalizeHost(host)));
  }

  /**
   * The (workload, port) pairs whose connections the kernel must redirect
   * to the proxy: bound TLS services' ports, and for a workload with an
   * egress section, every port on which a name rule allows names.
   */
  portBindings(): { workloadId: number; port: number }[] {
    return [...this.#ports.values()];
  }
}

function routeKey(workloadName: string, port: number, host: string): string {
  return `${workloadName}\0${port}\0${host}`;
}

/**
 * What of a workload's egress rules decides where its connections may go:
 * the mode and each rule's addresses, names, ports and protocol, in a
 * stable order; not where the rules are written or how they are labelled,
 * so that editing a policy file elsewhere does not end open connections.
 */
function egressShape(egress: PlanEgress | undefined): unknown {
  if (!egress) return null;
  const rules = egress.rules.map((r) => JSON.stringify([r.cidrs, r.hosts, r.ports, r.protocol, r.tls, r.service ?? null])).sort();
  return [egress.mode, rules];
}
