/**
 * What the Vault tests share: the server binary (built once by
 * scripts/openbao and cached), a Logger that captures every line at debug
 * level, root-only files for credentials, and the agent's Vault policy.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createLogger, type Logger } from '../../controller/log.js';
import { openBaoBinary } from '../support/openbao.js';
import { toolSkipTitle } from '../support/tiers.js';

const binary = await openBaoBinary();
/** The OpenBao/Vault binary, or undefined when it cannot be built. */
export const baoBinary: string | undefined = binary.path;
/** Why the Vault tests cannot run here, or undefined when they can. */
export const vaultSkip: string | undefined = binary.reason;
/** Appended to a skipped describe's title: a missing test tool, which CI does not accept (see tiers.ts). */
export const skipReason = toolSkipTitle(binary.reason);

/** What the agent may do in Vault: read its secrets, manage its leases. */
export const AGENT_POLICY = `
path "secret/data/*" { capabilities = ["read"] }
path "aws/creds/*"   { capabilities = ["read"] }
path "sys/leases/renew"  { capabilities = ["update"] }
path "sys/leases/lookup" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
`;

export interface CapturedLog {
  log: Logger;
  lines: string[];
}

/** A debug-level Logger whose lines are kept (and echoed when WIREKEY_TEST_LOG is set). */
export function captureLog(): CapturedLog {
  const lines: string[] = [];
  const log = createLogger('debug', (line) => {
    lines.push(line);
    if (process.env.WIREKEY_TEST_LOG) process.stderr.write(line);
  });
  return { log, lines };
}

/** A temp directory for secret files, removed by the returned function. */
export async function secretDir(): Promise<{ dir: string; write(name: string, content: string): Promise<string>; remove(): Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wirekey-vault-test-'));
  return {
    dir,
    async write(name, content) {
      const file = path.join(dir, name);
      await writeFile(file, `${content}\n`, { mode: 0o600 });
      return file;
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

export { eventually, sleep, untilClockPasses } from '../support/wait.js';

