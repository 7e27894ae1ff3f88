/**
 * What `wirekey run` tells the service manager (sd_notify(3)) under
 * Type=notify: READY=1 once programs are attached and credentials loaded,
 * STATUS= lines an operator sees in `systemctl status`, RELOADING=1 and
 * READY=1 around a reload, STOPPING=1, and WATCHDOG=1 from the event loop
 * at half of WatchdogSec=, so a hung event loop gets the agent restarted.
 * Without $NOTIFY_SOCKET (not started by systemd) every call does nothing.
 */
import type { Logger } from '../log.js';
import { sendNotification } from '../datapath/notify-socket.js';

/** What the agent tells its service manager; the CLI's is a ServiceNotifier, tests may pass their own. */
export interface ServiceNotifications {
  /** Started, or back from a reload: READY=1 with this status line. */
  ready(status: string): void;
  /** A reload begins: RELOADING=1 (with MONOTONIC_USEC=, which Type=notify-reload wants). */
  reloading(status: string): void;
  /** A status line only. */
  status(status: string): void;
  /** The agent stops: STOPPING=1. */
  stopping(status: string): void;
}

type Send = (socketPath: string, message: string) => void;

export class ServiceNotifier implements ServiceNotifications {
  readonly #socket: string | undefined;
  readonly #watchdogUsec: number | undefined;
  readonly #log: Logger;
  readonly #send: Send;
  #watchdog: NodeJS.Timeout | undefined;
  #failing = false;

  constructor(opts: { socket?: string; watchdogUsec?: number; log: Logger; send?: Send }) {
    this.#socket = opts.socket || undefined;
    this.#watchdogUsec = opts.watchdogUsec;
    this.#log = opts.log;
    this.#send = opts.send ?? sendNotification;
  }

  /**
   * From NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, which it then removes
   * from `env`: the processes the agent runs (systemctl, getent) are not the
   * service, and must neither notify nor believe they have a watchdog.
   */
  static fromEnvironment(log: Logger, env: NodeJS.ProcessEnv = process.env): ServiceNotifier {
    const socket = env.NOTIFY_SOCKET;
    const usec = Number(env.WATCHDOG_USEC);
    // WATCHDOG_PID names the process the watchdog is meant for; another's (a parent's, inherited) is not ours.
    const forUs = env.WATCHDOG_PID === undefined || Number(env.WATCHDOG_PID) === process.pid;
    delete env.NOTIFY_SOCKET;
    delete env.WATCHDOG_USEC;
    delete env.WATCHDOG_PID;
    return new ServiceNotifier({ socket, watchdogUsec: forUs && Number.isSafeInteger(usec) && usec > 0 ? usec : undefined, log });
  }

  /** Whether a service manager listens (the agent runs as a Type=notify service). */
  get enabled(): boolean {
    return this.#socket !== undefined;
  }

  /** The watchdog period asked for (WatchdogSec=), in microseconds; undefined when none. */
  get watchdogUsec(): number | undefined {
    return this.#socket ? this.#watchdogUsec : undefined;
  }

  ready(status: string): void {
    this.#notify(['READY=1', `STATUS=${oneLine(status)}`]);
  }

  reloading(status: string): void {
    this.#notify(['RELOADING=1', `MONOTONIC_USEC=${monotonicUsec()}`, `STATUS=${oneLine(status)}`]);
  }

  status(status: string): void {
    this.#notify([`STATUS=${oneLine(status)}`]);
  }

  stopping(status: string): void {
    this.stopWatchdog();
    this.#notify(['STOPPING=1', `STATUS=${oneLine(status)}`]);
  }

  /**
   * Pings WATCHDOG=1 at half the period systemd asked for, from a timer on
   * the event loop: when the loop hangs (a busy loop, SIGSTOP, a blocking
   * call that never returns) the pings stop and systemd kills and restarts
   * the agent. The timer never keeps the process alive by itself.
   */
  startWatchdog(): void {
    const usec = this.watchdogUsec;
    if (!usec || this.#watchdog) return;
    const everyMs = Math.max(1, Math.floor(usec / 2000));
    this.#notify(['WATCHDOG=1']);
    this.#watchdog = setInterval(() => this.#notify(['WATCHDOG=1']), everyMs);
    this.#watchdog.unref();
    this.#log.debug('systemd watchdog: %d ms, pinging every %d ms', Math.floor(usec / 1000), everyMs);
  }

  stopWatchdog(): void {
    if (this.#watchdog) clearInterval(this.#watchdog);
    this.#watchdog = undefined;
  }

  #notify(lines: string[]): void {
    if (!this.#socket) return;
    try {
      this.#send(this.#socket, lines.join('\n'));
      if (this.#failing) this.#log.info('systemd notification socket %s answers again', this.#socket);
      this.#failing = false;
    } catch (err) {
      // Once per run of failures: a watchdog ping every few seconds must not flood the log.
      if (!this.#failing) this.#log.error('cannot notify systemd on %s (%s): %s', this.#socket, lines[0], (err as Error).message);
      this.#failing = true;
    }
  }
}

/** CLOCK_MONOTONIC in microseconds, as systemd reads it (libuv's hrtime is CLOCK_MONOTONIC on Linux). */
function monotonicUsec(): string {
  return (process.hrtime.bigint() / 1000n).toString();
}

/** A STATUS= value is one line; the protocol separates assignments by newlines. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').slice(0, 1000);
}
