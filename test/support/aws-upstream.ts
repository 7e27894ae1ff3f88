/**
 * An AWS-compatible upstream that checks signatures: moto in server mode,
 * with request authentication on, inside a test host's network namespace,
 * behind a TLS front that presents the test PKI's certificate for AWS host
 * names. The first requests (creating the IAM user whose keys wirekey holds)
 * are let through unauthenticated; every later one must be signed by a
 * known key with permission.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './paths.js';
import { must, run, type RunResult } from './shell.js';
import { runInCgroup } from './cgroup.js';
import type { TestHost } from './netns.js';

export const AWS_HOSTS = [
  'sts.amazonaws.com',
  'sts.us-east-1.amazonaws.com',
  's3.amazonaws.com',
  's3.us-east-1.amazonaws.com',
  'dynamodb.us-east-1.amazonaws.com',
];

/** The cached Python virtualenv with moto and the AWS CLI (scripts/python-tools). */
export async function pythonTools(): Promise<string> {
  return (await must(path.join(repoRoot, 'scripts/python-tools'), [])).trim();
}

export interface AwsUpstream {
  accessKeyId: string;
  secretAccessKey: string;
  userArn: string;
  stop(): Promise<void>;
}

const MOTO_PORT = 5000;
/** CreateUser, CreateAccessKey, PutUserPolicy: the unauthenticated bootstrap. */
const BOOTSTRAP_ACTIONS = 3;

export async function startAwsUpstream(host: TestHost, venv: string, cert: string, key: string, user: string): Promise<AwsUpstream> {
  const children: ChildProcess[] = [];
  const stop = async () => {
    for (const c of children) {
      if (c.exitCode === null) {
        const exited = new Promise((r) => c.once('exit', r));
        c.kill('SIGTERM');
        await exited;
      }
    }
  };
  try {
    const moto = spawn('ip', ['netns', 'exec', host.ns, path.join(venv, 'bin/moto_server'), '-H', '0.0.0.0', '-p', String(MOTO_PORT)], {
      env: { ...process.env, INITIAL_NO_AUTH_ACTION_COUNT: String(BOOTSTRAP_ACTIONS), MOTO_ALLOW_NONEXISTENT_REGION: 'false' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.push(moto);
    const front = spawn('ip', ['netns', 'exec', host.ns, process.execPath, path.join(repoRoot, 'test/support/tls-front.mjs'),
      '--cert', cert, '--key', key, '--port', '443', '--to', String(MOTO_PORT)], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(front);
    await new Promise<void>((resolve, reject) => {
      front.stdout?.once('data', () => resolve());
      front.once('exit', (code) => reject(new Error(`TLS front exited (${code})`)));
    });
    const endpoint = `http://${host.ipv4}:${MOTO_PORT}`;
    for (let i = 0; ; i++) {
      if ((await run('curl', ['-s', '-o', '/dev/null', `${endpoint}/moto-api/`])).code === 0) break;
      if (i > 100) throw new Error('moto_server did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    const aws = (...args: string[]) =>
      must(path.join(venv, 'bin/aws'), ['--endpoint-url', endpoint, '--output', 'json', ...args], {
        env: { ...process.env, AWS_ACCESS_KEY_ID: 'bootstrap', AWS_SECRET_ACCESS_KEY: 'bootstrap', AWS_DEFAULT_REGION: 'us-east-1' },
      });
    const created = JSON.parse(await aws('iam', 'create-user', '--user-name', user)) as { User: { Arn: string } };
    const keys = JSON.parse(await aws('iam', 'create-access-key', '--user-name', user)) as {
      AccessKey: { AccessKeyId: string; SecretAccessKey: string };
    };
    await aws('iam', 'put-user-policy', '--user-name', user, '--policy-name', 'all', '--policy-document',
      JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }] }));
    return { accessKeyId: keys.AccessKey.AccessKeyId, secretAccessKey: keys.AccessKey.SecretAccessKey, userArn: created.User.Arn, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

export interface AwsCliOptions {
  venv: string;
  /** An /etc/hosts for the CLI's private mount namespace: AWS host names -> the test host. */
  hostsFile: string;
  /** The CA bundle the CLI trusts (AWS_CA_BUNDLE). */
  ca: string;
  home: string;
  /** An AWS_CONFIG_FILE, e.g. for S3 path-style addressing. */
  configFile?: string;
}

/**
 * The AWS CLI as users run it, in cgroup `cg`, with placeholder keys (it
 * must sign with something; wirekey replaces the signature) and AWS host
 * names resolved to the test host through a private /etc/hosts.
 */
export function awsCli(cg: string, opts: AwsCliOptions, args: string[]): Promise<RunResult> {
  return runInCgroup(cg, 'unshare', ['-m', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', opts.hostsFile, path.join(opts.venv, 'bin/aws'), ...args], {
    timeoutMs: 120_000,
    env: {
      PATH: process.env.PATH,
      HOME: opts.home,
      AWS_ACCESS_KEY_ID: 'AKIAPLACEHOLDER00000',
      AWS_SECRET_ACCESS_KEY: 'placeholder-secret-key',
      AWS_DEFAULT_REGION: 'us-east-1',
      AWS_CA_BUNDLE: opts.ca,
      AWS_CONFIG_FILE: opts.configFile ?? '/dev/null',
      AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
      AWS_EC2_METADATA_DISABLED: 'true',
    },
  });
}
