/**
 * What the proxy does with a connection of a restricted workload (one whose
 * plan entry has an egress section), and where an allowed name may be
 * relayed to. Pure: the proxy supplies the plan, the connection's facts and
 * the resolver's answers, and does the I/O.
 *
 * The order, for a connection the kernel redirected (it is on a port where
 * some name rule of the workload allows names, or a bound service's port):
 *  1. TLS whose SNI a binding's route matches: terminated and injected,
 *     its requests sent upstream to the dialled address if the bound name
 *     resolves to it or an address rule allows it, else to an address the
 *     name resolves to (pickAddress); refused `egress-not-allowed` when
 *     there is none.
 *  2. TLS whose SNI a `tls: true` name rule allows on this port: relayed
 *     untouched, to an address the name resolves to (pickAddress).
 *  3. The original address allowed by an address rule (tcp, this port):
 *     relayed to it untouched.
 *  4. Not TLS, and a `tls: false` name rule on this port: HTTP is parsed
 *     and each request's Host is judged on its own (plaintext).
 *  5. Otherwise refused: `egress-name-not-allowed` when the connection
 *     named a server (SNI), else `egress-not-allowed`. In `audit` mode the
 *     proxy relays it as before and logs `would-refuse`.
 */
import { networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';
import { egressAllowsAddress, egressAllowsName } from '../policy/egress.js';
import type { PlanEgress, PlanEgressRule } from '../policy/types.js';

/** How an egress decision is counted (wirekey_egress_decisions_total) and audited. */
export type EgressDecision = 'allow' | 'deny' | 'would-refuse';

export type EgressVerdict =
  | { action: 'relay-name'; rule: PlanEgressRule; name: string }
  | { action: 'relay-address'; rule: PlanEgressRule }
  | { action: 'plaintext' }
  | { action: 'refuse'; code: 'egress-not-allowed' | 'egress-name-not-allowed' };

/** What the proxy learnt of a connection before deciding: where it was going, and its ClientHello. */
export interface EgressConnection {
  /** The address the workload dialled (as the kernel recorded it). */
  address: string;
  port: number;
  /** Whether the first bytes were a TLS handshake record (a usable ClientHello or not). */
  tls: boolean;
  /** The ClientHello's server name, validated and lower-cased; undefined without one, or for a hello the proxy could not read. */
  serverName?: string;
}

/** Whether some `tls: false` name rule allows names on `port`: the proxy then reads plaintext HTTP there request by request. */
export function plaintextNamesOn(egress: PlanEgress, port: number): boolean {
  return egress.rules.some((r) => r.hosts.length > 0 && !r.tls && r.ports.some(([lo, hi]) => port >= lo && port <= hi));
}

/** The decision for a connection the binding routes did not claim (see the module comment for the order). */
export function decideConnection(egress: PlanEgress, c: EgressConnection): EgressVerdict {
  if (c.tls && c.serverName) {
    const rule = egressAllowsName(egress, { name: c.serverName, port: c.port, tls: true });
    if (rule) return { action: 'relay-name', rule, name: c.serverName };
  }
  const byAddress = egressAllowsAddress(egress, { address: c.address, port: c.port, protocol: 'tcp' });
  if (byAddress) return { action: 'relay-address', rule: byAddress };
  if (!c.tls && plaintextNamesOn(egress, c.port)) return { action: 'plaintext' };
  return { action: 'refuse', code: c.serverName ? 'egress-name-not-allowed' : 'egress-not-allowed' };
}

/** An address in its canonical text (IPv4-mapped IPv6 as IPv4), or undefined if it is not one. */
export function canonicalAddress(address: string): string | undefined {
  try {
    return ipaddr.process(address).toString();
  } catch {
    return undefined;
  }
}

/**
 * Whether `address` is this host or its link: loopback, unspecified
 * (0.0.0.0 and :: connect to the host itself), an address of one of its
 * interfaces, or link-local (169.254.0.0/16, fe80::/10: where clouds serve
 * instance metadata and credentials, 169.254.169.254).
 */
export function isLocalAddress(address: string, interfaces: () => Set<string> = localInterfaceAddresses): boolean {
  const canonical = canonicalAddress(address);
  if (canonical === undefined) return false;
  const range = ipaddr.process(canonical).range();
  return range === 'loopback' || range === 'unspecified' || range === 'linkLocal' || METADATA_ADDRESSES.has(canonical) || interfaces().has(canonical);
}

/**
 * Instance metadata services outside the link-local ranges (where AWS,
 * Azure, GCP, Oracle and OpenStack serve theirs over IPv4): AWS's and
 * GCP's over IPv6, Alibaba Cloud's. Each hands out the instance's
 * credentials, so each is this host's as much as 169.254.169.254 is.
 */
const METADATA_ADDRESSES: ReadonlySet<string> = new Set(['fd00:ec2::254', 'fd20:ce::254', '100.100.100.200'].map((a) => canonicalAddress(a) as string));

/** The host's interface addresses, canonical; read on each call (addresses come and go). */
export function localInterfaceAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      const c = canonicalAddress(a.address.replace(/%.*$/, ''));
      if (c) out.add(c);
    }
  }
  return out;
}

export interface PickOptions {
  /** The workload's egress rules: an address rule may allow a local address, or the address it dialled. */
  egress: PlanEgress;
  /** The address the workload dialled, and its port (the relay keeps the port). */
  dialled: string;
  port: number;
  /** The port the proxy listens on: a local address on it is never a destination. */
  proxyPort?: number;
  isLocal?: (address: string) => boolean;
}

/**
 * Where a connection for an allowed name goes, given what the name
 * resolved to: never simply where the workload pointed it (a workload can
 * send an allowed SNI or Host to any address).
 *
 *  - The dialled address, when it is among the answers, or when an address
 *    rule allows it anyway (the kernel would let the workload reach it
 *    directly).
 *  - Else the first answer.
 *
 * An answer that is this host (isLocalAddress) is used only if an address
 * rule of the workload allows it on that port: the relay is the agent's
 * own connection, from the host's network namespace and never redirected,
 * so a name that resolves (or is re-pointed by its DNS) to 127.0.0.1, the
 * host's own address or a link-local one (a cloud's metadata service)
 * would otherwise reach services the kernel does not let the workload
 * dial. The proxy's own port on this host is never a
 * destination (the connection would come back unidentified and be closed).
 * Returns undefined when no answer qualifies.
 */
export function pickAddress(answers: readonly string[], o: PickOptions): string | undefined {
  const isLocal = o.isLocal ?? ((a: string) => isLocalAddress(a));
  const usable = (a: string): boolean => {
    if (!isLocal(a)) return true;
    if (o.proxyPort !== undefined && o.port === o.proxyPort) return false;
    return egressAllowsAddress(o.egress, { address: a, port: o.port, protocol: 'tcp' }) !== undefined;
  };
  const dialled = canonicalAddress(o.dialled);
  const candidates = answers.map(canonicalAddress).filter((a): a is string => a !== undefined);
  if (dialled !== undefined && usable(dialled)) {
    if (candidates.includes(dialled)) return dialled;
    if (egressAllowsAddress(o.egress, { address: dialled, port: o.port, protocol: 'tcp' })) return dialled;
  }
  return candidates.find(usable);
}
