/**
 * Who may use which credential where, on the proxy datapath: the plan's
 * bindings to TLS services indexed the way the redirect and the proxy ask
 * for them.
 */
import type { Plan, PlanBinding, PlanProxyService, PlanWorkload } from '../policy/types.js';
import { normalizeHost } from '../policy/compile.js';

export interface Route {
  workload: PlanWorkload;
  service: PlanProxyService;
  binding: PlanBinding;
}

export class RouteTable {
  readonly #byWorkloadId = new Map<number, PlanWorkload>();
  /** key: `${workloadId}:${port}:${host}` */
  readonly #routes = new Map<string, Route>();
  readonly #ports = new Map<string, { workloadId: number; port: number }>();

  constructor(plan: Plan) {
    for (const w of plan.workloads.values()) this.#byWorkloadId.set(w.id, w);
    for (const binding of plan.bindings) {
      const workload = plan.workloads.get(binding.workload);
      const service = plan.services.get(binding.service);
      // compile() guarantees both exist; a missing one is a bug, not input.
      if (!workload || !service) throw new Error(`binding ${binding.name} refers to a missing workload or service`);
      // Plaintext services are the kernel's (agent/kernel-bindings.ts): never redirected.
      if (service.datapath !== 'proxy') continue;
      for (const host of service.hosts) {
        this.#routes.set(`${workload.id}:${service.port}:${host}`, { workload, service, binding });
      }
      this.#ports.set(`${workload.id}:${service.port}`, { workloadId: workload.id, port: service.port });
    }
  }

  workload(id: number): PlanWorkload | undefined {
    return this.#byWorkloadId.get(id);
  }

  /** The route for a connection of workload `workloadId` to `host:port`, if one is bound. */
  match(workloadId: number, port: number, host: string): Route | undefined {
    return this.#routes.get(`${workloadId}:${port}:${normalizeHost(host)}`);
  }

  /** The (workload, port) pairs whose connections the kernel must redirect. */
  portBindings(): { workloadId: number; port: number }[] {
    return [...this.#ports.values()];
  }
}
