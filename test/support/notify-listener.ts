/**
 * A stand-in for systemd's notification socket: a Unix datagram socket
 * (which Node cannot open) bound by a Python helper process, which prints
 * each datagram it receives, with the sender's pid (SO_PASSCRED, as systemd
 * reads it for NotifyAccess=), as one JSON line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { waitFor } from './wait.js';
import { sendNotification } from '../../controller/datapath/notify-socket.js';

const LISTENER = String.raw`
import json, os, socket, struct, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\0' + name[1:] if name.startswith('@') else name)
print(json.dumps({'listening': name}), flush=True)
while True:
    data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', value[:12])[0]
    print(json.dumps({'message': data.decode(), 'pid': pid}), flush=True)
`;

export interface Notification {
  /** The datagram as sent: "READY=1\nSTATUS=...". */
  message: string;
  /** Its assignments, in order. */
  fields: [string, string][];
  /** The sender's pid, as the kernel passed it. */
  pid: number | null;
}

export class NotifyListener {
  /** What to put in NOTIFY_SOCKET. */
  readonly socket: string;
  readonly received: Notification[] = [];
  readonly #child: ChildProcess;

  private constructor(socket: string, child: ChildProcess) {
    this.socket = socket;
    this.#child = child;
  }

  /** Listens on `where` (a path, or an @abstract name; default: a fresh abstract name). */
  static async start(where = `@wirekey-test-notify-${randomBytes(6).toString('hex')}`): Promise<NotifyListener> {
    const child = spawn('python3', ['-c', LISTENER, where], { stdio: ['ignore', 'pipe', 'pipe'] });
    const listener = new NotifyListener(where, child);
    let listening = false;
    let buf = '';
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = JSON.parse(buf.slice(0, nl)) as { listening?: string; message?: string; pid?: number | null };
        buf = buf.slice(nl + 1);
        if (line.listening) listening = true;
        else if (line.message !== undefined) {
          const fields = line.message.split('\n').filter(Boolean).map((l) => {
            const eq = l.indexOf('=');
            return [l.slice(0, eq), l.slice(eq + 1)] as [string, string];
          });
          listener.received.push({ message: line.message, fields, pid: line.pid ?? null });
        }
      }
    });
    await waitFor(() => listening || child.exitCode !== null, `the notify listener on ${where}`);
    if (!listening) throw new Error(`the notify listener on ${where} exited: ${err}`);
    return listener;
  }

  /** Every notification's first assignment ("READY=1", "STATUS=..."), in order. */
  firsts(): string[] {
    return this.received.map((n) => (n.fields[0] ? `${n.fields[0][0]}=${n.fields[0][1]}` : ''));
  }

  /** Waits for a notification `match` accepts, after the first `from`; returns it. */
  async next(match: (n: Notification) => boolean, what: string, from = 0, timeoutMs = 10_000): Promise<Notification> {
    let found: Notification | undefined;
    await waitFor(() => (found = this.received.slice(from).find(match)) !== undefined, `${what} on ${this.socket}; got: ${JSON.stringify(this.received.map((n) => n.message))}`, timeoutMs);
    return found as Notification;
  }

  /**
   * Sends a datagram of its own and waits for it: the socket's queue is in
   * order, so everything sent before this call (by any process) has been
   * received once it returns. Returns its index in `received`.
   */
  async barrier(): Promise<number> {
    const mark = `BARRIER=${randomBytes(6).toString('hex')}`;
    sendNotification(this.socket, mark);
    await this.next((n) => n.message === mark, mark);
    return this.received.findIndex((n) => n.message === mark);
  }

  /** What arrived from index `from` up to (not including) `to`, barriers left out. */
  between(from: number, to: number): Notification[] {
    return this.received.slice(from, to).filter((n) => n.fields[0]?.[0] !== 'BARRIER');
  }

  close(): void {
    this.#child.kill('SIGKILL');
  }
}

/** A notification's value for `key` (the last one), or undefined. */
export function field(n: Notification, key: string): string | undefined {
  return n.fields.filter(([k]) => k === key).at(-1)?.[1];
}
