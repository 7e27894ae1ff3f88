import util from 'node:util';

const REDACTED = '[redacted]';

/**
 * A credential value that cannot be logged by accident. Every way Node turns
 * an object into text (String(), template literals, JSON.stringify,
 * util.inspect / console.log, util.format with any directive) yields
 * `[redacted]`; only an explicit {@link Secret.reveal} call gives the value,
 * so every place the secret leaves the agent is greppable.
 *
 * The value sits in a private field: it is not an own property, so spreading,
 * Object.assign, structuredClone and property enumeration never see it.
 */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
    // Freezing stops code from swapping toString/toJSON on one instance.
    Object.freeze(this);
  }

  /** The secret value. Call only where it goes on the wire. Never throws. */
  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [Symbol.toPrimitive](): string {
    return REDACTED;
  }

  [util.inspect.custom](): string {
    return REDACTED;
  }
}
