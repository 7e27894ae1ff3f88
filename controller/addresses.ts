/**
 * Addresses and prefixes as plaintext Services pin them and the kernel keys
 * them: IPv4 and IPv6 in one address space (IPv4 as ::ffff:a.b.c.d).
 */
import ipaddr from 'ipaddr.js';

export interface AddressPrefix {
  /** Canonical text: the network address, with `/bits` unless it is one address. */
  text: string;
  /** The 16-byte address in IPv4-mapped form, host bits cleared. */
  bytes: number[];
  /** Prefix length in that 128-bit space (an IPv4 /24 is 120). */
  bits: number;
}

/**
 * Parses an address or CIDR. IPv4 must be four decimal parts (`10.0.0.1`,
 * not `10.1` or `012.0.0.1`). Returns null for anything else.
 */
export function parseAddressPrefix(text: string): AddressPrefix | null {
  const slash = text.indexOf('/');
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const bitsText = slash < 0 ? undefined : text.slice(slash + 1);
  if (bitsText !== undefined && !/^(0|[1-9][0-9]{0,2})$/.test(bitsText)) return null;
  let ip: ipaddr.IPv4 | ipaddr.IPv6;
  if (ipaddr.IPv4.isValidFourPartDecimal(addrText)) ip = ipaddr.IPv4.parse(addrText);
  else if (addrText.includes(':') && ipaddr.IPv6.isValid(addrText)) ip = ipaddr.IPv6.parse(v6DottedTail(addrText));
  else return null;
  const v4 = ip.kind() === 'ipv4';
  const full = v4 ? 32 : 128;
  const own = bitsText === undefined ? full : Number(bitsText);
  if (own > full) return null;
  const bits = (v4 ? 96 : 0) + own;
  const mapped = v4 ? (ip as ipaddr.IPv4).toIPv4MappedAddress() : (ip as ipaddr.IPv6);
  const bytes = mapped.toByteArray().map((b, i) => b & ((0xff << (8 - Math.max(0, Math.min(8, bits - 8 * i)))) & 0xff));
  const network = ipaddr.fromByteArray(v4 ? bytes.slice(12) : bytes).toString();
  return { text: own === full ? network : `${network}/${own}`, bytes, bits };
}

/**
 * An IPv6 address's dotted IPv4 tail as two hex groups: ipaddr.js reads
 * `::1.2.3.4` (IPv4-compatible, ::102:304) as `::ffff:1.2.3.4`.
 */
function v6DottedTail(text: string): string {
  const m = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (!m) return text;
  const [a, b, c, d] = m.slice(2).map(Number) as [number, number, number, number];
  return `${m[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
}

/** Whether some address is in both prefixes (one contains the other). */
export function prefixesOverlap(a: AddressPrefix, b: AddressPrefix): boolean {
  const bits = Math.min(a.bits, b.bits);
  for (let i = 0; i < 16 && 8 * i < bits; i++) {
    const keep = Math.min(8, bits - 8 * i);
    const mask = (0xff << (8 - keep)) & 0xff;
    if (((a.bytes[i] as number) & mask) !== ((b.bytes[i] as number) & mask)) return false;
  }
  return true;
}

/** The shortest prefixes a plaintext service may pin: broader ones would send its credential to much of the Internet. */
export const MIN_PREFIX = { ipv4: 8, ipv6: 32 } as const;

/** Whether `p` pins more addresses than MIN_PREFIX allows (IPv4-mapped IPv6 counts as IPv4). */
export function tooBroad(p: AddressPrefix): boolean {
  const mapped = p.bits >= 96 && p.bytes.slice(0, 10).every((b) => b === 0) && p.bytes[10] === 0xff && p.bytes[11] === 0xff;
  return mapped ? p.bits - 96 < MIN_PREFIX.ipv4 : p.bits < MIN_PREFIX.ipv6;
}

/**
 * Whether a URL's host (as `new URL().hostname` gives it, IPv6 in brackets)
 * is this host's loopback: 127.0.0.0/8, ::1 (also IPv4-mapped) or
 * `localhost`. No name is resolved.
 */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === 'localhost') return true;
  try {
    return ipaddr.process(host).range() === 'loopback';
  } catch {
    return false;
  }
}

/**
 * Why a Vault address may not be used, or undefined when it may: plaintext
 * http:// would carry the agent's token and every secret in clear, so it is
 * only for a server on this host's loopback.
 */
export function vaultAddressProblem(address: string): string | undefined {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    return `${JSON.stringify(address)} is not a URL`;
  }
  if (url.protocol === 'https:') return undefined;
  if (url.protocol !== 'http:') return `${url.protocol} is not a Vault protocol; use https://`;
  if (isLoopbackHost(url.hostname)) return undefined;
  return `plaintext http:// is only allowed to a loopback address (127.0.0.0/8, ::1, localhost), not ${url.hostname}; use https://`;
}
