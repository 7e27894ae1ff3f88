/**
 * Turns a binding's injection and its credential into request headers.
 * The only place a secret value becomes header bytes.
 */
import type { Credential } from '../credentials/credential.js';
import { CredentialError } from '../errors.js';
import type { PlanBinding } from '../policy/types.js';

/** Request headers a workload sends that never reach the upstream: it holds no credential, so any it sends is replaced. */
export const CREDENTIAL_HEADERS = new Set(['authorization', 'proxy-authorization']);

/** The header lines to add for `inject`, as [name, value] pairs. */
/** @throws CredentialError when the credential has no single value to inject. */
export function injectionHeaders(inject: PlanBinding['inject'], credential: Credential): [string, string][] {
  const secret = credential.secret;
  if (!secret) throw new CredentialError(credential.name, 'has no single value to inject (it holds named fields only)');
  switch (inject.kind) {
    case 'bearer':
      return [['Authorization', `Bearer ${secret.reveal()}`]];
  }
}
