/**
 * The credential sources of a plan: built when a policy is applied, reused
 * across reloads when their definition did not change (so caches, Vault
 * logins and leases carry over), and closed when they are dropped.
 */
import type { Plan, PlanCredential } from '../policy/types.js';
import type { Logger } from '../log.js';
import type { CredentialSource } from './credential.js';
import { FileCredentialSource } from './file-source.js';
import { CredentialError } from '../errors.js';

export class CredentialSources {
  readonly #sources: Map<string, { key: string; source: CredentialSource }>;

  private constructor(sources: Map<string, { key: string; source: CredentialSource }>) {
    this.#sources = sources;
  }

  static empty(): CredentialSources {
    return new CredentialSources(new Map());
  }

  /**
   * Sources for `plan`, taking over those of `previous` whose definition is
   * unchanged. Nothing of `previous` is closed here: call retire() once the
   * new set is in force.
   */
  static async build(plan: Plan, previous: CredentialSources, log: Logger): Promise<CredentialSources> {
    void log;
    const out = new Map<string, { key: string; source: CredentialSource }>();
    for (const c of plan.credentials.values()) {
      const key = JSON.stringify([c.file, c.vault]);
      const old = previous.#sources.get(c.name);
      out.set(c.name, old && old.key === key ? old : { key, source: create(c) });
    }
    return new CredentialSources(out);
  }

  get(name: string): CredentialSource | undefined {
    return this.#sources.get(name)?.source;
  }

  values(): CredentialSource[] {
    return [...this.#sources.values()].map((s) => s.source);
  }

  /** Closes the sources of this set that `next` does not use. */
  async retire(next: CredentialSources): Promise<void> {
    const kept = new Set(next.values());
    await Promise.all(this.values().filter((s) => !kept.has(s)).map((s) => s.close()));
  }

  async close(): Promise<void> {
    await Promise.all(this.values().map((s) => s.close()));
  }
}

function create(c: PlanCredential): CredentialSource {
  if (c.file) return new FileCredentialSource({ name: c.name, path: c.file.path, field: c.file.field });
  return unavailable(c.name, 'Vault sources are not available in this build');
}

function unavailable(name: string, why: string): CredentialSource {
  return {
    name,
    get: () => Promise.reject(new CredentialError(name, why)),
    close: () => Promise.resolve(),
  };
}
