/**
 * The agent runs with the same Node flags wherever it is started
 * (controller/cli/node-flags.ts): the systemd unit, the package's
 * /usr/bin/wirekey, bin/wirekey.js's #! line, and the agents of the tests
 * and benches.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { AGENT_NODE_FLAGS } from '../../controller/cli/node-flags.js';
import { repoRoot } from '../support/paths.js';
import { run } from '../support/shell.js';

const flags = AGENT_NODE_FLAGS.join(' ');
const read = (file: string) => readFileSync(path.join(repoRoot, file), 'utf8');

describe('the agent\'s Node flags', () => {
  it('the unit runs the agent with them', () => {
    const execStart = read('packaging/wirekey.service').split('\n').filter((l) => l.startsWith('ExecStart='));
    expect(execStart).toEqual([expect.stringMatching(new RegExp(`^ExecStart=/usr/bin/node ${flags} /opt/wirekey/bin/wirekey\\.js run `))]);
  });

  it('the package\'s /usr/bin/wirekey runs the command line with them', () => {
    expect(read('scripts/package')).toContain(`exec /usr/bin/node ${flags} /opt/wirekey/bin/wirekey.js "$@"`);
  });

  it('bin/wirekey.js asks for them on its #! line, and runs as a program', async () => {
    expect(read('bin/wirekey.js').split('\n')[0]).toBe(`#!/usr/bin/env -S node ${flags}`);
    const r = await run(path.join(repoRoot, 'bin/wirekey.js'), ['--version']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(read('package.json')).version);
  });

  it('the agents the tests and benches start get them', () => {
    expect(read('test/support/agent.ts')).toContain('process.execPath, ...AGENT_NODE_FLAGS, ...args');
  });
});
