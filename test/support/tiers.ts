/**
 * Skips, and which of them a run that must cover every tier accepts.
 *
 * A test may skip where the machine cannot run it: without root, or on a
 * kernel that lacks a feature it needs (named in the reason). Its title
 * then ends with `(skipped: <reason>)`, or it calls `ctx.skip(<reason>)`.
 *
 * A skip because a tool the tests set up themselves is missing (the Vault
 * server scripts/openbao builds, the Python that scripts/python-tools
 * needs) is another matter: CI sets those up, so there such a skip means a
 * tier that should have run did not. Its title ends with
 * `(skipped, test tool missing: <reason>)`.
 *
 * With WIREKEY_REQUIRE_TIERS=1 (.ci/run sets it), the summary reporter
 * fails the run on a test tool skip and on any skip that gives no reason;
 * without it, every skip is listed and none fails the run.
 */

/** The mark of a skip CI does not accept, as it appears in a title. */
export const TOOL_SKIP_MARK = 'skipped, test tool missing';

/** The environment variable that makes skips other than the machine's fail the run. */
export const REQUIRE_TIERS_ENV = 'WIREKEY_REQUIRE_TIERS';

/** Title suffix of a suite skipped because the machine cannot run it (no root, a missing kernel feature). */
export function machineSkipTitle(reason: string | undefined): string {
  return reason ? ` (skipped: ${reason})` : '';
}

/** Title suffix of a suite skipped because a test tool is missing: a failure where every tier must run. */
export function toolSkipTitle(reason: string | undefined): string {
  return reason ? ` (${TOOL_SKIP_MARK}: ${reason})` : '';
}

export type SkipKind = 'machine' | 'tool' | 'unexplained';

/** Why a test was skipped, from its titles (outermost first) and its skip note. */
export function classifySkip(titles: string[], note?: string): { kind: SkipKind; reason: string } {
  for (const title of [...titles].reverse()) {
    const tool = title.indexOf(`(${TOOL_SKIP_MARK}: `);
    if (tool >= 0) return { kind: 'tool', reason: title.slice(tool + TOOL_SKIP_MARK.length + 3).replace(/\)$/, '') };
    const machine = title.indexOf('(skipped: ');
    if (machine >= 0) return { kind: 'machine', reason: title.slice(machine + '(skipped: '.length).replace(/\)$/, '') };
  }
  if (note) return { kind: 'machine', reason: note };
  return { kind: 'unexplained', reason: 'no reason given' };
}
