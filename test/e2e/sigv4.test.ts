/**
 * SigV4 end to end: the AWS CLI runs as a bound workload with placeholder
 * credentials, and moto (request authentication on, behind TLS in a test
 * network namespace) accepts its requests because wirekey re-signs them with
 * keys the CLI never sees. Without wirekey, moto rejects the same calls.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture } from '../support/e2e-fixture.js';
import { AWS_HOSTS, awsCli, pythonTools, startAwsUpstream, type AwsUpstream } from '../support/aws-upstream.js';
import { kernelSkipReason } from '../support/requirements.js';
import { runInCgroup } from '../support/cgroup.js';
import type { RunResult } from '../support/shell.js';
import { waitFor } from '../support/wait.js';

const skip = kernelSkipReason();
const BUCKET = 'wirekey-test-bucket';

describe.skipIf(skip)(`SigV4 signing for AWS clients${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let aws: AwsUpstream;
  let venv: string;
  let bound: string;
  let unbound: string;
  let hostsFile: string;
  let configFile: string;
  const hashOf = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

  const cli = (cg: string, ca: string, args: string[]): Promise<RunResult> =>
    awsCli(cg, { venv, hostsFile, ca, home: f.dir, configFile }, args);

  beforeAll(async () => {
    venv = await pythonTools();
    await f.setUp({ hosts: AWS_HOSTS, upstream: false });
    aws = await startAwsUpstream(f.host, venv, f.pki.serverCert, f.pki.serverKey, 'wirekey-agent');
    f.onClose(() => aws.stop());
    bound = f.cgroup('aws-cli');
    unbound = f.cgroup('elsewhere');
    hostsFile = path.join(f.shared, 'hosts');
    writeFileSync(hostsFile, `127.0.0.1 localhost\n${AWS_HOSTS.map((h) => `${f.host.ipv4} ${h}`).join('\n')}\n`);
    configFile = path.join(f.shared, 'aws-config');
    writeFileSync(configFile, '[default]\ns3 =\n  addressing_style = path\n');
    const keys = path.join(f.dir, 'aws-keys.yaml');
    writeFileSync(keys, `access_key_id: ${aws.accessKeyId}\nsecret_access_key: ${aws.secretAccessKey}\n`, { mode: 0o600 });
    f.writeRawPolicy(`apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: aws-keys}
spec: {file: {path: ${keys}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: aws}
spec: {hosts: [${AWS_HOSTS.join(', ')}], port: 443, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: cli}
spec: {selector: {cgroup: ${f.cgBase}/aws-cli}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: cli-aws}
spec: {workload: cli, service: aws, inject: {sigv4: {credential: aws-keys}}}
`);
    await f.startAgent();
  }, 300_000);

  afterAll(() => f.close());

  it('sts get-caller-identity answers with the identity of the keys wirekey holds', async () => {
    const r = await cli(bound, f.wirekeyCa, ['sts', 'get-caller-identity', '--output', 'json']);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ Arn: aws.userArn });
  });

  it('s3 mb, cp of a small and of a multi-part 24 MiB file, ls, and byte-identical downloads', async () => {
    const small = path.join(f.dir, 'small.txt');
    const large = path.join(f.dir, 'large.bin');
    writeFileSync(small, 'hello from a workload with no keys\n');
    writeFileSync(large, randomBytes(24 * 1024 * 1024 + 123));
    const ok = async (args: string[]) => {
      const r = await cli(bound, f.wirekeyCa, args);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.code, args.join(' ')).toBe(0);
      return r.stdout;
    };
    await ok(['s3', 'mb', `s3://${BUCKET}`]);
    await ok(['s3', 'cp', small, `s3://${BUCKET}/small.txt`, '--only-show-errors']);
    await ok(['s3', 'cp', large, `s3://${BUCKET}/large.bin`, '--only-show-errors']);
    const listing = await ok(['s3', 'ls', `s3://${BUCKET}/`]);
    expect(listing).toContain('small.txt');
    expect(listing).toContain(String(24 * 1024 * 1024 + 123));
    for (const name of ['small.txt', 'large.bin']) {
      const back = path.join(f.dir, `back-${name}`);
      await ok(['s3', 'cp', `s3://${BUCKET}/${name}`, back, '--only-show-errors']);
      expect(hashOf(back)).toBe(hashOf(path.join(f.dir, name === 'small.txt' ? 'small.txt' : 'large.bin')));
    }
  });

  it('a JSON-protocol service (DynamoDB) works too', async () => {
    const create = await cli(bound, f.wirekeyCa, ['dynamodb', 'create-table', '--table-name', 'wk', '--attribute-definitions',
      'AttributeName=id,AttributeType=S', '--key-schema', 'AttributeName=id,KeyType=HASH', '--billing-mode', 'PAY_PER_REQUEST']);
    expect(create.stderr).toBe('');
    const list = await cli(bound, f.wirekeyCa, ['dynamodb', 'list-tables', '--output', 'json']);
    expect(JSON.parse(list.stdout)).toMatchObject({ TableNames: ['wk'] });
  });

  it('over HTTP/2 from the workload (curl --http2): signed and sent on HTTP/1.1 upstream, a body read to be signed included', async () => {
    const s3 = 's3.us-east-1.amazonaws.com';
    const body = path.join(f.dir, 'h2-object.bin');
    writeFileSync(body, randomBytes(200_000));
    const curl = (args: string[]) =>
      runInCgroup(bound, 'curl', ['-sS', '--http2', '--resolve', `${s3}:443:${f.host.ipv4}`, '--cacert', f.wirekeyCa, '-w', '\n%{http_code} %{http_version}', ...args]);
    // Not curl's default form content type: moto's server would read the body as a form.
    const put = await curl(['-o', '/dev/null', '-X', 'PUT', '-H', 'Content-Type: application/octet-stream', '--data-binary', `@${body}`,
      `https://${s3}/${BUCKET}/h2-object.bin`]);
    expect(put.stderr).toBe('');
    expect(put.stdout.trim()).toBe('200 2');
    const back = path.join(f.dir, 'h2-object-back.bin');
    const get = await curl(['-o', back, `https://${s3}/${BUCKET}/h2-object.bin`]);
    expect(get.stdout.trim()).toBe('200 2');
    expect(hashOf(back)).toBe(hashOf(body));
  });

  it('without wirekey, moto rejects the same calls', async () => {
    const r = await cli(unbound, f.pki.caCert, ['sts', 'get-caller-identity']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/InvalidClientTokenId|SignatureDoesNotMatch|security token/i);
    const ls = await cli(unbound, f.pki.caCert, ['s3', 'ls', `s3://${BUCKET}/`]);
    expect(ls.code).not.toBe(0);
    expect(ls.stderr).toMatch(/InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied/);
  });

  it('refuses what it cannot sign safely: signed chunks, and unhashed bodies over the limit', async () => {
    const s3 = 's3.us-east-1.amazonaws.com';
    const curl = (args: string[]) =>
      runInCgroup(bound, 'curl', ['-sS', '--resolve', `${s3}:443:${f.host.ipv4}`, '--cacert', f.wirekeyCa, '-o', '/dev/null', '-w', '%{http_code}', ...args]);
    const chunks = await curl(['-X', 'PUT', '-H', 'x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD', '--data-binary', 'x', `https://${s3}/${BUCKET}/c`]);
    expect(chunks.stdout).toBe('400');
    const big = path.join(f.dir, 'big.bin');
    writeFileSync(big, Buffer.alloc(17 * 1024 * 1024, 1));
    const tooBig = await curl(['-X', 'PUT', '--data-binary', `@${big}`, `https://${s3}/${BUCKET}/big`]);
    expect(tooBig.stdout).toBe('413');
    const audit = readFileSync(f.auditPath, 'utf8');
    expect(audit).toContain('"reason":"sigv4-signed-chunks"');
    expect(audit).toContain('"reason":"sigv4-body-too-large"');
  });

  it('refuses to sign calls that would hand the workload AWS credentials of its own (STS GetSessionToken, AssumeRole), however they are spelt', async () => {
    const before = readFileSync(f.auditPath, 'utf8').length;
    // The AWS CLI's own calls.
    const session = await cli(bound, f.wirekeyCa, ['sts', 'get-session-token', '--output', 'json']);
    expect(session.code).not.toBe(0);
    expect(session.stdout).not.toMatch(/AccessKeyId|SecretAccessKey/);
    const assumed = await cli(bound, f.wirekeyCa, ['sts', 'assume-role', '--role-arn', 'arn:aws:iam::123456789012:role/r', '--role-session-name', 'session', '--output', 'json']);
    expect(assumed.code).not.toBe(0);
    expect(assumed.stdout).not.toMatch(/AccessKeyId|SecretAccessKey/);
    // By hand: in the query, in a form body whose hash the workload declares, in other spellings.
    const sts = 'sts.amazonaws.com';
    const curl = (args: string[]) =>
      runInCgroup(bound, 'curl', ['-sS', '--resolve', `${sts}:443:${f.host.ipv4}`, '--cacert', f.wirekeyCa, '-w', '\n%{http_code}', ...args]);
    const attempts = [
      [`https://${sts}/?Action=GetSessionToken&Version=2011-06-15`],
      [`https://${sts}/?action=getsessiontoken&Version=2011-06-15`],
      [`https://${sts}/?Act%69on=GetSessionToken&Version=2011-06-15`],
      ['-X', 'POST', '-H', 'Content-Type: application/x-www-form-urlencoded', '--data', 'Version=2011-06-15&Action=GetSessionToken', `https://${sts}/`],
      ['-X', 'POST', '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD', '-H', 'Content-Type: text/plain', '--data', 'Action=Assume%52ole&RoleArn=arn:aws:iam::123456789012:role/r&RoleSessionName=s&Version=2011-06-15', `https://${sts}/`],
      ['-X', 'POST', '-H', 'X-Amz-Target: AWSSecurityTokenServiceV20110615.GetSessionToken', '-H', 'Content-Type: application/x-amz-json-1.1', '--data', '{}', `https://${sts}/`],
    ];
    for (const args of attempts) {
      const r = await curl(args);
      const [body, code] = [r.stdout.slice(0, r.stdout.lastIndexOf('\n')), r.stdout.slice(r.stdout.lastIndexOf('\n') + 1)];
      expect(code, args.join(' ')).toBe('403');
      expect(body, args.join(' ')).not.toMatch(/AccessKeyId|SecretAccessKey/);
    }
    // Other STS calls are signed as before.
    const who = await curl([`https://${sts}/?Action=GetCallerIdentity&Version=2011-06-15`]);
    expect(who.stdout.endsWith('\n200')).toBe(true);
    const refusals = () => readFileSync(f.auditPath, 'utf8').slice(before).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.reason === 'sigv4-mints-credentials');
    await waitFor(() => refusals().length >= attempts.length + 2, 'a deny line per refused call');
  });

  it('a signed header with bytes outside ASCII is refused with 400 (it would be signed otherwise than sent); nothing reaches AWS', async () => {
    const s3 = 's3.us-east-1.amazonaws.com';
    const r = await runInCgroup(bound, 'curl', ['-sS', '--resolve', `${s3}:443:${f.host.ipv4}`, '--cacert', f.wirekeyCa, '-o', '/dev/null', '-w', '%{http_code}',
      '-H', 'X-Amz-Meta-A: caf\u00e9', `https://${s3}/${BUCKET}/`]);
    expect(r.stdout).toBe('400');
  });

  it('Expect: 100-continue: a body read to be signed is asked for by wirekey; a streamed one gets moto\'s 100', async () => {
    const s3 = 's3.us-east-1.amazonaws.com';
    const body = path.join(f.dir, 'continue.bin');
    writeFileSync(body, randomBytes(1024 * 1024 + 3));
    const bucket = 'wirekey-continue';
    expect((await cli(bound, f.wirekeyCa, ['s3', 'mb', `s3://${bucket}`])).code).toBe(0);
    for (const [key, extra] of [['signed-here', []], ['unsigned', ['-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD']]] as const) {
      // Without a 100, curl would wait --expect100-timeout (past --max-time) before sending the body.
      const r = await runInCgroup(bound, 'curl', ['-sS', '-v', '--http1.1', '--max-time', '30', '--resolve', `${s3}:443:${f.host.ipv4}`, '--cacert', f.wirekeyCa,
        // (curl's default form type would have moto's web framework parse the body away.)
        '-X', 'PUT', '-H', 'Content-Type: application/octet-stream', '-H', 'Expect: 100-continue', '--expect100-timeout', '60', ...extra, '--data-binary', `@${body}`,
        '-o', '/dev/null', '-w', '%{http_code}', `https://${s3}/${bucket}/${key}`]);
      expect(r.stdout, key).toBe('200');
      expect(r.stderr, key).toMatch(/< HTTP\/1\.1 100 Continue/);
      const back = path.join(f.dir, `back-${key}`);
      const get = await cli(bound, f.wirekeyCa, ['s3', 'cp', `s3://${bucket}/${key}`, back, '--only-show-errors']);
      expect(get.stderr, key).toBe('');
      expect(hashOf(back), key).toBe(hashOf(body));
    }
  });

  it('audit lines name the credential and the access key id; the secret key is nowhere', () => {
    const audit = readFileSync(f.auditPath, 'utf8');
    const lines = audit.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l.decision === 'inject')).toMatchObject({ workload: 'cli', credential: 'aws-keys', accessKeyId: aws.accessKeyId });
    expect(audit).not.toContain(aws.secretAccessKey);
    expect(f.agent?.output()).not.toContain(aws.secretAccessKey);
  });
});
