/**
 * The plan as the running agent applied it, with every selector resolved:
 * written by the agent (root-only) for `wirekey explain` and `status`,
 * which also read the kernel's own maps from their pins.
 */
import path from 'node:path';
import type { PlanWorkload } from '../policy/types.js';

export interface RuntimeState {
  pid: number;
  pinDir: string;
  cgroupRoot: string;
  workloads: {
    id: number;
    name: string;
    selector: PlanWorkload['selector'];
    cgroupPath?: string;
    /** Decimal string; null: the selector could not be resolved; absent: no cgroup selector. */
    cgroupId?: string | null;
    /** The selector's file as the kernel numbers it (never the inode's address); ino as a decimal string. */
    exe?: { dev: number; ino: string } | null;
    uid?: number | null;
    problems: string[];
  }[];
  bindings: {
    name: string;
    workload: string;
    service: string;
    datapath: 'proxy' | 'kernel';
    /** TLS services (proxy datapath). */
    hosts: string[];
    /** Plaintext services (kernel datapath). */
    addresses: string[];
    port: number;
    inject: { kind: string; credential: string };
  }[];
  /** The proxy's counters when the state was last written (at most every few seconds while they change). */
  proxy?: {
    /** Requests and connections refused since start, by refusal code (controller/refusals.ts). */
    refused: Record<string, number>;
    /** Connections between accept and TLS established. */
    handshakes: number;
    /** Open proxied connections per workload. */
    connections: Record<string, number>;
  };
}

export function runtimeStatePath(stateDir: string): string {
  return path.join(stateDir, 'runtime.json');
}
