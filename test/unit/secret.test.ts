import util from 'node:util';
import { describe, expect, it } from 'vitest';
import { Secret } from '../../controller/credentials/secret.js';

const VALUE = 'sk-live-5ecr3t-Value';

describe('Secret', () => {
  const secret = new Secret(VALUE);

  it('reveals the value only on request', () => {
    expect(secret.reveal()).toBe(VALUE);
  });

  it('redacts string conversion', () => {
    expect(String(secret)).toBe('[redacted]');
    expect(`${secret}`).toBe('[redacted]');
    expect(secret.toString()).toBe('[redacted]');
    expect('x' + secret).toBe('x[redacted]');
    expect([secret].join(',')).toBe('[redacted]');
  });

  it('redacts JSON', () => {
    expect(JSON.stringify(secret)).toBe('"[redacted]"');
    const nested = JSON.stringify({ auth: { token: secret }, list: [secret] });
    expect(nested).not.toContain(VALUE);
    expect(nested).toContain('[redacted]');
  });

  it('redacts util.inspect in every mode', () => {
    const holder = { token: secret, deep: { deeper: { token: secret } } };
    for (const text of [
      util.inspect(secret),
      util.inspect(holder, { showHidden: true, depth: Infinity, getters: true }),
      util.inspect(secret, { customInspect: true, showHidden: true }),
    ]) {
      expect(text).not.toContain(VALUE);
      expect(text).toContain('[redacted]');
    }
  });

  it('redacts console.log-style formatting', () => {
    const text = util.format('%o %O %s %j %d %i %f', secret, secret, secret, secret, secret, secret, secret);
    expect(text).not.toContain(VALUE);
    const plain = util.format(secret, { token: secret }, [secret]);
    expect(plain).not.toContain(VALUE);
    const object = util.format('%o', { nested: { token: secret } });
    expect(object).not.toContain(VALUE);
  });

  it('redacts error messages and stacks that embed it', () => {
    const err = new Error(`login failed with ${secret}`, { cause: secret });
    expect(err.message).toBe('login failed with [redacted]');
    expect(err.stack).not.toContain(VALUE);
    expect(util.inspect(err)).not.toContain(VALUE);
  });

  it('keeps the value out of enumerable and own properties', () => {
    expect(Object.keys(secret)).toEqual([]);
    expect(Object.getOwnPropertyNames(secret)).toEqual([]);
    expect(Object.getOwnPropertySymbols(secret)).toEqual([]);
    expect({ ...secret }).toEqual({});
    expect(JSON.stringify(Object.assign({}, secret))).toBe('{}');
    expect(JSON.stringify(structuredClone(secret))).not.toContain(VALUE);
    for (const key in secret) expect(key).toBe('never');
  });

  it('cannot have its redaction replaced on an instance', () => {
    expect(() => {
      (secret as unknown as { toString: () => string }).toString = () => 'leak';
    }).toThrow(TypeError);
    expect(String(secret)).toBe('[redacted]');
  });
});
