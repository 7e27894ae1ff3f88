/**
 * moto in server mode on 127.0.0.1 (a random free port) with request
 * authentication on: after the bootstrap calls that create the first IAM
 * user, every request must be SigV4-signed by a known key that is allowed
 * the action. That is the endpoint OpenBao's AWS secrets engine talks to.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pythonTools } from './aws-upstream.js';
import { run } from './shell.js';

export interface MotoServer {
  /** http://127.0.0.1:PORT */
  url: string;
  port: number;
  venv: string;
  /** Calls boto3 (client `service`, method `op`, keyword args) with the given keys; returns the JSON answer. */
  call(keys: AwsKeys, service: string, op: string, args?: Record<string, unknown>): Promise<Record<string, unknown>>;
  /**
   * Creates an IAM user allowed everything, with an access key. Only the
   * first call is unauthenticated (moto's bootstrap); later ones must pass
   * keys of an existing user.
   */
  createIamUser(name: string, as?: AwsKeys): Promise<AwsKeys & { userName: string }>;
  /** The IAM user names moto knows, listed with `as`. */
  iamUserNames(as: AwsKeys): Promise<string[]>;
  stop(): Promise<void>;
}

export interface AwsKeys {
  accessKeyId: string;
  secretAccessKey: string;
}

/** CreateUser, PutUserPolicy, CreateAccessKey: the unauthenticated bootstrap. */
const BOOTSTRAP_ACTIONS = 3;

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

const CALL_PY = `
import json, sys, boto3
req = json.load(sys.stdin)
c = boto3.client(req["service"], endpoint_url=req["url"], region_name="us-east-1",
                 aws_access_key_id=req["ak"], aws_secret_access_key=req["sk"])
res = getattr(c, req["op"])(**req["args"])
res.pop("ResponseMetadata", None)
print(json.dumps(res, default=str))
`;

export async function startMoto(): Promise<MotoServer> {
  const venv = await pythonTools();
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wirekey-moto-'));
  const child = spawn(path.join(venv, 'bin/moto_server'), ['-H', '127.0.0.1', '-p', String(port)], {
    cwd: dir,
    env: { ...process.env, INITIAL_NO_AUTH_ACTION_COUNT: String(BOOTSTRAP_ACTIONS), MOTO_ALLOW_NONEXISTENT_REGION: 'false' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  live.add(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    live.delete(child);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; ; i++) {
      if (child.exitCode !== null) throw new Error(`moto_server exited (${child.exitCode}): ${stderr}`);
      try {
        // /moto-api/ is moto's own dashboard: no AWS action, not counted.
        if ((await fetch(`${url}/moto-api/`)).ok) break;
      } catch {
        // not listening yet
      }
      if (i > 200) throw new Error(`moto_server did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const call = async (keys: AwsKeys, service: string, op: string, args: Record<string, unknown> = {}) => {
      const r = await run(path.join(venv, 'bin/python'), ['-c', CALL_PY], {
        input: JSON.stringify({ service, op, args, url, ak: keys.accessKeyId, sk: keys.secretAccessKey }),
      });
      if (r.code !== 0) throw new Error(`boto3 ${service}.${op} failed: ${r.stderr.trim().split('\n').pop()}`);
      return JSON.parse(r.stdout) as Record<string, unknown>;
    };
    const bootstrap: AwsKeys = { accessKeyId: 'bootstrap', secretAccessKey: 'bootstrap' };
    return {
      url,
      port,
      venv,
      call,
      async createIamUser(name, as = bootstrap) {
        await call(as, 'iam', 'create_user', { UserName: name });
        await call(as, 'iam', 'put_user_policy', {
          UserName: name,
          PolicyName: 'all',
          PolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }] }),
        });
        const key = (await call(as, 'iam', 'create_access_key', { UserName: name })) as {
          AccessKey?: { AccessKeyId: string; SecretAccessKey: string };
        };
        if (!key.AccessKey) throw new Error('moto returned no access key');
        return { userName: name, accessKeyId: key.AccessKey.AccessKeyId, secretAccessKey: key.AccessKey.SecretAccessKey };
      },
      async iamUserNames(as) {
        const res = (await call(as, 'iam', 'list_users')) as { Users?: { UserName: string }[] };
        return (res.Users ?? []).map((u) => u.UserName);
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
