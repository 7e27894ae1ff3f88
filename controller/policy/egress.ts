/**
 * Which egress rule of a workload allows a destination: pure functions over
 * a compiled PlanEgress, shared by the proxy and the agent.
 *
 * STAND-IN: a minimal version of the policy module's matcher, written by the
 * proxy work so it compiles before the policy work lands. When the policy
 * engineer's controller/policy/egress.ts is merged, theirs replaces this file
 * whole (and test/unit/egress-match-standin.test.ts is deleted with it).
 */
import { parseAddressPrefix } from '../addresses.js';
import type { PlanEgress, PlanEgressRule, PortRange } from './types.js';

function inPorts(ports: readonly PortRange[], port: number): boolean {
  return ports.some(([lo, hi]) => port >= lo && port <= hi);
}

/** The first rule that allows `address` (IPv4, IPv6 or IPv4-mapped IPv6) on `port` over `protocol`, or undefined. */
export function egressAllowsAddress(
  egress: PlanEgress,
  dest: { address: string; port: number; protocol: 'tcp' | 'udp' },
): PlanEgressRule | undefined {
  const addr = parseAddressPrefix(dest.address);
  if (!addr) return undefined;
  return egress.rules.find((rule) => {
    if (!rule.cidrs.length || !inPorts(rule.ports, dest.port)) return false;
    if (rule.protocol !== 'any' && rule.protocol !== dest.protocol) return false;
    return rule.cidrs.some((cidr) => {
      const p = parseAddressPrefix(cidr);
      if (!p) return false;
      for (let i = 0; i < 16 && 8 * i < p.bits; i++) {
        const keep = Math.min(8, p.bits - 8 * i);
        const mask = (0xff << (8 - keep)) & 0xff;
        if (((addr.bytes[i] as number) & mask) !== ((p.bytes[i] as number) & mask)) return false;
      }
      return true;
    });
  });
}

/** Whether `host` (a rule's entry: a name, or "*.suffix" for any name below suffix) matches `name`. */
function hostMatches(host: string, name: string): boolean {
  if (host.startsWith('*.')) return name.length > host.length - 1 && name.endsWith(host.slice(1));
  return host === name;
}

/**
 * The first name rule that allows `name` on `port`, matched on SNI
 * (`tls`) or on a plaintext request's Host (`!tls`), or undefined. `name`
 * is compared lower-case and without a trailing dot.
 */
export function egressAllowsName(
  egress: PlanEgress,
  dest: { name: string; port: number; tls: boolean },
): PlanEgressRule | undefined {
  const name = dest.name.toLowerCase().replace(/\.$/, '');
  if (!name) return undefined;
  return egress.rules.find(
    (rule) => rule.hosts.length > 0 && rule.tls === dest.tls && inPorts(rule.ports, dest.port) && rule.hosts.some((h) => hostMatches(h, name)),
  );
}

/** The distinct (port, tls) pairs on which some name rule allows names: where the proxy must see the connection. */
export function egressNamePorts(egress: PlanEgress): { port: number; tls: boolean }[] {
  const seen = new Map<string, { port: number; tls: boolean }>();
  for (const rule of egress.rules) {
    if (!rule.hosts.length) continue;
    for (const [lo, hi] of rule.ports) {
      for (let port = lo; port <= hi; port++) seen.set(`${port}:${rule.tls}`, { port, tls: rule.tls });
    }
  }
  return [...seen.values()];
}
