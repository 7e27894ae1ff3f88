import { Redacted } from './redacted.js';

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
export class Secret extends Redacted {
  readonly #value: string;

  constructor(value: string) {
    super('[redacted]');
    this.#value = value;
    // Freezing stops code from swapping toString/toJSON on one instance.
    Object.freeze(this);
  }

  /** The secret value. Call only where it goes on the wire. Never throws. */
  reveal(): string {
    return this.#value;
  }
}
