/**
 * The base of every object that holds secret material: every way Node turns
 * an object into text (String(), template literals, JSON.stringify,
 * util.inspect / console.log, util.format with any directive) yields its
 * label instead. Subclasses keep the material in private fields and freeze
 * the instance once built, so no one can swap these methods on it.
 */
import util from 'node:util';

export abstract class Redacted {
  readonly #label: string;

  protected constructor(label: string) {
    this.#label = label;
  }

  toString(): string {
    return this.#label;
  }

  toJSON(): string {
    return this.#label;
  }

  [Symbol.toPrimitive](): string {
    return this.#label;
  }

  [util.inspect.custom](): string {
    return this.#label;
  }
}
