/**
 * Turns a binding's injection and its credential into the request that goes
 * upstream. The only place a secret value becomes header bytes.
 */
import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import type { Credential } from '../credentials/credential.js';
import { Secret } from '../credentials/secret.js';
import type { PlanInjection } from '../policy/types.js';
import { CredentialError, WirekeyError } from '../errors.js';
import type { RefusalCode } from '../refusals.js';
import { bodyEndsConnection, originForm, upstreamRequestHeaders } from '../http/headers.js';
import type { ByteBudget } from './byte-budget.js';
import { signSigV4, stripQuerySignature, type AwsCredentials } from './sigv4.js';
import { inferAwsScope } from '../policy/aws-scope.js';
import { actionInBody, mintingAction } from './aws-minting.js';
import { IDENTITY_CODING, maskedValues, type MaskSet } from './reflection.js';
import { createHash } from 'node:crypto';

/** Request headers a workload sends that never reach the upstream: it holds no credential, so any it sends is replaced. */
export const CREDENTIAL_HEADERS = new Set(['authorization', 'proxy-authorization']);

/** A request the injection cannot be applied to, with the HTTP status to answer. */
export class InjectionRefusal extends WirekeyError {
  readonly status: number;
  readonly reason: RefusalCode;

  constructor(status: number, reason: RefusalCode, message: string) {
    super('WK_INJECT_REFUSED', message);
    this.status = status;
    this.reason = reason;
  }
}

export interface UpstreamRequest {
  /** Raw [name, value, ...] headers to send. */
  headers: string[];
  /** The request target to send. */
  path: string;
  /** The whole body, when it had to be read to be signed; otherwise the body streams from the client. */
  body?: Buffer;
  /**
   * The upstream connection must carry no request after this one
   * (bodyEndsConnection): sent with `Connection: close` over HTTP/1.1 and
   * never reused.
   */
  closeAfter?: boolean;
  /**
   * The credential values this request carries upstream, which its
   * response must not carry back to the workload (masked by the proxy,
   * see reflection.ts); absent when none is long enough to look for.
   */
  masked?: MaskSet;
  /** For audit: the AWS access key id that signed it. */
  accessKeyId?: string;
  /** For audit: the credential's version (KV) and lease. */
  credentialVersion?: string;
  leaseId?: string;
}

export interface InjectOptions {
  /** The TLS server name the request is for. */
  host: string;
  /** The port the workload connected to: Host carries it when it is not 443. */
  port: number;
  /** Largest body read into memory to compute a SigV4 payload hash. */
  sigv4BodyLimit: number;
  /** Memory all requests together may hold for SigV4 payload hashes; what a read body took is released by the caller. */
  sigv4BodyBudget?: ByteBudget;
  /** Runs just before the body is read (to be signed): the proxy answers `Expect: 100-continue` there. */
  beforeBodyRead?: () => void;
}

/**
 * A request to inject that is not an HTTP/1.1 IncomingMessage: an HTTP/2
 * stream, its head already checked (controller/proxy/h2.ts).
 */
export interface StreamedRequest {
  method: string;
  url: string;
  /** [name, value, ...], with one Host header (HTTP/2: `:authority`). */
  rawHeaders: string[];
  /**
   * The body. Also what a SigV4 body read holds in the budget under.
   * Undefined where the body streams past the injection (the HTTP/1.1 fast
   * path, which takes no SigV4 binding): a body that must be read is then refused.
   */
  body: Readable | undefined;
  /** The body's length is not declared: it is framed chunked on an HTTP/1.1 upstream. */
  unknownLength: boolean;
}

const EMPTY_SHA256 = createHash('sha256').digest('hex');
const STREAMED_HASHES = new Set(['UNSIGNED-PAYLOAD', 'STREAMING-UNSIGNED-PAYLOAD-TRAILER']);

/**
 * The upstream request for `req` with `inject` applied.
 * @throws CredentialError when the credential lacks what the injection
 *   needs; InjectionRefusal when the request cannot be injected safely.
 */
export async function prepareUpstreamRequest(
  source: IncomingMessage | StreamedRequest,
  inject: PlanInjection,
  credential: Credential,
  opts: InjectOptions,
): Promise<UpstreamRequest> {
  const req = asStreamedRequest(source);
  switch (inject.kind) {
    case 'bearer':
    case 'header':
    case 'basic':
      return injectHeader(req, inject, credential, opts);
    case 'sigv4': {
      const { headers, length, closeAfter } = upstreamBase(req, CREDENTIAL_HEADERS, opts);
      const target = originForm(req.url);
      const chunked = req.unknownLength;
      const framing = (body?: Buffer): string[] =>
        body ? ['Content-Length', String(body.length)] : framingOf(chunked, length);
      const host = authorityOf(opts);
      const scope = inject.service && inject.region ? { service: inject.service, region: inject.region } : inferAwsScope(opts.host);
      // validate refuses such a binding; this guards a policy loaded some other way.
      if (!scope) throw new InjectionRefusal(502, 'sigv4-scope', `cannot tell the AWS service and region of ${opts.host}`);
      const creds = awsCredentials(credential);
      const masked = creds.sessionToken ? maskedValues([creds.sessionToken.reveal()]) : undefined;
      if (masked) askIdentity(headers);
      const declared = headerValue(req.rawHeaders, 'x-amz-content-sha256');
      let payloadHash: string;
      let body: Buffer | undefined;
      const hasBody = chunked || Number(length ?? 0) > 0;
      const readWhole = async (): Promise<Buffer> => {
        if (!req.body) throw new WirekeyError('WK_INJECT_NO_BODY', 'a SigV4 request body must be read to be signed, and this path cannot read it');
        opts.beforeBodyRead?.();
        const whole = await readBody(req.body, opts.sigv4BodyLimit, opts.sigv4BodyBudget);
        // The body was asked for and read here; the upstream gets it whole at once, with nothing to wait for.
        dropHeader(headers, 'expect');
        return whole;
      };
      if (declared !== undefined) {
        payloadHash = declared;
        if (declared.startsWith('STREAMING-') && !STREAMED_HASHES.has(declared)) {
          throw new InjectionRefusal(400, 'sigv4-signed-chunks',
            `payloads signed chunk by chunk (${declared}) cannot be re-signed; configure the client for unsigned payloads ` +
            '(AWS CLI and SDKs do this by default over HTTPS)');
        }
        // A form body may name the action: read it for services whose actions can mint credentials.
        if (hasBody && actionInBody(scope.service)) body = await readWhole();
      } else if (!hasBody) {
        payloadHash = EMPTY_SHA256;
      } else {
        body = await readWhole();
        payloadHash = createHash('sha256').update(body).digest('hex');
      }
      const minted = mintingAction(scope.service, { path: target, rawHeaders: req.rawHeaders, ...(body ? { body } : {}) });
      if (minted !== undefined) {
        throw new InjectionRefusal(403, 'sigv4-mints-credentials',
          `${minted} would have ${scope.service} hand out AWS credentials of their own, usable without wirekey; it is not signed`);
      }
      let signed: string[];
      try {
        signed = await signSigV4({ method: req.method, host, path: target, rawHeaders: [...headers, ...framing(body)], payloadHash }, creds, scope, new Date());
      } catch (err) {
        // The request cannot be signed as sent: the workload's to mend (400), not a credential failure.
        if (err instanceof WirekeyError && err.code === 'WK_SIGV4_REQUEST') throw new InjectionRefusal(400, 'malformed-request', err.message);
        throw err;
      }
      return provenance({
        headers: signed, path: stripQuerySignature(target), body, accessKeyId: creds.accessKeyId,
        ...(masked ? { masked } : {}), ...(closeAfter ? { closeAfter } : {}),
      }, credential);
    }
  }
}

/** `source` as a StreamedRequest: an HTTP/1.1 request's body is the request itself. */
export function asStreamedRequest(source: IncomingMessage | StreamedRequest): StreamedRequest {
  return 'body' in source
    ? source
    : { method: source.method ?? 'GET', url: source.url ?? '/', rawHeaders: source.rawHeaders, body: source,
      unknownLength: headerValue(source.rawHeaders, 'transfer-encoding') !== undefined };
}

/** An injection that adds one header: nothing of the body is read or signed. */
export type HeaderInjectionPlan = Extract<PlanInjection, { kind: 'bearer' | 'header' | 'basic' }>;

/**
 * The upstream request for `req` with a header injection applied: what
 * prepareUpstreamRequest() answers for one, at once (the proxy admits a
 * request whose credential is at hand without waiting a turn).
 * @throws CredentialError when the credential lacks what the injection needs.
 */
export function injectHeader(req: StreamedRequest, inject: HeaderInjectionPlan, credential: Credential, opts: Pick<InjectOptions, 'host' | 'port'>): UpstreamRequest {
  const { headers, length, closeAfter } = upstreamBase(req, inject.kind === 'header' ? dropSet(inject.name) : CREDENTIAL_HEADERS, opts);
  const line = cachedCredentialHeader(inject, credential);
  if (line.masked) askIdentity(headers);
  headers.push(line.name, line.value.reveal(), ...framingOf(req.unknownLength, length));
  const out: UpstreamRequest = { headers, path: originForm(req.url) };
  if (line.masked) out.masked = line.masked;
  if (closeAfter) out.closeAfter = true;
  return provenance(out, credential);
}

/**
 * Host and the workload's headers that go upstream (without `drop`), the
 * Content-Length it framed its body by, and whether the upstream
 * connection must end after it (bodyEndsConnection). Host and framing are
 * the proxy's: the checked host, and the length llhttp (or the fast path)
 * framed the body by, or chunked; never what the workload listed.
 */
function upstreamBase(
  req: StreamedRequest, drop: ReadonlySet<string>, opts: Pick<InjectOptions, 'host' | 'port'>,
): { headers: string[]; length: string | undefined; closeAfter: boolean } {
  const headers = ['Host', authorityOf(opts)];
  upstreamRequestHeaders(req.rawHeaders, drop, headers);
  const length = req.unknownLength ? undefined : headerValue(req.rawHeaders, 'content-length');
  // Expect: the upstream may answer before the body and not read it (as it
  // should, by closing), or read it late: either way, nothing follows it.
  const closeAfter = bodyEndsConnection(req.method, req.unknownLength || Number(length ?? 0) > 0) || headerValue(req.rawHeaders, 'expect') !== undefined;
  return { headers, length, closeAfter };
}

/** The Host the upstream gets: the checked server name, with the port when it is not 443. */
function authorityOf(opts: Pick<InjectOptions, 'host' | 'port'>): string {
  return opts.port === 443 ? opts.host : `${opts.host}:${opts.port}`;
}

function framingOf(chunked: boolean, length: string | undefined): string[] {
  return chunked ? ['Transfer-Encoding', 'chunked'] : length !== undefined ? ['Content-Length', length] : [];
}

/** Per header name a `header` binding sets: the request headers dropped for it. */
const dropSets = new Map<string, ReadonlySet<string>>();

function dropSet(name: string): ReadonlySet<string> {
  let set = dropSets.get(name);
  if (!set) {
    set = new Set([...CREDENTIAL_HEADERS, name.toLowerCase()]);
    // Names come from policies; a long-running agent reloading many keeps a bounded few.
    if (dropSets.size >= 1024) dropSets.clear();
    dropSets.set(name, set);
  }
  return set;
}

/**
 * credentialHeader, built once per credential value and injection: a
 * Credential object is one value (a rotation or a renewed lease is a new
 * object), an injection one binding of one plan (a reload makes new ones).
 * Both keys are weak: nothing is kept for a credential or plan gone.
 */
const headerCache = new WeakMap<Credential, WeakMap<PlanInjection, CredentialHeader & { masked: MaskSet | undefined }>>();

function cachedCredentialHeader(inject: HeaderInjectionPlan, credential: Credential): CredentialHeader & { masked: MaskSet | undefined } {
  let byInjection = headerCache.get(credential);
  if (!byInjection) {
    byInjection = new WeakMap();
    headerCache.set(credential, byInjection);
  }
  let line = byInjection.get(inject);
  if (!line) {
    const header = credentialHeader(inject, credential);
    line = { ...header, masked: maskedValues(reflectedValues(inject, credential, header)) };
    byInjection.set(inject, line);
  }
  return line;
}

/** A header an injection adds; the value stays a Secret until it goes on the wire. */
export interface CredentialHeader {
  name: string;
  value: Secret;
}

/**
 * The header a bearer, header or basic injection adds, for the proxy and
 * the kernel datapath alike.
 * @throws CredentialError when the credential lacks what the injection needs.
 */
export function credentialHeader(
  inject: Extract<PlanInjection, { kind: 'bearer' | 'header' | 'basic' }>,
  credential: Credential,
): CredentialHeader {
  const header = buildHeader(inject, credential);
  const problem = headerValueProblem(header.value.reveal());
  if (problem) throw new CredentialError(credential.name, `cannot be sent in the ${header.name} header: it ${problem}`);
  return header;
}

/**
 * Why `value` cannot be an HTTP header value (RFC 9110 5.5: visible
 * characters, SP and HTAB, not at either end), or null. Never quotes the value.
 */
export function headerValueProblem(value: string): string | null {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) return 'holds a control character (CR, LF, NUL, ...)';
    if (c > 0xff) return 'holds a character outside Latin-1';
  }
  if (!value.length) return 'is empty';
  if (/^[ \t]|[ \t]$/.test(value)) return 'begins or ends with whitespace';
  return null;
}

function buildHeader(inject: Extract<PlanInjection, { kind: 'bearer' | 'header' | 'basic' }>, credential: Credential): CredentialHeader {
  switch (inject.kind) {
    case 'bearer':
      return { name: 'Authorization', value: new Secret(`Bearer ${single(credential).reveal()}`) };
    case 'header':
      return { name: inject.name, value: new Secret(inject.format.replace('{secret}', () => single(credential).reveal())) };
    case 'basic': {
      const username = inject.username ?? field(credential, ['username', 'user'])?.reveal();
      const password = inject.username !== undefined ? single(credential) : field(credential, ['password']);
      if (username === undefined || !password) {
        throw new CredentialError(credential.name, 'has no username and password fields for basic authentication (or set username in the binding)');
      }
      if (username.includes(':')) throw new CredentialError(credential.name, 'has a username with a colon, which basic authentication cannot carry');
      return { name: 'Authorization', value: new Secret(`Basic ${Buffer.from(`${username}:${password.reveal()}`, 'utf8').toString('base64')}`) };
    }
  }
}

/**
 * What of a header injection's credential an echoing upstream could send
 * back: the secret as injected, and for basic authentication the encoded
 * pair and the password alone.
 */
function reflectedValues(inject: HeaderInjectionPlan, credential: Credential, header: CredentialHeader): string[] {
  if (inject.kind !== 'basic') return [single(credential).reveal()];
  const value = header.value.reveal();
  const password = inject.username !== undefined ? single(credential) : field(credential, ['password']);
  return [value.slice(value.indexOf(' ') + 1), ...(password ? [password.reveal()] : [])];
}

/**
 * Replaces an Accept-Encoding the workload sent with `identity`: a
 * response in a content coding could not be scanned for the credential it
 * echoes. A request without one is left so (servers answer it uncoded).
 */
function askIdentity(headers: string[]): void {
  if (headerValue(headers, 'accept-encoding') === undefined) return;
  dropHeader(headers, 'accept-encoding');
  headers.push('Accept-Encoding', IDENTITY_CODING);
}

/** `req` with which version of the credential it uses (its version, its lease): for audit, never the value. */
function provenance(req: UpstreamRequest, credential: Credential): UpstreamRequest {
  if (credential.version !== undefined) req.credentialVersion = credential.version;
  if (credential.leaseId !== undefined) req.leaseId = credential.leaseId;
  return req;
}

function single(credential: Credential): Secret {
  if (!credential.secret) throw new CredentialError(credential.name, 'has no single value to inject (it holds named fields only)');
  return credential.secret;
}

function field(credential: Credential, names: string[]): Secret | undefined {
  for (const n of names) {
    const v = credential.fields.get(n);
    if (v) return v;
  }
  return undefined;
}

/** AWS keys from a credential's fields, under Vault's names or the AWS CLI's. */
function awsCredentials(credential: Credential): AwsCredentials {
  const id = field(credential, ['access_key', 'access_key_id', 'aws_access_key_id', 'AccessKeyId']);
  const secret = field(credential, ['secret_key', 'secret_access_key', 'aws_secret_access_key', 'SecretAccessKey']);
  const token = field(credential, ['security_token', 'session_token', 'aws_session_token', 'SessionToken']);
  if (!id || !secret) throw new CredentialError(credential.name, 'has no AWS access key id and secret access key fields');
  return { accessKeyId: id.reveal(), secretAccessKey: secret, ...(token ? { sessionToken: token } : {}) };
}

/** Removes every `name` (lower-case) from raw [name, value, ...] headers, in place. */
function dropHeader(raw: string[], name: string): void {
  for (let i = raw.length - 2; i >= 0; i -= 2) if ((raw[i] as string).toLowerCase() === name) raw.splice(i, 2);
}

/** The first value of header `name` (lower-case) in raw headers. */
function headerValue(raw: string[], name: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) return raw[i + 1] as string;
  return undefined;
}

/**
 * Reads the whole body, refusing (413) one larger than `limit`, and (503)
 * one that would take the budget all requests share past its size. What
 * the body took stays taken until the caller releases it.
 */
function readBody(req: Readable, limit: number, budget: ByteBudget | undefined): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const fail = (refusal: InjectionRefusal) => {
      req.off('data', onData);
      req.pause();
      budget?.release(req, size);
      reject(refusal);
    };
    const onData = (chunk: Buffer) => {
      if (size + chunk.length > limit) {
        fail(new InjectionRefusal(413, 'sigv4-body-too-large',
          `the request body must be read to be signed and is larger than ${limit} bytes; send x-amz-content-sha256 ` +
          '(a payload hash or UNSIGNED-PAYLOAD) to stream it'));
        return;
      }
      if (budget && !budget.take(req, chunk.length)) {
        fail(new InjectionRefusal(503, 'sigv4-busy',
          'bodies held for SigV4 signing fill the agent\'s memory budget; retry, or send x-amz-content-sha256 to stream the body'));
        return;
      }
      size += chunk.length;
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', (err) => {
      budget?.release(req, size);
      reject(err);
    });
  });
}
