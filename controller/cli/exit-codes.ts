/**
 * The command line's exit codes: one table that the commands' --help, the
 * man page (scripts/package) and the code that exits all read, so that they
 * cannot disagree.
 */
import { WirekeyError } from '../errors.js';

/** 3 and 4 are what LSB init scripts and systemctl status use for "not running" and "unknown". */
export const EXIT = {
  ok: 0,
  failed: 1,
  noAgent: 3,
  denied: 4,
  /** An agent holds the lock but is starting, or does not answer on its control socket. */
  noAnswer: 5,
} as const;

export type Command = 'run' | 'validate' | 'reload' | 'status' | 'explain' | 'ca cert';

/** What each command's exit codes mean, in the order --help and the man page give them. */
export const EXIT_STATUS: Record<Command, [code: number, meaning: string][]> = {
  run: [[EXIT.ok, 'stopped on SIGINT or SIGTERM'], [EXIT.failed, 'could not start (the reason is printed)']],
  validate: [[EXIT.ok, 'valid (warnings included)'], [EXIT.failed, 'problems']],
  reload: [
    [EXIT.ok, 'applied'],
    [EXIT.failed, 'refused (the running policy stays in force; the reasons are printed), or failed once the switch had begun (what failed and which policy is in force are printed)'],
    [EXIT.noAgent, 'no agent runs'],
    [EXIT.denied, 'not permitted'],
    [EXIT.noAnswer, 'the agent is starting or did not answer'],
  ],
  status: [
    [EXIT.ok, 'the agent runs and answers ready'],
    [EXIT.failed, 'anything else'],
    [EXIT.noAgent, 'no agent runs (what a dead agent\'s pins still show is printed)'],
    [EXIT.denied, 'not permitted to tell'],
    [EXIT.noAnswer, 'an agent holds the lock but is starting, or does not answer ready on its control socket (hung, stopping)'],
  ],
  explain: [
    [EXIT.ok, 'explained'],
    [EXIT.failed, 'anything else (a process that does not exist)'],
    [EXIT.noAgent, 'no agent runs'],
    [EXIT.denied, 'not permitted'],
    [EXIT.noAnswer, 'the agent is starting'],
  ],
  'ca cert': [[EXIT.ok, 'printed'], [EXIT.failed, 'anything else']],
};

/** "exits 0 when applied, 1 when ...": for a command's --help. */
export function exitStatusHelp(command: Command): string {
  return `exits ${EXIT_STATUS[command].map(([code, meaning]) => `${code}: ${meaning}`).join('; ')}`;
}

/** The man page's EXIT STATUS section. */
export function exitStatusRoff(): string {
  const lines = ['.SH EXIT STATUS'];
  for (const [command, codes] of Object.entries(EXIT_STATUS)) {
    lines.push('.TP', `.B ${command}`, codes.map(([code, meaning]) => `${code}: ${meaning}`).join('; ').replace(/\\/g, '\\e').replace(/-/g, '\\-'));
  }
  return `${lines.join('\n')}\n`;
}

/** The exit code for an error a command failed with. */
export function exitCodeOf(err: unknown): number {
  const code = err instanceof WirekeyError ? err.code : undefined;
  if (code === 'WK_NO_AGENT') return EXIT.noAgent;
  if (code === 'WK_ACCESS') return EXIT.denied;
  if (code === 'WK_CONTROL' || code === 'WK_STARTING') return EXIT.noAnswer;
  return EXIT.failed;
}
