/**
 * Kernel-path connections that outlive the agent they were opened under.
 *
 * A socket in wk_http_socks keeps running the sk_msg program (and its maps)
 * it was added under for as long as that sockhash lives, whether or not the
 * agent does: adding it took references to the map's programs into the
 * socket's psock (sock_map_link in net/core/sock_map.c), so neither a
 * detach nor the agent's exit takes them away. Once the sockhash is freed
 * (its last pin and fd gone), sock_hash_free unlinks every socket
 * (sock_map_unref), the psock goes with its last link and the socket's
 * original proto is put back: the sockets go on as plain sockets, and
 * their next requests would be sent without the header instead of being
 * refused. So a sockhash with
 * connections left in it is never let go: its pin moves, with the pins of
 * its wk_http_config and wk_http_stats, to a directory of its own under
 * drainingDir(pinDir) (bpffs supports rename), its heartbeat is set to 0 so
 * that every request on it is refused (refusedAgent), and its header lines
 * are wiped. The agent sweeps that directory once the sockhash is empty.
 *
 * The header map is never pinned: a previous instance's wk_http_hdr is found
 * through the program attached to its sockhash (BPF_PROG_QUERY, 5.19; on an
 * older kernel its lines stay until the sockhash is freed, and are never
 * injected again since the heartbeat is 0).
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { bpfCall, native, type NativeMap } from './native.js';
import { decodeHttpConfig, encodeHttpConfig, encodeU32, WK_HTTP_STATS } from './layout.js';
import { wipeHeaderLines } from './kernel-http.js';

const SOCKS = 'wk_http_socks';
const CONFIG = 'wk_http_config';
const STATS = 'wk_http_stats';
const HDR = 'wk_http_hdr';
const REFUSED_AGENT = WK_HTTP_STATS.indexOf('refusedAgent');

/** Where a pin directory's draining sockhashes go: next to it, on the same bpffs (names with a dot are reserved there). */
export function drainingDir(pinDir: string): string {
  return `${path.resolve(pinDir)}-draining`;
}

export interface DrainingSockhash {
  /** Its directory under drainingDir(pinDir): `socks-<map id>`. */
  dir: string;
  /** Connections still in it (each refused at its next request). */
  connections: number;
  /** Requests it refused because no agent was running (its refusedAgent counter). */
  refusedAgent: bigint;
}

export interface RetireResult {
  /** Set when connections remain: where the sockhash now drains. */
  draining: DrainingSockhash | null;
  /** Header lines wiped from the previous instance's wk_http_hdr. */
  wiped: number;
  /** Whether its heartbeat could be set to 0 (false: no pinned config, from an older agent). */
  expired: boolean;
}

/**
 * Retires the kernel-path pins an agent instance left in `fromDir` (a
 * crashed agent's pin directory, found by the next one; or a stopping
 * agent's own): sets its heartbeat to 0, wipes its header lines, and, when
 * connections remain in its sockhash, moves the sockhash, config and stats
 * pins under drainingDir(pinDir). Null when `fromDir` holds no sockhash pin.
 * The caller removes what is left of `fromDir`.
 * @throws BpfError, or a file system error from the move.
 */
export function retireSockhash(fromDir: string, pinDir: string): RetireResult | null {
  const socksPin = path.join(fromDir, SOCKS);
  if (!existsSync(socksPin)) return null;
  const socks = bpfCall(() => native().openPinnedMap(socksPin));
  const expired = expireAt(path.join(fromDir, CONFIG));
  const wiped = wipeAttachedHeaders(socks);
  const connections = socks.keys().length;
  if (!connections) return { draining: null, wiped, expired };
  let dir = path.join(drainingDir(pinDir), `socks-${socks.info().id ?? Date.now()}`);
  // Never into another sockhash's directory (a rename would replace its pins).
  if (existsSync(dir)) dir = `${dir}-${Date.now()}`;
  mkdirSync(path.dirname(dir), { recursive: true, mode: 0o700 });
  mkdirSync(dir, { mode: 0o700 });
  for (const name of [SOCKS, CONFIG, STATS]) {
    const from = path.join(fromDir, name);
    if (existsSync(from)) renameSync(from, path.join(dir, name));
  }
  return { draining: { dir, connections, refusedAgent: refusedAgent(dir) }, wiped, expired };
}

/** The sockhashes draining next to `pinDir`, with what is left in each. */
export function listDraining(pinDir: string): DrainingSockhash[] {
  const root = drainingDir(pinDir);
  if (!existsSync(root)) return [];
  const out: DrainingSockhash[] = [];
  for (const name of readdirSync(root).sort()) {
    const dir = path.join(root, name);
    let connections = 0;
    try {
      connections = bpfCall(() => native().openPinnedMap(path.join(dir, SOCKS))).keys().length;
    } catch {
      /* no sockhash pin left: nothing to keep */
    }
    out.push({ dir, connections, refusedAgent: refusedAgent(dir) });
  }
  return out;
}

/**
 * Removes the draining sockhashes whose connections have all closed (and
 * the draining directory once it is empty). Returns those removed.
 */
export function sweepDraining(pinDir: string): DrainingSockhash[] {
  const swept: DrainingSockhash[] = [];
  for (const d of listDraining(pinDir)) {
    if (d.connections) continue;
    rmSync(d.dir, { recursive: true, force: true });
    swept.push(d);
  }
  const root = drainingDir(pinDir);
  if (existsSync(root) && readdirSync(root).length === 0) rmSync(root, { recursive: true, force: true });
  return swept;
}

/** Sets the heartbeat of a pinned wk_http_config to 0. False when there is no such pin. */
function expireAt(configPin: string): boolean {
  if (!existsSync(configPin)) return false;
  const map = bpfCall(() => native().openPinnedMap(configPin));
  const key = encodeU32(0);
  const cur = map.lookup(key);
  const { epoch, flags } = cur ? decodeHttpConfig(cur) : { epoch: 0, flags: 0 };
  bpfCall(() => map.update(key, encodeHttpConfig(epoch, flags, 0n)));
  return true;
}

/** Wipes the header lines of the wk_http_hdr used by the sk_msg program attached to `socks`. */
function wipeAttachedHeaders(socks: NativeMap): number {
  const addon = native();
  let ids: number[];
  try {
    ids = socks.attachedPrograms();
  } catch {
    return 0; // before 5.19 a sockhash cannot be asked for its programs
  }
  let wiped = 0;
  for (const prog of ids) {
    for (const id of bpfCall(() => addon.programMapIds(prog))) {
      const map = bpfCall(() => addon.openMapById(id));
      if (map.info().name === HDR) wiped += wipeHeaderLines(map);
    }
  }
  return wiped;
}

function refusedAgent(dir: string): bigint {
  try {
    const stats = native().openPinnedMap(path.join(dir, STATS));
    return stats.lookup(encodeU32(REFUSED_AGENT))?.readBigUInt64LE(0) ?? 0n;
  } catch {
    return 0n;
  }
}
