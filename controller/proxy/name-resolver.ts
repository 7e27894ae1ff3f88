/**
 * How the proxy resolves names its egress rules allowed (an SNI it relays,
 * a plaintext request's Host) and the bound names restricted workloads
 * connect to: the system resolver, bounded.
 *
 * getaddrinfo runs on libuv's thread pool (4 threads by default), which
 * the agent's file reads (credentials, policy) share, and a lookup of a
 * name nobody answers can hold a thread for the resolver's whole timeout.
 * A workload allowed `*.example.com` could otherwise open many connections
 * naming random names below it and keep every thread busy. So at most
 * `maxInFlight` lookups run at once (the rest wait their turn, inside the
 * connection's handshake deadline), and concurrent lookups of one name
 * share one answer.
 */
import { promises as dnsPromises } from 'node:dns';

/** What a name resolves to, as dns.promises.lookup(name, {all: true}) answers. */
export type NameResolver = (name: string) => Promise<{ address: string; family: number }[]>;

/** The system resolver (getaddrinfo: /etc/hosts, then DNS, as nsswitch.conf says), as the workload's own libc would ask it. */
export const systemResolver: NameResolver = (name) => dnsPromises.lookup(name, { all: true });

/** Lookups the proxy runs at once by default: half of libuv's default thread pool. */
export const DEFAULT_LOOKUPS_IN_FLIGHT = 2;

/** `resolve`, with at most `maxInFlight` lookups running at once and one lookup per name at a time. */
export function boundedResolver(resolve: NameResolver, maxInFlight = DEFAULT_LOOKUPS_IN_FLIGHT): NameResolver {
  let running = 0;
  const waiting: (() => void)[] = [];
  const inFlight = new Map<string, Promise<{ address: string; family: number }[]>>();
  const run = async (name: string) => {
    // A finished lookup hands its slot straight to the next waiting one.
    if (running < maxInFlight) running++;
    else await new Promise<void>((r) => waiting.push(r));
    try {
      return await resolve(name);
    } finally {
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  };
  return (name) => {
    let p = inFlight.get(name);
    if (!p) {
      p = run(name).finally(() => inFlight.delete(name));
      inFlight.set(name, p);
    }
    return p;
  };
}
