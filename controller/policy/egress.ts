/**
 * What a compiled egress policy allows: the one answer the kernel maps,
 * the proxy and `wirekey explain` must all agree on. Pure; imports only
 * policy types and controller/addresses.ts, so that any part of the agent
 * can use it.
 *
 * Addresses live in one 128-bit space, as the kernel keys them (IPv4 as
 * ::ffff:a.b.c.d): an IPv4-mapped IPv6 destination is the IPv4 address
 * it maps, and an IPv6 prefix that contains ::ffff:0:0/96 (::/0) contains
 * every IPv4 address too.
 */
import { parseAddressPrefix, type AddressPrefix } from '../addresses.js';
import type { EgressProtocol, PlanEgress, PlanEgressRule, PortRange } from './types.js';

/** A connection (TCP) or datagram (UDP) about to leave for an address. */
export interface AddressDestination {
  /** An IPv4 or IPv6 address, without prefix length. */
  address: string;
  port: number;
  protocol: 'tcp' | 'udp';
}

/** A TCP connection to a name: the SNI of a TLS ClientHello, or a plaintext request's Host. */
export interface NameDestination {
  /** Matched case-insensitively; a trailing dot is ignored. */
  name: string;
  port: number;
  /** true: the name is the SNI; false: the plaintext Host. */
  tls: boolean;
}

/** A port whose TCP connections name rules check by SNI (tls) or by Host (plaintext). */
export interface NamePort {
  port: number;
  tls: boolean;
}

/**
 * The first rule of `egress` that allows `dest` by address (name rules
 * never do), or undefined when none does, or when `dest.address` is not
 * an address. A rule with protocol `any` allows both TCP and UDP. Never
 * throws.
 */
export function egressAllowsAddress(egress: PlanEgress, dest: AddressDestination): PlanEgressRule | undefined {
  if (!validPort(dest.port) || (dest.protocol !== 'tcp' && dest.protocol !== 'udp')) return undefined;
  if (dest.address.includes('/')) return undefined;
  const address = parseAddressPrefix(dest.address);
  if (!address) return undefined;
  return egress.rules.find(
    (rule) =>
      protocolAllows(rule.protocol, dest.protocol) &&
      portsAllow(rule.ports, dest.port) &&
      prefixesOf(rule).some((prefix) => contains(prefix, address)),
  );
}

/**
 * The first name rule of `egress` that allows `dest`, or undefined when
 * none does, or when `dest.name` is not a host name. `*.example.com`
 * allows every name below example.com, at any depth, but not example.com
 * itself. A name rule allows TCP only, and only the kind of connection it
 * says (tls true: SNI; false: plaintext Host). Never throws.
 */
export function egressAllowsName(egress: PlanEgress, dest: NameDestination): PlanEgressRule | undefined {
  if (!validPort(dest.port)) return undefined;
  const name = normalizeName(dest.name);
  if (!isPlainName(name)) return undefined;
  return egress.rules.find(
    (rule) => rule.hosts.length > 0 && rule.tls === dest.tls && portsAllow(rule.ports, dest.port) && rule.hosts.some((h) => nameMatches(h, name)),
  );
}

/**
 * The distinct ports (with whether they are TLS) on which `egress` has
 * name rules, sorted by port, TLS first: the TCP connections the kernel
 * sends to the proxy, which checks the name. A range gives each of its
 * ports. Never throws.
 */
export function egressNamePorts(egress: PlanEgress): NamePort[] {
  const seen = new Set<string>();
  const out: NamePort[] = [];
  for (const rule of egress.rules) {
    if (rule.hosts.length === 0) continue;
    for (const [lo, hi] of rule.ports) {
      for (let port = lo; port <= hi; port++) {
        const key = `${port}/${rule.tls}`;
        if (seen.has(key)) continue;
        seen.add(key);
        out.push({ port, tls: rule.tls });
      }
    }
  }
  return out.sort((a, b) => a.port - b.port || Number(b.tls) - Number(a.tls));
}

/** Host names compare case-insensitively, and `example.com.` is `example.com`. */
export function normalizeName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/**
 * The canonical text of a prefix as egress rules carry it: always with a
 * length, host bits cleared, IPv4 (and IPv4-mapped IPv6) as `a.b.c.d/n`,
 * IPv6 compressed as `x::/n`.
 */
export function canonicalCidr(prefix: AddressPrefix): string {
  const b = prefix.bytes;
  // Host bits are cleared, so a prefix shorter than /96 never looks mapped.
  if (prefix.bits >= 96 && isMappedV4(b)) return `${b.slice(12).join('.')}/${prefix.bits - 96}`;
  // parseAddressPrefix's text is the compressed network address, with `/n` for a proper prefix only.
  return `${prefix.text.split('/')[0] as string}/${prefix.bits}`;
}

/**
 * `ports` as written (numbers, "lo-hi" strings) to merged, sorted,
 * non-overlapping ranges; `fallback` when absent. Expects checked input
 * (see portRangeProblem).
 */
export function mergePorts(ports: readonly (number | string)[] | undefined, fallback: PortRange): PortRange[] {
  const ranges = ports === undefined ? [fallback] : ports.map(parsePort).filter((r): r is PortRange => r !== null);
  const sorted = [...ranges].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const out: [number, number][] = [];
  for (const [lo, hi] of sorted) {
    const last = out.at(-1);
    // Adjacent ranges join too: 80 and 81-90 are 80-90.
    if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

/** A port as written in a rule, as a range; null when it is not one (see portRangeProblem). */
export function parsePort(p: number | string): PortRange | null {
  if (typeof p === 'number') return validPort(p) ? [p, p] : null;
  const m = /^([0-9]{1,5})-([0-9]{1,5})$/.exec(p);
  if (!m) return null;
  const [lo, hi] = [Number(m[1]), Number(m[2])];
  return validPort(lo) && validPort(hi) && lo <= hi ? [lo, hi] : null;
}

/** What is wrong with a port or "lo-hi" range as written, in words; undefined when nothing is. */
export function portRangeProblem(p: number | string): string | undefined {
  if (typeof p === 'number') return validPort(p) ? undefined : `port ${p} is not between 1 and 65535`;
  const m = /^([0-9]{1,5})-([0-9]{1,5})$/.exec(p);
  if (!m) return `${JSON.stringify(p)} is not a port or a range such as "8000-8999"`;
  const [lo, hi] = [Number(m[1]), Number(m[2])];
  const outside = [lo, hi].find((n) => !validPort(n));
  if (outside !== undefined) return `${JSON.stringify(p)}: port ${outside} is not between 1 and 65535`;
  if (lo > hi) return `${JSON.stringify(p)}: the range starts after it ends (write "${hi}-${lo}")`;
  return undefined;
}

/**
 * Whether `host` is a name an egress rule may list: a DNS name of at least
 * two labels, or `*.` followed by one. Returns what is wrong, in words, or
 * undefined.
 */
export function egressHostProblem(host: string): string | undefined {
  const name = normalizeName(host);
  if (name === '*' || name === '*.') return '"*" alone would allow every name: list the domains, as *.example.com';
  const wildcard = name.startsWith('*.');
  const rest = wildcard ? name.slice(2) : name;
  if (rest.includes('*')) return `${JSON.stringify(host)}: "*" may only be the whole first label, as in *.example.com`;
  if (parseAddressPrefix(rest)) return `${JSON.stringify(host)} is an address: allow it with cidr`;
  if (!isPlainName(rest) || rest.includes('_')) return `${JSON.stringify(host)} is not a host name such as api.example.com (letters, digits, '-' and dots)`;
  if (wildcard && rest.split('.').length < 2) {
    return `${JSON.stringify(host)} would allow every name under a top-level domain: a wildcard needs at least two labels after "*.", as in *.example.com`;
  }
  return undefined;
}

// '_' is not in host names, but some names in use have it (SRV-style labels): they can match a wildcard.
const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

/** Lower-case labels of letters, digits, '-' (not at either end) and '_', 253 characters at most. */
function isPlainName(name: string): boolean {
  return name.length > 0 && name.length <= 253 && name.split('.').every((label) => LABEL.test(label));
}

function nameMatches(pattern: string, name: string): boolean {
  if (pattern.startsWith('*.')) return name.endsWith(pattern.slice(1)) && name.length > pattern.length - 1;
  return pattern === name;
}

function validPort(p: number): boolean {
  return Number.isInteger(p) && p >= 1 && p <= 65535;
}

function protocolAllows(rule: EgressProtocol, protocol: 'tcp' | 'udp'): boolean {
  return rule === 'any' || rule === protocol;
}

function portsAllow(ranges: readonly PortRange[], port: number): boolean {
  return ranges.some(([lo, hi]) => port >= lo && port <= hi);
}

// Parsed once per rule object: the proxy asks for every connection.
const parsed = new WeakMap<PlanEgressRule, AddressPrefix[]>();

function prefixesOf(rule: PlanEgressRule): AddressPrefix[] {
  let prefixes = parsed.get(rule);
  if (!prefixes) {
    prefixes = rule.cidrs.map((c) => parseAddressPrefix(c)).filter((p): p is AddressPrefix => p !== null);
    parsed.set(rule, prefixes);
  }
  return prefixes;
}

/** Whether the single address `a` is in `prefix` (both in the 128-bit space). */
function contains(prefix: AddressPrefix, a: AddressPrefix): boolean {
  for (let i = 0; i < 16 && 8 * i < prefix.bits; i++) {
    const keep = Math.min(8, prefix.bits - 8 * i);
    const mask = (0xff << (8 - keep)) & 0xff;
    if (((prefix.bytes[i] as number) & mask) !== ((a.bytes[i] as number) & mask)) return false;
  }
  return true;
}

function isMappedV4(b: readonly number[]): boolean {
  return b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
}
