/**
 * Memory shared by every request that must hold its body (SigV4 payload
 * hashes): one request's limit bounds one request, this bounds them all,
 * so many concurrent uploads cannot take the agent's memory.
 */
export class ByteBudget {
  readonly size: number;
  #used = 0;
  readonly #held = new WeakMap<object, number>();

  constructor(size: number) {
    this.size = size;
  }

  get used(): number {
    return this.#used;
  }

  /** Takes `n` bytes for `owner`; false (and nothing taken) when the budget cannot hold them. */
  take(owner: object, n: number): boolean {
    if (this.#used + n > this.size) return false;
    this.#used += n;
    this.#held.set(owner, (this.#held.get(owner) ?? 0) + n);
    return true;
  }

  /** Gives back everything `owner` holds. Idempotent. */
  releaseAll(owner: object): void {
    const n = this.#held.get(owner) ?? 0;
    this.#held.delete(owner);
    this.#used -= n;
  }

  /** Gives back up to `n` of the bytes `owner` holds. */
  release(owner: object, n: number): void {
    const held = this.#held.get(owner) ?? 0;
    const give = Math.min(held, n);
    if (held - give) this.#held.set(owner, held - give);
    else this.#held.delete(owner);
    this.#used -= give;
  }
}
