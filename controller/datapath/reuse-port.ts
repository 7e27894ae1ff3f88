/**
 * Listening sockets that several threads' servers share a port with
 * (SO_REUSEPORT), which Node 20 cannot make itself.
 */
import { WirekeyError } from '../errors.js';
import { native } from './native.js';

/**
 * A TCP socket bound to `address:port` with SO_REUSEPORT (an IPv6 address
 * bound IPv6-only), listening; its fd, for `server.listen({ fd })` in any
 * thread of this process.
 * @throws WirekeyError WK_PROXY_LISTEN with the system's reason (EADDRINUSE: another socket without SO_REUSEPORT holds the port).
 */
export function reusePortListener(address: string, port: number): number {
  try {
    return native().reusePortListener(address, port);
  } catch (err) {
    throw new WirekeyError('WK_PROXY_LISTEN', `cannot listen on ${address} port ${port}: ${(err as Error).message}`, { cause: err });
  }
}
