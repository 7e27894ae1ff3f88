/** `wirekey status`: what the running agent applied, how full its maps are, and what the kernel dropped. */
import { PinnedMaps } from '../datapath/pinned.js';
import { pinnedLinks } from '../datapath/pinned-links.js';
import { WirekeyError } from '../errors.js';
import { httpStatRefusal, type HttpStatName } from '../datapath/layout.js';
import { readRuntimeState, type RuntimeState } from './runtime-state.js';

export interface AgentStatus {
  /** False: the agent died (kill -9, crash) and this is what its state and pins still show. */
  running: boolean;
  pid: number;
  workloads: { name: string; id: number; problems: string[] }[];
  maps: { name: string; entries: number; capacity: number }[];
  tasksFull: bigint;
  storageFailures: bigint;
  /** bind()s to the proxy port refused (a uid other than 0 tried to take it). */
  proxyPortBinds: bigint;
  /** The kernel HTTP datapath's counters; null when the agent runs without it. */
  kernelHttp: Record<string, bigint> | null;
  /**
   * Restricted workloads' egress, as the kernel counts it: connect()s and
   * sendmsg()s refused (enforce) and let through that enforce would refuse
   * (audit). Name decisions are the proxy's (its refusals, metrics).
   */
  egress: { name: string; mode: 'enforce' | 'audit'; refused: bigint; wouldRefuse: bigint }[];
  /** Kernel egress events lost because the ring buffer was full. */
  egressEventsLost: bigint;
  /** The proxy's counters, as the agent last wrote them. */
  proxy: RuntimeState['proxy'] | null;
  /** Sockhashes of previous agents with connections still open (refused), and what they refused without an agent. */
  draining: { dir: string; connections: number; refusedAgent: bigint }[];
  /** Programs whose links are pinned: attached whether or not an agent runs (paths relative to the pin dir). */
  attached: string[];
  /** What a running agent answered on its control socket (GET /readyz); absent when not asked (not running). */
  readiness?: { ready: boolean; reason?: string };
}

/**
 * The running agent's status; for an agent that died with its pins still
 * in place, what they show (running: false).
 * @throws WirekeyError (WK_NO_AGENT: no agent, and none left pins; WK_STARTING: the
 *   agent holding the lock has not written its state yet; WK_ACCESS), BpfError
 */
export function agentStatus(stateDir: string): AgentStatus {
  const state = readRuntimeState(stateDir, { evenIfDead: true });
  let pinned: PinnedMaps;
  try {
    pinned = new PinnedMaps(state.pinDir);
  } catch (err) {
    if (state.running) throw err;
    throw new WirekeyError('WK_NO_AGENT', `no agent is running with state dir ${stateDir} (its last agent, pid ${state.pid}, has exited)`);
  }
  const egressStats = pinned.egressStats();
  const egress: AgentStatus['egress'] = [];
  for (const w of state.workloads) {
    const installed = pinned.egress(w.id);
    if (!installed) continue;
    const counts = egressStats?.workloads.get(w.id);
    egress.push({ name: w.name, mode: installed.mode, refused: counts?.refused ?? 0n, wouldRefuse: counts?.wouldRefuse ?? 0n });
  }
  return {
    running: state.running,
    pid: state.pid,
    workloads: state.workloads.map((w) => ({ name: w.name, id: w.id, problems: w.problems })),
    ...pinned.usage(),
    kernelHttp: pinned.kernelHttpStats(),
    egress,
    egressEventsLost: egressStats?.eventsLost ?? 0n,
    proxy: state.proxy ?? null,
    draining: pinned.draining(),
    attached: pinnedLinks(state.pinDir),
  };
}

export function formatStatus(s: AgentStatus): string {
  const lines = !s.running
    ? [`wirekey is not running: agent pid ${s.pid} has exited; what its pins still show:`, 'workloads:']
    : s.readiness && !s.readiness.ready
      ? [`agent pid ${s.pid}: NOT READY: ${s.readiness.reason ?? 'not ready'}; what it last wrote and its pins show:`, 'workloads:']
      : [`agent pid ${s.pid}`, 'workloads:'];
  for (const w of s.workloads) lines.push(`  ${w.name} (precedence ${w.id}): ${w.problems.length ? w.problems.join('; ') : 'resolved'}`);
  lines.push('maps:');
  for (const m of s.maps) lines.push(`  ${m.name.padEnd(15)} ${String(m.entries).padStart(7)} / ${m.capacity}${m.entries >= m.capacity ? '  FULL' : ''}`);
  lines.push(`processes not recorded (wk_task_exe full): ${s.tasksFull}`);
  lines.push(`redirects refused (no socket storage): ${s.storageFailures}`);
  lines.push(`binds to the proxy port refused (uid other than 0): ${s.proxyPortBinds}`);
  if (s.kernelHttp) {
    // Refusals by their code (shared with the proxy); other counters by name.
    const { injected, ...rest } = s.kernelHttp;
    const nonzero = Object.entries(rest).filter(([, v]) => v > 0n)
      .map(([k, v]) => `${httpStatRefusal(k as HttpStatName) ?? k} ${v}`);
    lines.push(`kernel datapath: ${injected ?? 0n} request(s) injected${nonzero.length ? `; ${nonzero.join(', ')}` : ''}`);
  } else {
    lines.push('kernel datapath: not loaded (--no-kernel-datapath, or the kernel refused its programs: see the agent log)');
  }
  for (const e of s.egress) {
    lines.push(`egress ${e.name} (${e.mode}): ${e.refused} refused (egress-not-allowed), ${e.wouldRefuse} would-refuse in the kernel`);
  }
  if (s.egressEventsLost > 0n) lines.push(`egress events lost (ring buffer full): ${s.egressEventsLost}`);
  if (s.proxy) {
    const refused = Object.entries(s.proxy.refused).map(([k, v]) => `${k} ${v}`);
    const open = Object.values(s.proxy.connections).reduce((a, b) => a + b, 0);
    lines.push(`proxy: ${open} connection(s) open, ${s.proxy.handshakes} in handshake; refused: ${refused.length ? refused.join(', ') : 'none'}`);
  }
  if (!s.running && s.attached.length) {
    lines.push(`programs still attached: ${s.attached.length} (restricted workloads' egress rules stay enforced, and bound connections are redirected to the proxy port, where nothing listens: refused; only uid 0 may bind that port) until an agent starts and takes over, or the pin directory is removed`);
  }
  for (const d of s.draining) {
    lines.push(`draining ${d.dir}: ${d.connections} connection(s) of a previous agent, each refused at its next request; agent-gone ${d.refusedAgent}`);
  }
  return `${lines.join('\n')}\n`;
}
