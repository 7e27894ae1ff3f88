/**
 * What a reload that failed once the switch to the new policy had begun
 * answers: what failed, and which policy is in force, whole or in part.
 * (A policy refused before the switch, or whose switch was undone whole,
 * is a refusal: the running policy stays in force.) The switch puts the
 * new policy into the kernel first, then into the proxy.
 */
import type { ReloadResult } from './agent.js';
import type { ReloadMetricResult } from '../metrics/agent-metrics.js';

/** A step after the switch that failed, and what that leaves wrong while the new policy is in force. */
export interface FailedStep {
  /** What was being done: "writing the runtime state". */
  step: string;
  /** Its error's first line. */
  message: string;
  /** What it leaves wrong: "wirekey status and explain show the previous policy". */
  consequence: string;
}

/**
 * The kernel took part of `next` and could not be put back whole after
 * the rest failed (`cause`): the previous policy is only partly in force.
 */
export function kernelNotRestored(previous: string, next: string, cause: string, restore: string[]): ReloadResult {
  return {
    applied: false,
    policy: previous,
    problems: [cause, ...restore.map((r) => `putting the kernel back: ${r}`)],
    failed: `policy ${next} could not be put in force (${cause}), and the kernel could not be put back whole (${restore.join('; ')}): ` +
      `the previous policy ${previous} is only partly in force, the kernel may hold parts of ${next}; reload again or restart the agent`,
  };
}

/** `next` is in force (kernel and proxy), but steps after the switch failed. */
export function failedAfterSwitch(next: string, change: string, failures: FailedStep[]): ReloadResult {
  return {
    applied: true,
    policy: next,
    change,
    problems: failures.map((f) => `${f.step}: ${f.message}`),
    failed: `policy ${next} is in force, but ${failures.map((f) => `${f.step} failed (${f.message}): ${f.consequence}`).join('; ')}`,
  };
}

/** A reload that threw: nothing says how far it got. `policy`: the hash of the policy the agent holds now. */
export function reloadThrew(policy: string, err: unknown): ReloadResult {
  const message = firstLine(err);
  return {
    applied: false,
    policy,
    problems: [message],
    failed: `${message}; policy ${policy} is in force, perhaps only partly (see the log); reload again or restart the agent`,
  };
}

/**
 * How wirekey_policy_reloads_total counts `result`: failed when the reload
 * failed once the switch had begun (kernelNotRestored, failedAfterSwitch,
 * reloadThrew), whichever policy is in force; applied; or refused.
 */
export function reloadMetricResult(result: ReloadResult): ReloadMetricResult {
  if (result.failed !== undefined) return 'failed';
  return result.applied ? 'applied' : 'refused';
}

/** The first line of an error's message. */
export function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] as string;
}
