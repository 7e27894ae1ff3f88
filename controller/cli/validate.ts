/**
 * `wirekey validate [--host] PATH`, and the host checks `wirekey run` logs
 * at start.
 */
import { basename } from 'node:path';
import type { PolicyDiagnostic } from '../errors.js';
import { checkHost } from '../host/host-check.js';
import { compilePolicy } from '../policy/compile.js';
import { reportPolicyPath, type IgnoredFile } from '../policy/load.js';
import type { Policy } from '../policy/types.js';

export interface ValidateOutput {
  /** One `file:line:column: [warning: ]message` line per problem, errors first. */
  stdout: string[];
  /** What was read and ignored, each workload's egress in one line (a valid policy), and the verdict. */
  stderr: string[];
  /** 0: no errors (warnings may have been printed); 1: errors. */
  code: 0 | 1;
}

/**
 * Validates the policy at `target` and, with `host`, checks what it names
 * on this host (see checkHost). Never throws for problems in or with the
 * policy.
 */
export async function validate(target: string, options: { host?: boolean } = {}): Promise<ValidateOutput> {
  const report = await reportPolicyPath(target);
  const stderr: string[] = [];
  if (report.directory && report.files.length > 0) {
    stderr.push(`${target}: read ${report.files.length} file(s): ${report.files.map((f) => basename(f)).join(', ')}`);
  }
  if (report.ignored.length > 0) stderr.push(`${target}: ignored ${report.ignored.length}: ${describeIgnored(report.ignored)}`);
  let hostFindings: PolicyDiagnostic[] = [];
  if (options.host && report.diagnostics.length === 0) hostFindings = await checkHost(report.policy);
  const errors = [...report.diagnostics, ...hostFindings.filter((d) => d.severity !== 'warning')];
  const warnings = [...report.warnings, ...hostFindings.filter((d) => d.severity === 'warning')];
  const stdout = [...errors, ...warnings].map(formatDiagnostic);
  const counted = warnings.length ? ` (${warnings.length} warning(s))` : '';
  if (errors.length) {
    stderr.push(`${errors.length} problem(s) found${counted}`);
    return { stdout, stderr, code: 1 };
  }
  stderr.push(...egressSummaries(report.policy));
  if (report.policy.documents.length === 0) stderr.push(`${target}: empty policy${counted}`);
  else stderr.push(`${target}: valid${options.host ? ', and this host has what it names' : ''}${counted}`);
  return { stdout, stderr, code: 0 };
}

/**
 * For `wirekey run`: what the host lacks of a policy, as checkHost says
 * it, all as warnings (the agent withholds what it cannot use and serves
 * the rest). Empty when the policy has errors: the start reports those.
 */
export async function hostWarnings(target: string): Promise<PolicyDiagnostic[]> {
  const report = await reportPolicyPath(target);
  if (report.diagnostics.length) return [];
  return checkHost(report.policy);
}

/** `workload app: egress enforce, 3 rule(s) (2 written, 1 from bindings)`, for each workload with an egress section, by name. */
export function egressSummaries(policy: Policy): string[] {
  const out: string[] = [];
  for (const w of [...compilePolicy(policy).workloads.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (!w.egress) continue;
    const implicit = w.egress.rules.filter((r) => r.label.startsWith('binding ')).length;
    const written = w.egress.rules.length - implicit;
    out.push(`workload ${w.name}: egress ${w.egress.mode}, ${w.egress.rules.length} rule(s) (${written} written, ${implicit} from bindings)`);
  }
  return out;
}

export function formatDiagnostic(d: PolicyDiagnostic): string {
  return `${d.file}:${d.line}:${d.column}: ${d.severity === 'warning' ? 'warning: ' : ''}${d.message}`;
}

/** `README.txt, x.json (not *.yaml or *.yml); .#a.yaml (a hidden file)`: names grouped by reason. */
function describeIgnored(ignored: IgnoredFile[]): string {
  const byReason = new Map<string, string[]>();
  for (const { file, reason } of ignored) byReason.set(reason, [...(byReason.get(reason) ?? []), basename(file)]);
  return [...byReason].map(([reason, names]) => `${names.join(', ')} (${reason})`).join('; ');
}
