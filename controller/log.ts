/**
 * The agent's log: one line per event on stderr, as text or JSON. Never pass a secret here;
 * Secret objects redact themselves if one slips through.
 */
import { format } from 'node:util';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, ...args: unknown[]): void;
  info(msg: string, ...args: unknown[]): void;
  warn(msg: string, ...args: unknown[]): void;
  error(msg: string, ...args: unknown[]): void;
}

export function isLogLevel(v: string): v is LogLevel {
  return v in ORDER;
}

export type LogFormat = 'text' | 'json';

export function isLogFormat(v: string): v is LogFormat {
  return v === 'text' || v === 'json';
}

/**
 * One line per event, whatever the message holds: text is
 * "TIME LEVEL MESSAGE" with line breaks in the message escaped; json is
 * {"time","level","msg"} per line, for journald and log shippers.
 */
export function createLogger(
  level: LogLevel = 'info',
  write: (line: string) => void = (l) => process.stderr.write(l),
  logFormat: LogFormat = 'text',
): Logger {
  const emit = (lvl: LogLevel, msg: string, args: unknown[]) => {
    if (ORDER[lvl] < ORDER[level]) return;
    const time = new Date().toISOString();
    const text = format(msg, ...args);
    write(logFormat === 'json'
      ? `${JSON.stringify({ time, level: lvl, msg: text })}\n`
      : `${time} ${lvl} ${text.replace(/\r?\n/g, '\\n')}\n`);
  };
  return {
    debug: (m, ...a) => emit('debug', m, a),
    info: (m, ...a) => emit('info', m, a),
    warn: (m, ...a) => emit('warn', m, a),
    error: (m, ...a) => emit('error', m, a),
  };
}
