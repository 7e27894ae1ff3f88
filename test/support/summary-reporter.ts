/**
 * A vitest reporter that ends the run with what was skipped and why (the
 * reason is part of the skipped suite's name) and one plain summary line.
 */
import type { Reporter } from 'vitest/reporters';

type Task = { type: string; name: string; mode: string; result?: { state?: string }; tasks?: Task[]; suite?: unknown };

export default class SummaryReporter implements Reporter {
  onFinished(files: Task[] = []): void {
    let passed = 0;
    let failed = 0;
    const skipped: string[] = [];
    const walk = (task: Task, trail: string[]) => {
      const here = task.type === 'suite' ? [...trail, task.name] : trail;
      if (task.tasks) for (const t of task.tasks) walk(t, here);
      if (task.type !== 'test') return;
      const state = task.result?.state;
      if (task.mode === 'skip' || task.mode === 'todo' || state === 'skip') skipped.push([...here, task.name].join(' > '));
      else if (state === 'pass') passed++;
      else if (state === 'fail') failed++;
    };
    for (const file of files) walk(file, []);
    const out: string[] = [''];
    if (skipped.length) {
      out.push(`Skipped ${skipped.length} test(s):`);
      for (const s of skipped) out.push(`  - ${s}`);
    }
    out.push(`tests: ${passed} passed, ${failed} failed, ${skipped.length} skipped`);
    process.stdout.write(`${out.join('\n')}\n`);
  }
}
