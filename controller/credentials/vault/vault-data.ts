import { Secret } from '../secret.js';
import { Redacted } from '../redacted.js';

/**
 * The `data` of a Vault response, which may hold secret values. It is kept
 * in a private field and every way of turning the object into text is
 * redacted, so a response can be passed around (and logged by mistake)
 * without leaking. Values come out as {@link Secret}s, or as plain metadata
 * through {@link VaultData.metadata} for fields that are not secret (KV
 * version numbers).
 */
export class VaultData extends Redacted {
  readonly #value: unknown;

  constructor(value: unknown) {
    super('[redacted vault data]');
    this.#value = value;
    Object.freeze(this);
  }

  #at(keys: readonly string[]): unknown {
    let v: unknown = this.#value;
    for (const k of keys) {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined;
      if (!Object.prototype.hasOwnProperty.call(v, k)) return undefined;
      v = (v as Record<string, unknown>)[k];
    }
    return v;
  }

  /** True when there is an object at `keys`. */
  hasObject(...keys: string[]): boolean {
    const v = this.#at(keys);
    return v !== null && typeof v === 'object' && !Array.isArray(v);
  }

  /**
   * The string value at `keys` as a Secret; `undefined` when absent, `null`
   * when present but not a non-empty string (the caller words the error).
   */
  secret(...keys: string[]): Secret | null | undefined {
    const parent = this.#at(keys.slice(0, -1));
    const last = keys[keys.length - 1];
    if (last === undefined || parent === null || typeof parent !== 'object') return undefined;
    if (!Object.prototype.hasOwnProperty.call(parent, last)) return undefined;
    const v = (parent as Record<string, unknown>)[last];
    return typeof v === 'string' && v !== '' ? new Secret(v) : null;
  }

  /** Every non-empty string value of the object at `keys`, as Secrets. */
  secrets(...keys: string[]): Map<string, Secret> {
    const out = new Map<string, Secret>();
    const obj = this.#at(keys);
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return out;
    for (const [k, v] of Object.entries(obj as Record<string, unknown>)) {
      if (typeof v === 'string' && v !== '') out.set(k, new Secret(v));
    }
    return out;
  }

  /**
   * A non-secret scalar (number, boolean, or a string the caller knows to be
   * metadata, such as a KV version or a deletion time).
   */
  metadata(...keys: string[]): string | number | boolean | null | undefined {
    const v = this.#at(keys);
    return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' || v === null ? v : undefined;
  }
}
