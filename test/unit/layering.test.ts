/**
 * Imports between the controller's parts flow one way: a part imports only
 * parts on lower layers (and its own files); nothing on one layer imports
 * another part of it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../support/paths.js';

const CONTROLLER = path.join(repoRoot, 'controller');

/** Layer of each part: a top-level file of controller/ is named by its base name. */
const LAYERS: Record<string, number> = {
  errors: 0, refusals: 0, log: 0, 'trusted-directory': 0,
  addresses: 0.5, cgroup: 0.5, 'kernel-limits': 0.5, audit: 0.5, http: 0.5,
  policy: 1,
  identity: 2, credentials: 2, tls: 2,
  datapath: 3,
  inject: 4,
  proxy: 4.5,
  metrics: 5, host: 5,
  agent: 6,
  cli: 7,
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

/** The part a file of controller/ belongs to. */
function partOf(file: string): string {
  const rel = path.relative(CONTROLLER, file).split(path.sep);
  return rel.length === 1 ? path.basename(rel[0] as string, '.ts') : (rel[0] as string);
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/g)) {
    specs.push((m[1] ?? m[2]) as string);
  }
  return specs.filter((s) => s.startsWith('.'));
}

describe('controller layering', () => {
  const files = sourceFiles(CONTROLLER);

  it('knows the layer of every part', () => {
    const unknown = [...new Set(files.map(partOf))].filter((p) => !(p in LAYERS));
    expect(unknown, 'parts of controller/ with no layer in this test').toEqual([]);
  });

  it('imports only from lower layers', () => {
    // Not vacuous: the parser sees the proxy's imports of lower layers.
    expect(importsOf(path.join(CONTROLLER, 'proxy', 'proxy-server.ts'))).toEqual(expect.arrayContaining(['../audit/audit-log.js', '../inject/inject.js']));
    const wrong: string[] = [];
    for (const file of files) {
      const from = partOf(file);
      for (const spec of importsOf(file)) {
        const target = path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts'));
        if (!target.startsWith(CONTROLLER + path.sep)) continue;
        const to = partOf(target);
        if (to === from) continue;
        if ((LAYERS[to] as number) >= (LAYERS[from] as number)) wrong.push(`${path.relative(repoRoot, file)} imports ${spec} (${from} -> ${to})`);
      }
    }
    expect(wrong).toEqual([]);
  });
});
