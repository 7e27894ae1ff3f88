/**
 * The other end of the control socket: what `wirekey reload` asks the
 * running agent, over HTTP on STATE_DIR/agent.sock.
 */
import http from 'node:http';
import { controlSocketPath } from './control-server.js';
import type { ReloadResult } from './agent.js';
import { WirekeyError } from '../errors.js';
import { agentRunning } from '../datapath/instance-lock.js';

/**
 * Asks the agent running with `stateDir` to reload its policy and waits for
 * the result (applied, or refused with its problems).
 * @throws WirekeyError WK_NO_AGENT (nothing listens on the socket, and no
 *   agent holds the lock), WK_ACCESS (not permitted to open it), WK_CONTROL
 *   (the agent holding the lock does not accept on its socket, did not
 *   answer within `timeoutMs`, is still starting, or answered something
 *   else than a result), WK_RELOAD_FAILED (it failed while reloading, and
 *   answered an error instead of a result).
 */
export async function requestReload(stateDir: string, timeoutMs: number): Promise<ReloadResult> {
  const socketPath = controlSocketPath(stateDir);
  const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ socketPath, method: 'POST', path: '/reload', headers: { host: 'wirekey' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () =>
      req.destroy(new WirekeyError('WK_CONTROL', `the agent did not answer within ${Math.round(timeoutMs / 1000)}s (its reload may still end; see its log)`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err instanceof WirekeyError) reject(err);
      else if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(socketUnanswered(stateDir, socketPath, err.code));
      } else if (err.code === 'EACCES' || err.code === 'EPERM') {
        reject(new WirekeyError('WK_ACCESS', `cannot open ${socketPath}: permission denied (run as root)`));
      } else reject(new WirekeyError('WK_CONTROL', `cannot ask the agent on ${socketPath}: ${err.message}`, { cause: err }));
    });
    req.end();
  });
  const answer = body.trim().split('\n')[0];
  if (status === 503) throw new WirekeyError('WK_CONTROL', `the agent cannot reload now (HTTP ${status}): ${answer}`);
  if (status !== 200) {
    throw new WirekeyError('WK_RELOAD_FAILED', `the agent's reload failed (HTTP ${status}): ${answer}; its log says which policy is in force`);
  }
  try {
    return JSON.parse(body) as ReloadResult;
  } catch {
    throw new WirekeyError('WK_CONTROL', `the agent's answer is not a reload result: ${body.slice(0, 200)}`);
  }
}

/** Nothing accepts on the control socket: no agent, or (its lock held) an agent whose socket is gone or not served. */
function socketUnanswered(stateDir: string, socketPath: string, code: string): WirekeyError {
  let owner: ReturnType<typeof agentRunning>;
  try {
    owner = agentRunning(stateDir);
  } catch (err) {
    return err as WirekeyError;
  }
  if (owner.running) {
    return new WirekeyError('WK_CONTROL', `the agent (pid ${owner.pid}) is running with state dir ${stateDir}, but its control socket ${socketPath} does not answer (${code})`);
  }
  return new WirekeyError('WK_NO_AGENT', `no agent is running with state dir ${stateDir} (nothing listens on ${socketPath})`);
}

/** Whether the agent answers ready on its control socket; `reason` says what it answered instead. */
export type Readiness = { ready: true } | { ready: false; reason: string };

/**
 * Asks the agent running with `stateDir` for GET /readyz, for at most
 * `timeoutMs`: an agent whose lock is held but whose event loop is stuck
 * (a hang, SIGSTOP) answers nothing, which its lock alone cannot show.
 * @throws WirekeyError WK_ACCESS (not permitted to open the socket).
 */
export async function probeReadiness(stateDir: string, timeoutMs: number): Promise<Readiness> {
  const socketPath = controlSocketPath(stateDir);
  return new Promise<Readiness>((resolve, reject) => {
    const req = http.request({ socketPath, method: 'GET', path: '/readyz', headers: { host: 'wirekey' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200
        ? { ready: true }
        : { ready: false, reason: `it answers ${body.trim().split('\n')[0] || `HTTP ${res.statusCode}`} on its control socket ${socketPath}` }));
      res.on('error', (err) => resolve({ ready: false, reason: `its answer on ${socketPath} broke off: ${err.message}` }));
    });
    req.setTimeout(timeoutMs, () => {
      req.destroy();
      resolve({ ready: false, reason: `it does not answer on its control socket ${socketPath} within ${timeoutMs / 1000}s (hung or stopped?)` });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EACCES' || err.code === 'EPERM') reject(new WirekeyError('WK_ACCESS', `cannot open ${socketPath}: permission denied (run as root)`));
      else resolve({ ready: false, reason: `its control socket ${socketPath} does not answer (${err.code ?? err.message})` });
    });
    req.end();
  });
}
