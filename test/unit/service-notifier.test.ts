/**
 * sd_notify from the addon, against a real Unix datagram socket (bound by a
 * Python helper, as systemd's would be): what arrives, from which pid, at
 * path and abstract addresses; the watchdog's pace; and that a missing
 * socket or none at all never throws.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ServiceNotifier } from '../../controller/agent/service-notifier.js';
import { sendNotification } from '../../controller/datapath/notify-socket.js';
import { createLogger } from '../../controller/log.js';
import { NotifyListener, field } from '../support/notify-listener.js';

const lines: string[] = [];
const log = createLogger('debug', (l) => void lines.push(l));
const listeners: NotifyListener[] = [];
const listen = async (where?: string) => {
  const l = await NotifyListener.start(where);
  listeners.push(l);
  return l;
};
afterEach(() => {
  for (const l of listeners.splice(0)) l.close();
  lines.length = 0;
});

describe('sd_notify (the addon)', () => {
  it('sends one datagram to an @abstract address and to a path, with this process as the sender', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-notify-'));
    try {
      for (const l of [await listen(), await listen(path.join(dir, 'notify'))]) {
        sendNotification(l.socket, 'READY=1\nSTATUS=one line');
        const n = await l.next(() => true, 'the datagram');
        expect(n.message).toBe('READY=1\nSTATUS=one line');
        expect(n.pid).toBe(process.pid);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('throws with errno when nothing listens, and refuses a relative socket name', () => {
    expect(() => sendNotification(`@wirekey-test-nobody-${process.pid}`, 'READY=1')).toThrow(/connection refused|no such file/i);
    expect(() => sendNotification('/nonexistent/wirekey/notify', 'READY=1')).toThrow(/No such file/);
    expect(() => sendNotification('relative/notify', 'READY=1')).toThrow(/absolute path or an @abstract name/);
  });
});

describe('ServiceNotifier', () => {
  it('sends READY, STATUS, RELOADING (with MONOTONIC_USEC) and STOPPING in the order asked, each status on one line', async () => {
    const l = await listen();
    const n = new ServiceNotifier({ socket: l.socket, log });
    expect(n.enabled).toBe(true);
    n.status('starting');
    n.ready('ready: 1 workload(s)');
    const before = process.hrtime.bigint() / 1000n;
    n.reloading('reloading the policy');
    const after = process.hrtime.bigint() / 1000n;
    n.ready('policy refused, previous in force:\nline two');
    n.stopping('SIGTERM: stopping');
    await l.next((m) => m.message.startsWith('STOPPING=1'), 'STOPPING=1');
    expect(l.firsts()).toEqual(['STATUS=starting', 'READY=1', 'RELOADING=1', 'READY=1', 'STOPPING=1']);
    const reloading = l.received[2]!;
    // CLOCK_MONOTONIC in microseconds, as systemd reads it: taken while reloading() ran.
    const usec = BigInt(field(reloading, 'MONOTONIC_USEC') as string);
    expect(usec >= before && usec <= after).toBe(true);
    expect(field(l.received[3]!, 'STATUS')).toBe('policy refused, previous in force: line two');
  });

  it('takes NOTIFY_SOCKET and WATCHDOG_USEC from the environment and removes them, so the processes it runs inherit neither', () => {
    const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '3000000', WATCHDOG_PID: String(process.pid), OTHER: '1' };
    const n = ServiceNotifier.fromEnvironment(log, env);
    expect(n.enabled).toBe(true);
    expect(n.watchdogUsec).toBe(3_000_000);
    expect(env).toEqual({ OTHER: '1' });
    // A watchdog meant for another process (WATCHDOG_PID) is not ours.
    expect(ServiceNotifier.fromEnvironment(log, { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '3000000', WATCHDOG_PID: '1' }).watchdogUsec).toBeUndefined();
    expect(ServiceNotifier.fromEnvironment(log, { WATCHDOG_USEC: '3000000' }).watchdogUsec).toBeUndefined();
  });

  it('pings WATCHDOG=1 at once and then at half the period, and stops at STOPPING', () => {
    vi.useFakeTimers();
    try {
      const sent: string[] = [];
      const n = new ServiceNotifier({ socket: '@fake', watchdogUsec: 400_000, log, send: (_s, m) => void sent.push(m) });
      n.startWatchdog();
      expect(sent).toEqual(['WATCHDOG=1']);
      vi.advanceTimersByTime(199);
      expect(sent).toHaveLength(1);
      vi.advanceTimersByTime(1);
      expect(sent).toHaveLength(2);
      vi.advanceTimersByTime(800);
      expect(sent).toEqual(Array(6).fill('WATCHDOG=1'));
      n.stopping('stopping');
      vi.advanceTimersByTime(10_000);
      expect(sent.slice(6)).toEqual(['STOPPING=1\nSTATUS=stopping']);
    } finally {
      vi.useRealTimers();
    }
  });

  it('does nothing without NOTIFY_SOCKET, and never throws when the socket is gone: it logs once', () => {
    const none = ServiceNotifier.fromEnvironment(log, {});
    expect(none.enabled).toBe(false);
    none.ready('ready');
    none.startWatchdog();
    const gone = new ServiceNotifier({ socket: `@wirekey-test-gone-${process.pid}`, log });
    gone.ready('ready');
    gone.status('again');
    expect(lines.filter((l) => l.includes('cannot notify systemd'))).toHaveLength(1);
  });
});
