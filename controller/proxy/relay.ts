/**
 * Relays a connection byte for byte to its original destination: what the
 * proxy does with TLS it must not terminate (a server name that no binding
 * names) and with anything that is not TLS. No credential is ever involved.
 */
import net from 'node:net';

/**
 * Connects to `host:port`, writes `head` (bytes already read from `client`),
 * then pipes both ways until either side closes, or until neither side has
 * sent anything for `idleMs`. `onClose` runs once.
 */
export function relay(client: net.Socket, head: Buffer, host: string, port: number, idleMs: number, onClose: (err?: Error) => void): void {
  let done = false;
  const finish = (err?: Error) => {
    if (done) return;
    done = true;
    client.destroy();
    upstream.destroy();
    onClose(err);
  };
  const upstream = net.connect({ host, port, allowHalfOpen: true });
  const idle = () => finish(new Error(`idle for ${idleMs} ms`));
  for (const s of [client, upstream]) {
    s.setTimeout(idleMs);
    s.on('timeout', idle);
  }
  upstream.once('connect', () => {
    if (head.length) upstream.write(head);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  });
  upstream.on('error', finish);
  client.on('error', finish);
  upstream.on('close', () => finish());
  client.on('close', () => finish());
}
