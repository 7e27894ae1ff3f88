/**
 * The agent's log: one line per event on stderr. Never pass a secret here;
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

export function createLogger(level: LogLevel = 'info', write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const emit = (lvl: LogLevel, msg: string, args: unknown[]) => {
    if (ORDER[lvl] < ORDER[level]) return;
    write(`${new Date().toISOString()} ${lvl} ${format(msg, ...args)}\n`);
  };
  return {
    debug: (m, ...a) => emit('debug', m, a),
    info: (m, ...a) => emit('info', m, a),
    warn: (m, ...a) => emit('warn', m, a),
    error: (m, ...a) => emit('error', m, a),
  };
}
