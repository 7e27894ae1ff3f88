/**
 * Turns a binding's injection and its credential into request headers.
 * The only place a secret value becomes header bytes.
 */
import type { Secret } from '../credentials/secret.js';
import type { PlanBinding } from '../policy/types.js';

/** Request headers a workload sends that never reach the upstream: it holds no credential, so any it sends is replaced. */
export const CREDENTIAL_HEADERS = new Set(['authorization', 'proxy-authorization']);

/** The header lines to add for `inject`, as [name, value] pairs. */
export function injectionHeaders(inject: PlanBinding['inject'], secret: Secret): [string, string][] {
  switch (inject.kind) {
    case 'bearer':
      return [['Authorization', `Bearer ${secret.reveal()}`]];
  }
}
