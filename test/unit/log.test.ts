/** The agent's log: one line per event, as text or JSON. */
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../controller/log.js';

describe('log', () => {
  it('text: a message with line breaks is still one line', () => {
    const lines: string[] = [];
    createLogger('info', (l) => lines.push(l)).error('failed:\n%s', 'a.yaml:1:2: bad\nb.yaml:3:4: worse');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^\S+ error failed:\\na\.yaml:1:2: bad\\nb\.yaml:3:4: worse\n$/);
  });

  it('json: one object per line, below the level nothing', () => {
    const lines: string[] = [];
    const log = createLogger('info', (l) => lines.push(l), 'json');
    log.debug('hidden');
    log.warn('binding %s withholds', 'a\nb');
    expect(lines).toHaveLength(1);
    expect(lines[0]?.endsWith('\n')).toBe(true);
    expect(JSON.parse(lines[0] as string)).toMatchObject({ level: 'warn', msg: 'binding a\nb withholds', time: expect.any(String) });
  });
});
