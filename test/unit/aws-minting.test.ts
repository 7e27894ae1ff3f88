/**
 * Which AWS calls the proxy refuses to sign because their answer is a
 * credential of its own (controller/inject/aws-minting.ts), wherever the
 * service's protocol names the action.
 */
import { describe, expect, it } from 'vitest';
import { actionInBody, mintingAction } from '../../controller/inject/aws-minting.js';

const form = ['Content-Type', 'application/x-www-form-urlencoded'];

describe('mintingAction', () => {
  it.each([
    ['sts', '/?Action=GetSessionToken&Version=2011-06-15', [], undefined, 'GetSessionToken'],
    ['sts', '/?action=assumerole', [], undefined, 'assumerole'],
    ['sts', '/?Act%69on=AssumeRole%57ithWebIdentity', [], undefined, 'AssumeRoleWithWebIdentity'],
    ['sts', '/?Version=1&Action=GetCallerIdentity&Action=GetFederationToken', [], undefined, 'GetFederationToken'],
    ['sts', '/', form, 'Version=2011-06-15&Action=AssumeRole&RoleArn=x', 'AssumeRole'],
    ['sts', '/', ['Content-Type', 'text/plain'], 'Action=Get%53essionToken', 'GetSessionToken'],
    ['sts', '/', form, 'Action=+AssumeRoot+', 'AssumeRoot'],
    ['sts', '/', ['X-Amz-Target', 'AWSSecurityTokenServiceV20110615.GetSessionToken'], '{}', 'GetSessionToken'],
    ['iam', '/', form, 'Action=CreateAccessKey&UserName=u', 'CreateAccessKey'],
    ['ecr', '/', ['X-Amz-Target', 'AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken'], '{}', 'GetAuthorizationToken'],
    ['codeartifact', '/v1/authorization-token?domain=d', [], undefined, 'GetAuthorizationToken'],
    ['s3express', '/?session', [], undefined, 'CreateSession'],
    ['s3', '/bucket?session=', [], undefined, 'CreateSession'],
    ['cognito-identity', '/', ['X-Amz-Target', 'AWSCognitoIdentityService.GetOpenIdTokenForDeveloperIdentity'], '{}', 'GetOpenIdTokenForDeveloperIdentity'],
  ] as const)('%s %s: %s', (service, path, headers, body, want) => {
    expect(mintingAction(service, { path, rawHeaders: [...headers], ...(body !== undefined ? { body: Buffer.from(body) } : {}) })).toBe(want);
  });

  it.each([
    ['sts', '/?Action=GetCallerIdentity&Version=2011-06-15', [], undefined],
    ['sts', '/', form, 'Action=GetAccessKeyInfo&AccessKeyId=AKIA'],
    ['iam', '/', form, 'Action=ListUsers'],
    ['s3', '/bucket/key?sessions=1', [], undefined],
    ['s3', '/bucket/session', [], undefined],
    ['dynamodb', '/', ['X-Amz-Target', 'DynamoDB_20120810.GetItem'], '{"Action":"AssumeRole"}'],
    // Not a service that mints: its actions are never looked at.
    ['sqs', '/?Action=AssumeRole', [], undefined],
  ] as const)('%s %s: none', (service, path, headers, body) => {
    expect(mintingAction(service, { path, rawHeaders: [...headers], ...(body !== undefined ? { body: Buffer.from(body) } : {}) })).toBeUndefined();
  });

  it('bodies are read only for the query-API services whose form bodies can name a minting action', () => {
    for (const s of ['sts', 'iam']) expect(actionInBody(s), s).toBe(true);
    // Named in a header, the path or the query; an S3 upload streams.
    for (const s of ['s3', 's3express', 'ecr', 'codeartifact', 'sqs', 'dynamodb', 'lambda']) expect(actionInBody(s), s).toBe(false);
  });
});
