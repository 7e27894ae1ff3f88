/**
 * The plan as the running agent applied it, with every selector resolved:
 * written by the agent (root-only) for `wirekey explain` and `status`,
 * which also read the kernel's own maps from their pins.
 */
import path from 'node:path';
import { readFileSync, renameSync, rmSync } from 'node:fs';
import type { PlanEgress, PlanWorkload } from '../policy/types.js';
import { agentRunning } from '../datapath/instance-lock.js';
import { WirekeyError } from '../errors.js';

export interface RuntimeState {
  pid: number;
  /** The agent's --policy (absolute): what `wirekey reload` checks before asking it to reload. */
  policyPath: string;
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
    /** The workload's egress rules as applied; absent: unrestricted (or an agent older than egress policy). */
    egress?: PlanEgress;
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

/** Where an agent moves the state it found on taking the lock: a dead predecessor's, kept for status until this agent writes its own. */
export function previousRuntimeStatePath(stateDir: string): string {
  return path.join(stateDir, 'runtime.previous.json');
}

/**
 * Marks the state a dead agent left as not the running agent's: done by an
 * agent as soon as it holds the lock, so that status, explain and reload
 * never take it for its own (even when the new agent got the same pid, as
 * in a container), while status can still show what its pins hold should
 * this agent fail to start.
 */
export function retireRuntimeState(stateDir: string): void {
  try {
    renameSync(runtimeStatePath(stateDir), previousRuntimeStatePath(stateDir));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Removes the state of a dead predecessor (`previousOnly`: once this agent wrote its own), or all state at a clean stop. */
export function discardRuntimeState(stateDir: string, opts: { previousOnly?: boolean } = {}): void {
  rmSync(previousRuntimeStatePath(stateDir), { force: true });
  if (!opts.previousOnly) rmSync(runtimeStatePath(stateDir), { force: true });
}

/**
 * The state of the agent running with `stateDir`, once its lock shows it is
 * alive and the state is the lock owner's: what `status`, `explain` and
 * `reload` answer from. With `evenIfDead`, the state a dead agent left
 * (running: false) when there is one.
 * @throws WirekeyError WK_NO_AGENT (no agent holds the state dir: never
 *   started, stopped, or died), WK_STARTING (an agent holds it but has not
 *   written its state yet: what is there, if anything, is a dead agent's),
 *   WK_ACCESS (not root).
 */
export function readRuntimeState(stateDir: string, opts: { evenIfDead?: boolean } = {}): RuntimeState & { running: boolean } {
  const owner = agentRunning(stateDir);
  if (!owner.running && opts.evenIfDead) {
    // What an agent that died left behind (its pins outlive it): for status, marked as such;
    // a state retired by an agent that then failed to start is still the last one applied.
    for (const file of [runtimeStatePath(stateDir), previousRuntimeStatePath(stateDir)]) {
      try {
        return { ...(JSON.parse(readFileSync(file, 'utf8')) as RuntimeState), running: false };
      } catch {
        /* nothing left: not running, as below */
      }
    }
  }
  if (!owner.running) {
    throw new WirekeyError('WK_NO_AGENT', `no agent is running with state dir ${stateDir}${owner.pid ? ` (its last agent, pid ${owner.pid}, has exited)` : ''}`);
  }
  const starting = new WirekeyError('WK_STARTING', `the agent (pid ${owner.pid}) is starting with state dir ${stateDir}: it has not applied a policy yet`);
  let state: RuntimeState;
  try {
    state = JSON.parse(readFileSync(runtimeStatePath(stateDir), 'utf8')) as RuntimeState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EACCES') throw new WirekeyError('WK_ACCESS', `cannot read ${stateDir}: permission denied (run as root)`);
    throw starting;
  }
  // A state of another pid is what a dead agent left before this one took the lock.
  if (state.pid !== owner.pid) throw starting;
  return { ...state, running: true };
}
