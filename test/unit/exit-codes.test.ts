/** The exit codes: one table, which --help, the man page and the commands all follow. */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { EXIT_STATUS, exitCodeOf, exitStatusHelp, exitStatusRoff, type Command } from '../../controller/cli/exit-codes.js';
import { WirekeyError } from '../../controller/errors.js';
import { repoRoot, wirekeyBin } from '../support/agent.js';
import { run } from '../support/shell.js';

describe('exit codes', () => {
  it('each command\'s --help lists its codes from the table', async () => {
    for (const command of Object.keys(EXIT_STATUS) as Command[]) {
      const r = await run(process.execPath, [wirekeyBin, ...command.split(' '), '--help']);
      expect(r.stdout.replace(/\s+/g, ' '), command).toContain(exitStatusHelp(command));
    }
    expect(exitStatusHelp('reload')).toMatch(/^exits 0: applied; 1: refused .*; 3: no agent runs; 4: not permitted; 5: /);
  });

  it('the man page lists every command\'s codes from the same table', () => {
    const roff = exitStatusRoff();
    for (const [command, codes] of Object.entries(EXIT_STATUS)) {
      expect(roff).toContain(`.B ${command}\n`);
      for (const [code] of codes) expect(roff).toMatch(new RegExp(`\\.B ${command}\\n.*\\b${code}: `));
    }
    expect(readFileSync(path.join(repoRoot, 'scripts/package'), 'utf8')).toContain('exitStatusRoff()');
  });

  it('errors map to the codes the table gives', () => {
    expect(exitCodeOf(new WirekeyError('WK_NO_AGENT', 'x'))).toBe(3);
    expect(exitCodeOf(new WirekeyError('WK_ACCESS', 'x'))).toBe(4);
    expect(exitCodeOf(new WirekeyError('WK_CONTROL', 'x'))).toBe(5);
    expect(exitCodeOf(new WirekeyError('WK_STARTING', 'x'))).toBe(5);
    expect(exitCodeOf(new Error('x'))).toBe(1);
  });
});
