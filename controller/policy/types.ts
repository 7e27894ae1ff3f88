/**
 * The user-facing policy documents (as validated against
 * policies/wirekey.schema.json) and the compiled plan the agent applies.
 */
import type { SourcePosition } from '../errors.js';

export const API_VERSION = 'wirekey.dev/v1alpha1';

export interface Metadata {
  name: string;
}

export interface FileCredentialSpec {
  path: string;
  field?: string;
}

export interface VaultCredentialSpec {
  connection: string;
  kv?: string;
  version?: number;
  aws?: string;
  path?: string;
  field?: string;
  refresh?: string;
}

/** Exactly one of these is set. */
export interface CredentialSourceSpec {
  file?: FileCredentialSpec;
  vault?: VaultCredentialSpec;
}

export type VaultAuthSpec =
  | { token: { file: string } }
  | { approle: { roleIdFile: string; secretIdFile: string; mount?: string } }
  | { jwt: { role: string; file: string; mount?: string } }
  | { kubernetes: { role: string; tokenFile?: string; mount?: string } };

export interface VaultConnectionSpec {
  address: string;
  tls?: { caFile?: string; serverName?: string };
  namespace?: string;
  auth: VaultAuthSpec;
}

export type Datapath = 'proxy' | 'kernel';

/**
 * TLS services give hosts (proxy datapath); plaintext ones give addresses
 * (kernel datapath) and may give hosts, which every request must then name.
 * check.ts enforces which.
 */
export interface ServiceSpec {
  hosts?: string[];
  addresses?: string[];
  port: number;
  tls: boolean;
  datapath?: Datapath;
}

export interface ExecutableSelector {
  path: string;
  sha256?: string;
}

/** Every selector given must match. */
export interface WorkloadSelector {
  cgroup?: string;
  systemdUnit?: string;
  executable?: string | ExecutableSelector;
  user?: string;
  uid?: number;
}

export interface WorkloadSpec {
  selector: WorkloadSelector;
  /** Where the workload may connect; without it, anywhere (nothing changes). */
  egress?: EgressSpec;
}

export type EgressMode = 'enforce' | 'audit';
export type EgressProtocol = 'tcp' | 'udp' | 'any';

/**
 * A workload's egress policy. `enforce`: a destination no rule allows is
 * refused (EPERM at connect()/sendmsg(), or the proxy closes it), and so is
 * a socket no rule can name (raw, ICMP, SCTP, UDP-Lite: EPERM at socket());
 * `audit`: the same decisions are logged as `would-refuse` and nothing is
 * refused.
 */
export interface EgressSpec {
  mode: EgressMode;
  allow: EgressRuleSpec[];
}

/**
 * One allow rule: exactly one of service, cidr(s) and host(s).
 *  - service: a Service by name, at its port, and nothing else (no ports,
 *    protocol or tls: the service says them). A plaintext Service allows
 *    its addresses (an address rule, tcp); a TLS Service its hosts (a name
 *    rule, tls true, matched on SNI).
 *  - cidr/cidrs: addresses or prefixes (IPv4, IPv6), with `ports` (numbers
 *    or "lo-hi" ranges; default every port) and `protocol` (default tcp).
 *    No `tls`.
 *  - host/hosts: names ("api.example.com", or "*.example.com" for any name
 *    below it, not example.com itself), with `ports` (default [443]) and
 *    `tls` (default true: the name is matched on SNI; false: plaintext
 *    HTTP, matched on Host, and `ports` must be given). TCP only: a
 *    `protocol` other than tcp is refused.
 */
export interface EgressRuleSpec {
  service?: string;
  cidr?: string;
  cidrs?: string[];
  host?: string;
  hosts?: string[];
  ports?: (number | string)[];
  protocol?: EgressProtocol;
  tls?: boolean;
}

export interface BearerInjection {
  credential: string;
}

export interface HeaderInjection {
  credential: string;
  name: string;
  /** The value with `{secret}` where the credential goes; default `{secret}`. */
  format?: string;
}

export interface BasicInjection {
  credential: string;
  username?: string;
}

export interface SigV4Injection {
  credential: string;
  service?: string;
  region?: string;
}

/** Exactly one of these is set. */
export interface Injection {
  bearer?: BearerInjection;
  header?: HeaderInjection;
  basic?: BasicInjection;
  sigv4?: SigV4Injection;
}

export type InjectionKind = keyof Injection;

export interface BindingSpec {
  workload: string;
  service: string;
  inject: Injection;
}

interface DocumentBase<K extends string, S> {
  apiVersion: typeof API_VERSION;
  kind: K;
  metadata: Metadata;
  spec: S;
  /** Where the document starts, for messages about the document as a whole. */
  source: SourcePosition;
}

export type VaultConnectionDoc = DocumentBase<'VaultConnection', VaultConnectionSpec>;
export type CredentialSourceDoc = DocumentBase<'CredentialSource', CredentialSourceSpec>;
export type ServiceDoc = DocumentBase<'Service', ServiceSpec>;
export type WorkloadDoc = DocumentBase<'Workload', WorkloadSpec>;
export type BindingDoc = DocumentBase<'Binding', BindingSpec>;
export type PolicyDoc = VaultConnectionDoc | CredentialSourceDoc | ServiceDoc | WorkloadDoc | BindingDoc;
export type Kind = PolicyDoc['kind'];

/** A validated set of documents, ready for compile(). */
export interface Policy {
  documents: PolicyDoc[];
}

/** A Vault read, in the shape controller/credentials/vault takes. */
export type PlanVaultRead =
  | { kind: 'kv'; connection: string; mount: string; path: string; field: string; version?: number; refreshMs: number }
  | { kind: 'aws'; connection: string; path: string }
  | { kind: 'leased'; connection: string; path: string; field: string };

/** Exactly one of file and vault is set. */
export interface PlanCredential {
  name: string;
  file?: FileCredentialSpec;
  vault?: PlanVaultRead;
  source: SourcePosition;
}

export interface PlanVaultConnection extends VaultConnectionSpec {
  name: string;
  /** Where the policy defines it (for messages); absent in plans built otherwise. */
  source?: SourcePosition;
}

/** A TLS service: the proxy terminates TLS for its hosts. */
export interface PlanProxyService {
  name: string;
  datapath: 'proxy';
  /** Lower-case host names, no trailing dot. */
  hosts: string[];
  port: number;
  tls: true;
}

/** A plaintext HTTP service pinned to addresses: the kernel injects. */
export interface PlanKernelService {
  name: string;
  datapath: 'kernel';
  /** Addresses and CIDRs in canonical text form (host bits cleared). */
  addresses: string[];
  /**
   * Lower-case host names, no trailing dot: a request's Host (and an
   * absolute-form target) must name one of them. Empty: not checked.
   */
  hosts: string[];
  port: number;
  tls: false;
}

export type PlanService = PlanProxyService | PlanKernelService;

export interface PlanWorkload {
  name: string;
  /**
   * 1..MAX_WORKLOADS (256), in precedence order: when several workloads match a process,
   * the lowest id wins (see controller/policy/precedence.ts).
   */
  id: number;
  selector: {
    /** cgroup v2 path relative to the cgroup v2 root, normalised: leading '/', no trailing '/'. */
    cgroup?: string;
    systemdUnit?: string;
    executable?: ExecutableSelector;
    user?: string;
    uid?: number;
  };
  /** Absent: the workload is unrestricted. */
  egress?: PlanEgress;
}

/** An inclusive port range, host byte order; [1, 65535] is every port. */
export type PortRange = readonly [number, number];

/**
 * A compiled egress rule. `id` is 1-based and stable for a given policy:
 * the rule's index in the workload's `allow` list, then, after those, one
 * implicit rule per service the workload is bound to (a binding allows its
 * service). `label` names it for people: "allow[2]" or "binding app-api".
 */
export interface PlanEgressRule {
  id: number;
  label: string;
  /** Where it is written (the rule, or the binding for an implicit one). */
  source: SourcePosition;
  /** The Service it allows, for a `service:` rule and a binding's implicit rule. */
  service?: string;
  /** Canonical prefixes (host bits cleared; IPv4 as a.b.c.d/n, IPv6 as x::/n). Empty for a name rule. */
  cidrs: string[];
  /** Lower-case names without trailing dot; "*.example.com" for any name below example.com. Empty for an address rule. */
  hosts: string[];
  /** Merged, sorted, non-overlapping. */
  ports: PortRange[];
  /** Address rules: tcp, udp or any. Name rules: always tcp. */
  protocol: EgressProtocol;
  /** Name rules: matched on SNI (true) or on the plaintext Host header (false). */
  tls: boolean;
}

export interface PlanEgress {
  mode: EgressMode;
  rules: PlanEgressRule[];
}

export interface PlanBinding {
  name: string;
  workload: string;
  service: string;
  inject: PlanInjection;
}

export type PlanInjection =
  | { kind: 'bearer'; credential: string }
  | { kind: 'header'; credential: string; name: string; format: string }
  | { kind: 'basic'; credential: string; username?: string }
  | { kind: 'sigv4'; credential: string; service?: string; region?: string };

/** The compiled plan: everything the agent needs, all references resolved. */
export interface Plan {
  vaultConnections: Map<string, PlanVaultConnection>;
  credentials: Map<string, PlanCredential>;
  services: Map<string, PlanService>;
  workloads: Map<string, PlanWorkload>;
  bindings: PlanBinding[];
}
