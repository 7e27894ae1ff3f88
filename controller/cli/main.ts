#!/usr/bin/env node
/**
 * wirekey's command line: `run`, `reload`, `validate`, `status`, `explain`, `ca cert`.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import path from 'node:path';
import { availableParallelism } from 'node:os';
import { existsSync, readFileSync } from 'node:fs';
import { Agent, type ReloadResult } from '../agent/agent.js';
import { ServiceNotifier } from '../agent/service-notifier.js';
import { probeReadiness, requestReload } from '../agent/control-client.js';
import { readRuntimeState } from '../host/runtime-state.js';
import { checkCapabilities } from '../agent/capabilities.js';
import { DEFAULT_PROXY_LIMITS } from '../proxy/proxy-server.js';
import { DEFAULT_H2_LIMITS } from '../proxy/h2.js';
import { tuneHeapForRelay } from '../proxy/heap.js';
import { formatDiagnostic, hostWarnings, validate } from './validate.js';
import { lintPolicyPath } from '../policy/load.js';
import { LocalCa } from '../tls/local-ca.js';
import { explainPid, formatExplanation } from '../host/explain.js';
import { agentStatus, formatStatus } from '../host/status.js';
import { createLogger, isLogFormat, isLogLevel, type LogFormat, type LogLevel } from '../log.js';
import { libbpfVersion, repoRoot } from '../datapath/native.js';
import { makeNotDumpable } from '../datapath/dumpable.js';
import { WirekeyError, PolicyError, BpfError } from '../errors.js';
import { EXIT, exitCodeOf, exitStatusHelp } from './exit-codes.js';

const DEFAULTS = {
  stateDir: '/var/lib/wirekey',
  pinDir: '/sys/fs/bpf/wirekey',
  proxyPort: 15443,
  audit: '-',
};

/**
 * A whole number written in decimal digits, or NaN: Number() alone would
 * also take 0x50, 1e3, 0b1, " 7" and "".
 */
function decimal(value: string): number {
  return /^\d+$/.test(value) ? Number(value) : Number.NaN;
}

function port(value: string): number {
  const n = decimal(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError('must be a port number from 1 to 65535, in decimal digits');
  return n;
}

function bytes(value: string): number {
  const n = decimal(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError('must be a number of bytes, in decimal digits');
  return n;
}

function count(value: string): number {
  const n = decimal(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number of at least 1, in decimal digits');
  return n;
}

/** "90", "90s", "1500ms", "5m": a duration, in milliseconds (a bare number is seconds). */
function duration(value: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError('must be a duration such as 1500ms, 30s or 5m');
  const n = Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000);
  if (n < 1) throw new InvalidArgumentError('must be longer than zero');
  return n;
}

/**
 * An option whose value is parsed into another unit than it is written in (a
 * duration into milliseconds): --help shows the default as it would be
 * written (`shown`), not the parsed value.
 */
function parsedOption<T>(flags: string, description: string, parse: (value: string) => T, value: T, shown: string): Option {
  return new Option(flags, description).argParser(parse).default(value, shown);
}

/** Milliseconds as `duration` takes them: "5m", "10s", "1500ms". */
function shownDuration(ms: number): string {
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** Proxy worker threads for --proxy-workers "auto": one per CPU, at most this many. */
const PROXY_WORKERS_AUTO_MAX = 8;

/** "auto" (one per CPU, at most PROXY_WORKERS_AUTO_MAX) or a number from 1 to 64. */
function proxyWorkers(value: string): number {
  if (value === 'auto') return Math.min(availableParallelism(), PROXY_WORKERS_AUTO_MAX);
  const n = decimal(value);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new InvalidArgumentError('must be auto or a number from 1 to 64, in decimal digits');
  return n;
}

function grain(value: string): 'request' | 'connection' {
  if (value !== 'request' && value !== 'connection') throw new InvalidArgumentError('must be request or connection');
  return value;
}

/** Seconds (decimal digits, a fraction allowed), as milliseconds; at least half a second. */
function seconds(value: string): number {
  const n = /^\d+(\.\d+)?$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isFinite(n) || n < 0.5 || n > 3600) throw new InvalidArgumentError('must be a number of seconds from 0.5 to 3600');
  return Math.round(n * 1000);
}

/** "127.0.0.1:9464", "[::1]:9464", "localhost:9464": a TCP address to listen on (a host is required: no silent 0.0.0.0). */
function listenAddress(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\s[\]]+)):(\d+)$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError('must be HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464');
  const n = Number(m[3]);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError('must end in a port number (1-65535)');
  return { host: (m[1] ?? m[2]) as string, port: n };
}

function logFormat(value: string): LogFormat {
  if (!isLogFormat(value)) throw new InvalidArgumentError('must be text or json');
  return value;
}

function level(value: string): LogLevel {
  if (!isLogLevel(value)) throw new InvalidArgumentError('must be debug, info, warn or error');
  return value;
}

/** This build's version, from package.json next to it. */
const VERSION = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

const program = new Command()
  .name('wirekey')
  .version(VERSION, '-V, --version', 'print the version')
  .description('Puts Vault-sourced credentials on the wire for Linux workloads that never hold them')
  .showHelpAfterError();

program
  .command('run')
  .description(`run the agent in the foreground until SIGINT or SIGTERM; ${exitStatusHelp('run')}`)
  .requiredOption('--policy <path>', 'policy file, or directory of *.yaml files')
  .option('--state-dir <dir>', 'where the local CA is kept (root-only)', DEFAULTS.stateDir)
  .option('--pin-dir <dir>', 'bpffs directory for the agent\'s pinned maps', DEFAULTS.pinDir)
  .option('--proxy-port <port>', 'port of the local proxy on 127.0.0.1 and ::1', port, DEFAULTS.proxyPort)
  .option('--proxy-workers <n>', 'proxy threads serving connections on the proxy port (SO_REUSEPORT): a number, or auto (one per CPU, at most 8); 1 serves in the agent\'s thread', proxyWorkers, 1)
  .option('--audit <file>', "audit log: a file, or '-' for stdout", DEFAULTS.audit)
  .option('--upstream-ca <file>', 'PEM bundle trusted for upstream servers, besides the system store')
  .option('--sigv4-body-limit <bytes>', 'largest request body buffered to compute a SigV4 payload hash', bytes, 16 * 1024 * 1024)
  .option('--sigv4-body-memory <bytes>', 'memory all SigV4 bodies being hashed may hold together', bytes, 64 * 1024 * 1024)
  .addOption(parsedOption('--handshake-timeout <duration>', 'time a redirected connection has to complete its TLS handshake', duration,
    DEFAULT_PROXY_LIMITS.handshakeTimeoutMs, shownDuration(DEFAULT_PROXY_LIMITS.handshakeTimeoutMs)))
  .option('--max-handshakes <n>', 'redirected connections still in their TLS handshake, all workloads together', count, DEFAULT_PROXY_LIMITS.maxHandshakes)
  .option('--max-connections-per-workload <n>', 'open proxied connections per workload', count, DEFAULT_PROXY_LIMITS.maxConnectionsPerWorkload)
  .addOption(parsedOption('--idle-timeout <duration>', 'close a proxied or relayed connection idle this long', duration,
    DEFAULT_PROXY_LIMITS.idleTimeoutMs, shownDuration(DEFAULT_PROXY_LIMITS.idleTimeoutMs)))
  .option('--no-http2', 'offer workloads HTTP/1.1 only (ALPN), not h2')
  .option('--no-h1-fast-path', 'serve every HTTP/1.1 request through Node\'s HTTP server and undici, not the fast path (README: "The HTTP/1.1 fast path")')
  .option('--h2-max-streams <n>', 'HTTP/2 streams open at once on one workload connection', count, DEFAULT_H2_LIMITS.maxConcurrentStreams)
  .option('--h2-max-resets <n>', 'HTTP/2 streams a workload connection may reset within 10 s before it gets GOAWAY (rapid reset)', count, DEFAULT_H2_LIMITS.maxResets)
  .option('--no-kernel-datapath', 'do not load the kernel HTTP datapath (plaintext services are then refused)')
  .option('--kernel-audit <grain>', 'audit kernel datapath injections once per connection and credential version, or per request (usage lines count every request either way)', grain, 'connection' as const)
  .addOption(parsedOption('--kernel-alive-timeout <seconds>', 'the kernel datapath refuses instead of injecting once the agent has not answered for this long', seconds, 5000, '5'))
  .option('--log-level <level>', 'debug, info, warn or error', level, 'info' as LogLevel)
  .option('--log-format <format>', 'text (one line per event) or json (one object per line)', logFormat, 'text' as LogFormat)
  .option('--metrics-listen <host:port>', 'also serve /metrics, /healthz and /readyz over TCP here (the control socket STATE_DIR/agent.sock always does)', listenAddress)
  .action(async (opts: {
    policy: string; stateDir: string; pinDir: string; proxyPort: number; proxyWorkers: number; audit: string; upstreamCa?: string; sigv4BodyLimit: number;
    sigv4BodyMemory: number; handshakeTimeout: number; maxHandshakes: number; maxConnectionsPerWorkload: number; idleTimeout: number;
    http2: boolean; h1FastPath: boolean; h2MaxStreams: number; h2MaxResets: number; kernelDatapath: boolean; kernelAudit: 'request' | 'connection'; kernelAliveTimeout: number; logLevel: LogLevel; logFormat: LogFormat;
    metricsListen?: { host: string; port: number };
  }) => {
    const log = createLogger(opts.logLevel, undefined, opts.logFormat);
    log.info('wirekey %s starting (pid %d, node %s, libbpf %s)', VERSION, process.pid, process.version, libbpfVersion());
    // Under systemd (Type=notify): READY=1, STATUS=, RELOADING=1, STOPPING=1,
    // and the watchdog pinged from now on, start-up included.
    const notifier = ServiceNotifier.fromEnvironment(log);
    notifier.status('starting: loading the policy, attaching programs');
    notifier.startWatchdog();
    // Signals are taken from the first instruction: one that arrives while
    // the agent starts (a reload right after systemd starts it, a stop) is
    // acted on once it has started, never the default (terminate, leaving
    // pins behind).
    let agent: Agent | undefined;
    let stopSignal: string | undefined;
    let reloadWanted = false;
    const stop = (signal: string) => {
      if (stopSignal) return;
      stopSignal = signal;
      notifier.stopping(`${signal}: detaching and stopping`);
      if (!agent) {
        log.info('%s: stopping once started', signal);
        return;
      }
      log.info('%s: detaching and stopping', signal);
      void agent.stop().then(() => {
        log.info('stopped');
        process.exit(0);
      });
    };
    const reload = () => {
      if (!agent) {
        reloadWanted = true;
        return;
      }
      log.info('SIGHUP: reloading the policy');
      agent.reload().catch((err: unknown) => log.error('policy reload: %s', (err as Error).message));
    };
    process.on('SIGHUP', reload);
    process.on('SIGUSR1', () => agent?.reopenAudit());
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
    // What the policy names that this host lacks: warned about, not fatal, as
    // the agent withholds only the bindings concerned (validate --host fails).
    for (const d of await hostWarnings(path.resolve(opts.policy))) log.warn('policy: %s', formatDiagnostic({ ...d, severity: undefined }));
    try {
      const warning = checkCapabilities();
      if (warning) log.warn('%s', warning);
      // Before any secret is read: no core dump, and no /proc/PID/mem, environ,
      // fd or ptrace access for processes of this uid without CAP_SYS_PTRACE.
      makeNotDumpable();
      tuneHeapForRelay();
      agent = await Agent.start({
        policyPath: path.resolve(opts.policy),
        stateDir: opts.stateDir,
        pinDir: opts.pinDir,
        proxyPort: opts.proxyPort,
        proxyWorkers: opts.proxyWorkers,
        auditPath: opts.audit,
        upstreamCaFile: opts.upstreamCa,
        sigv4BodyLimit: opts.sigv4BodyLimit,
        sigv4BodyMemory: opts.sigv4BodyMemory,
        proxyLimits: {
          handshakeTimeoutMs: opts.handshakeTimeout,
          maxHandshakes: opts.maxHandshakes,
          maxConnectionsPerWorkload: opts.maxConnectionsPerWorkload,
          idleTimeoutMs: opts.idleTimeout,
        },
        http2: opts.http2,
        h1FastPath: opts.h1FastPath,
        h2Limits: { maxConcurrentStreams: opts.h2MaxStreams, maxResets: opts.h2MaxResets },
        kernelDatapath: opts.kernelDatapath,
        kernelAuditGrain: opts.kernelAudit,
        kernelAliveTimeoutMs: opts.kernelAliveTimeout,
        ...(opts.metricsListen ? { metricsListen: opts.metricsListen } : {}),
        log,
        version: VERSION,
        notifier,
      });
    } catch (err) {
      notifier.status(`failed to start: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
      fail(err);
      return;
    }
    const asked = stopSignal;
    if (asked) {
      stopSignal = undefined;
      stop(asked);
    } else if (reloadWanted) {
      reload();
    }
  });

program
  .command('validate')
  .description(
    'check a policy file or directory; prints file:line:column: message per problem (and per warning, marked so), ' +
      `and for a directory the files read and ignored; ${exitStatusHelp('validate')}`,
  )
  .argument('<path>', 'policy file, or directory of *.yaml files')
  .option(
    '--host',
    'also check this host: credential files (exist, regular, not group/other-accessible, owned by root or this user), ' +
      'Vault login files, users and uids (getent), executables and their sha256, cgroups and units (warnings: they may appear later)',
  )
  .action(async (target: string, opts: { host?: boolean }) => {
    const out = await validate(target, opts);
    for (const line of out.stdout) process.stdout.write(`${line}\n`);
    for (const line of out.stderr) process.stderr.write(`${line}\n`);
    process.exitCode = out.code;
  });

program
  .command('reload')
  .description(`check the running agent's policy, have the agent apply it and wait for the result; ${exitStatusHelp('reload')}`)
  .option('--state-dir <dir>', 'the running agent\'s state directory', DEFAULTS.stateDir)
  .addOption(parsedOption('--timeout <duration>', 'how long to wait for the agent\'s answer', duration, 60_000, '60s'))
  .action(async (opts: { stateDir: string; timeout: number }) => {
    try {
      // The policy as the agent reads it (its --policy): a file that does not
      // validate is never sent to the agent, as ExecStartPre never starts one.
      const { policyPath } = readRuntimeState(opts.stateDir);
      if (policyPath) {
        const found = await lintPolicyPath(policyPath);
        for (const d of found) process.stdout.write(`${d.file}:${d.line}:${d.column}: ${d.severity === 'warning' ? 'warning: ' : ''}${d.message}\n`);
        const problems = found.filter((d) => d.severity !== 'warning');
        if (problems.length) throw new ReloadRefused(`${problems.length} problem(s) in ${policyPath}; the agent was not asked, its running policy stays in force`);
      }
      const result: ReloadResult = await requestReload(opts.stateDir, opts.timeout);
      if (result.failed) {
        for (const p of result.problems) process.stdout.write(`${p}\n`);
        throw new ReloadFailed(result.failed);
      }
      if (!result.applied) {
        for (const p of result.problems) process.stdout.write(`${p}\n`);
        throw new ReloadRefused(`the agent refused the policy (${result.problems.length} problem(s)); policy ${result.policy} stays in force`);
      }
      process.stderr.write(`reloaded: ${result.change ?? `policy ${result.policy}`}\n`);
    } catch (err) {
      fail(err);
    }
  });

/** `wirekey reload` was answered: the policy was not applied (exit 1). */
class ReloadRefused extends WirekeyError {
  constructor(message: string) {
    super('WK_RELOAD_REFUSED', `reload refused: ${message}`);
  }
}

/** `wirekey reload` was answered: the reload failed once the switch had begun; `message` says which policy is in force (exit 1). */
class ReloadFailed extends WirekeyError {
  constructor(message: string) {
    super('WK_RELOAD_FAILED', `reload failed: ${message}`);
  }
}

program
  .command('explain')
  .description(`show the workload the kernel assigns to a process, selector by selector, and its bindings; ${exitStatusHelp('explain')}`)
  .argument('<pid>', 'process id', (v) => {
    if (!/^\d+$/.test(v)) throw new InvalidArgumentError('must be a process id');
    return Number(v);
  })
  .option('--state-dir <dir>', 'the running agent\'s state directory', DEFAULTS.stateDir)
  .option('--json', 'print JSON')
  .action((pid: number, opts: { stateDir: string; json?: boolean }) => {
    try {
      const e = explainPid(pid, opts.stateDir);
      process.stdout.write(opts.json ? `${JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n` : formatExplanation(e));
    } catch (err) {
      fail(err);
    }
  });

program
  .command('status')
  .description(`whether the agent runs, its map usage and its counters; ${exitStatusHelp('status')}`)
  .option('--state-dir <dir>', 'the running agent\'s state directory', DEFAULTS.stateDir)
  .option('--json', 'machine-readable output (counters as decimal strings)')
  .addOption(parsedOption('--timeout <duration>', 'how long to wait for a running agent to answer /readyz on its control socket', duration, 5000, '5s'))
  .action(async (opts: { stateDir: string; json?: boolean; timeout: number }) => {
    try {
      const s = agentStatus(opts.stateDir);
      // Its lock shows the agent alive, not that it answers: a hung one holds the lock too.
      if (s.running) s.readiness = await probeReadiness(opts.stateDir, opts.timeout);
      process.stdout.write(opts.json ? `${JSON.stringify(s, (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n` : formatStatus(s));
      // A dead agent's pins are reported, but it is not running.
      if (!s.running) process.exitCode = EXIT.noAgent;
      else if (!s.readiness?.ready) process.exitCode = EXIT.noAnswer;
    } catch (err) {
      fail(err);
    }
  });

const ca = program.command('ca').description('the local CA that workloads trust for intercepted hosts');
ca.command('cert')
  .description(`print the local CA certificate (PEM), creating the CA in an existing state dir if it has none; ${exitStatusHelp('ca cert')}`)
  .option('--state-dir <dir>', 'where the local CA is kept (root-only)', DEFAULTS.stateDir)
  .option('--create', 'create the state dir too when it does not exist')
  .action(async (opts: { stateDir: string; create?: boolean }) => {
    try {
      // A mistyped --state-dir must not quietly mint a CA nobody uses.
      if (!opts.create && !existsSync(opts.stateDir)) {
        throw new WirekeyError('WK_NO_STATE_DIR', `state dir ${opts.stateDir} does not exist (wirekey run creates it; or pass --create)`);
      }
      const local = await LocalCa.loadOrCreate(path.join(opts.stateDir, 'ca'));
      process.stdout.write(local.certificatePem());
    } catch (err) {
      fail(err);
    }
  });

function fail(err: unknown): void {
  if (err instanceof PolicyError) {
    for (const d of err.diagnostics) process.stderr.write(`${d.file}:${d.line}:${d.column}: ${d.message}\n`);
  } else if (err instanceof WirekeyError) {
    process.stderr.write(`wirekey: ${err.message}\n`);
    if (err instanceof BpfError && err.verifierLog) process.stderr.write(`verifier log:\n${err.verifierLog}\n`);
  } else if ((err as NodeJS.ErrnoException)?.code && (err as NodeJS.ErrnoException).syscall) {
    // A system call that failed on a path (an unwritable state dir, ...): one line, no stack.
    process.stderr.write(`wirekey: ${(err as Error).message}\n`);
  } else {
    process.stderr.write(`wirekey: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  process.exitCode = exitCodeOf(err);
}

program.parseAsync().catch(fail);
