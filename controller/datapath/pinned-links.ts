import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';

/**
 * The identity and cgroup programs' links are pinned here
 * (`<pin-dir>/links/<program>`), so that they outlive an agent that dies
 * without stopping: egress rules stay enforced and bound connections stay
 * redirected (to a proxy port nothing listens on: refused) until the next
 * agent takes over or the pins are removed. A clean stop unpins them.
 */
export const LINKS_DIR = 'links';
/**
 * A previous agent's links, held attached while the next one starts and
 * released once its own are attached: no moment without a program. (bpffs
 * refuses names with a dot.)
 */
export const PREVIOUS_LINKS_DIR = 'links-previous';

/** Links pinned in `pinDir` (this agent's and any held from a previous one): programs that stay attached without an agent. */
export function pinnedLinks(pinDir: string): string[] {
  return [LINKS_DIR, PREVIOUS_LINKS_DIR].flatMap((d) => {
    const dir = path.join(pinDir, d);
    return existsSync(dir) ? readdirSync(dir).map((name) => path.join(d, name)) : [];
  });
}
