/**
 * A vitest reporter that ends the run with what was skipped and why (the
 * reason is part of the skipped suite's or test's name, or the note given
 * to ctx.skip) and one plain summary line.
 *
 * With WIREKEY_REQUIRE_TIERS=1 it also fails the run when a test was
 * skipped for a reason other than the machine's (see tiers.ts): a missing
 * test tool, or no reason at all.
 */
import type { Reporter } from 'vitest/reporters';
import { classifySkip, REQUIRE_TIERS_ENV, type SkipKind } from './tiers.js';

type Task = {
  type: string;
  name: string;
  mode: string;
  result?: { state?: string; note?: string };
  tasks?: Task[];
};

interface Skipped {
  path: string;
  kind: SkipKind;
  reason: string;
}

export default class SummaryReporter implements Reporter {
  onFinished(files: Task[] = []): void {
    let passed = 0;
    let failed = 0;
    const skipped: Skipped[] = [];
    const walk = (task: Task, trail: string[]) => {
      const here = task.type === 'suite' ? [...trail, task.name] : trail;
      if (task.tasks) for (const t of task.tasks) walk(t, here);
      if (task.type !== 'test') return;
      const state = task.result?.state;
      if (task.mode === 'skip' || task.mode === 'todo' || state === 'skip') {
        const titles = [...here, task.name];
        const note = task.result?.note;
        const { kind, reason } = classifySkip(titles, note);
        // A todo is work not written yet, not a tier that did not run.
        skipped.push({ path: `${titles.join(' > ')}${note ? ` (skipped: ${note})` : ''}`, kind: task.mode === 'todo' ? 'machine' : kind, reason });
      } else if (state === 'pass') passed++;
      else if (state === 'fail') failed++;
    };
    for (const file of files) walk(file, []);

    const out: string[] = [''];
    if (skipped.length) {
      out.push(`Skipped ${skipped.length} test(s):`);
      for (const s of skipped) out.push(`  - ${s.path}`);
    }
    const required = process.env[REQUIRE_TIERS_ENV] === '1';
    const refused = required ? skipped.filter((s) => s.kind !== 'machine') : [];
    if (refused.length) {
      const reasons = new Map<string, number>();
      for (const s of refused) reasons.set(s.reason, (reasons.get(s.reason) ?? 0) + 1);
      out.push('', `${REQUIRE_TIERS_ENV}=1: ${refused.length} skipped test(s) must run here (only a missing kernel feature or root excuses a skip):`);
      for (const [reason, n] of reasons) out.push(`  - ${n} test(s): ${reason}`);
      process.exitCode = 1;
    }
    out.push(`tests: ${passed} passed, ${failed} failed, ${skipped.length} skipped${refused.length ? `, of which ${refused.length} must not be (run failed)` : ''}`);
    process.stdout.write(`${out.join('\n')}\n`);
  }
}
