/**
 * The service manager's notification socket ($NOTIFY_SOCKET, sd_notify(3)):
 * a Unix datagram socket, which Node cannot open, so the addon sends.
 */
import { bpfCall, native } from './native.js';

/**
 * Sends `message` ("READY=1\nSTATUS=...") as one datagram to `socketPath`
 * (an absolute path, or an @abstract name), without blocking.
 * @throws BpfError with errno: EAGAIN when the manager's queue is full,
 *   ENOENT or ECONNREFUSED when nothing listens there.
 */
export function sendNotification(socketPath: string, message: string): void {
  bpfCall(() => native().sdNotify(socketPath, message));
}
