/**
 * A test host in its own network namespace, joined to the host namespace by
 * a veth pair, with IPv4 (198.18.N.0/30, the benchmarking range) and IPv6
 * (2001:db8:N::/64, the documentation range) addresses. Nothing here routes
 * anywhere but between the two ends.
 */
import { randomInt } from 'node:crypto';
import { must, run } from './shell.js';

export interface TestHost {
  ns: string;
  /** The namespace's addresses: where the upstream listens. */
  ipv4: string;
  ipv6: string;
  destroy(): Promise<void>;
}

export async function createTestHost(tag: string): Promise<TestHost> {
  // A subnet no other test host on this machine uses right now.
  const used = await run('ip', ['-4', '-o', 'addr', 'show']);
  let n = randomInt(1, 250);
  while (used.stdout.includes(`198.18.${n}.`)) n = randomInt(1, 250);
  const ns = `wk-${tag}-${n}`;
  const hostIf = `wkh${tag}${n}`.slice(0, 15);
  const nsIf = `wkn${tag}${n}`.slice(0, 15);
  const ipv4 = `198.18.${n}.2`;
  const ipv6 = `2001:db8:${n.toString(16)}::2`;
  const destroy = async () => {
    await run('ip', ['link', 'del', hostIf]);
    await run('ip', ['netns', 'del', ns]);
  };
  await destroy();
  try {
    await must('ip', ['netns', 'add', ns]);
    await must('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf, 'netns', ns]);
    await must('ip', ['addr', 'add', `198.18.${n}.1/30`, 'dev', hostIf]);
    await must('ip', ['-6', 'addr', 'add', `2001:db8:${n.toString(16)}::1/64`, 'dev', hostIf, 'nodad']);
    await must('ip', ['link', 'set', hostIf, 'up']);
    await must('ip', ['-n', ns, 'addr', 'add', `${ipv4}/30`, 'dev', nsIf]);
    await must('ip', ['-n', ns, '-6', 'addr', 'add', `${ipv6}/64`, 'dev', nsIf, 'nodad']);
    await must('ip', ['-n', ns, 'link', 'set', nsIf, 'up']);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  } catch (err) {
    await destroy();
    throw err;
  }
  return { ns, ipv4, ipv6, destroy };
}
