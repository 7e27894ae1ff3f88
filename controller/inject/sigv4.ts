/**
 * AWS Signature Version 4 for requests the proxy forwards: removes whatever
 * signature the workload sent and signs the request with the bound
 * credential. Pure: no I/O, no clock (the caller passes `now`).
 *
 * The canonical request is built by @smithy/signature-v4; this module decides
 * what goes into it. The server recomputes the canonical request from the
 * bytes it receives, so every input here is derived from exactly the header
 * lines and request target that will be sent upstream.
 */
import { Hash } from '@smithy/hash-node';
import { clearCredentialCache, SignatureV4 } from '@smithy/signature-v4';
import type { Secret } from '../credentials/secret.js';
import { WirekeyError } from '../errors.js';
import { SERVICE_NAME, normalHost } from '../policy/aws-scope.js';

/** Credentials to sign with. Only `accessKeyId` is not secret (it is on the wire in Authorization). */
export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: Secret;
  sessionToken?: Secret;
}

/** A request as the proxy received it, about to be forwarded. */
export interface SigningRequest {
  method: string;
  /** The service host name the request is for (the TLS server name); added as Host if the client sent none. */
  host: string;
  /** Path and query exactly as sent by the client (origin-form request target). */
  path: string;
  /** [name, value, name, value, ...] as received, already without hop-by-hop headers. */
  rawHeaders: string[];
  /** Hex SHA-256 of the body, `UNSIGNED-PAYLOAD`, or `STREAMING-UNSIGNED-PAYLOAD-TRAILER`. */
  payloadHash: string;
}

/**
 * Lower-case request headers that carry the workload's own signature or
 * credential and never reach the upstream. `x-amz-content-sha256` is not one
 * of them: it describes the body, and {@link signSigV4} overwrites it with the
 * caller's payload hash.
 */
export const AWS_SIGNATURE_HEADERS: Set<string> = new Set([
  'authorization',
  'x-amz-date',
  'x-amz-security-token',
  // SigV4a's scope and S3 Express's session credential: leftovers of a
  // signature we replace, and the workload holds no credential of its own.
  'x-amz-region-set',
  'x-amz-s3session-token',
]);

/** Query parameters of a presigned URL (compared case-insensitively after decoding). */
const QUERY_SIGNATURE_PARAMS = new Set(
  ['X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature', 'X-Amz-Security-Token'].map(
    (p) => p.toLowerCase(),
  ),
);

/**
 * Headers never signed, even when the client signed them: they belong to one
 * hop, or clients and intermediaries rewrite them, so signing them would make
 * the signature depend on things outside this request.
 */
const NEVER_SIGNED = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'user-agent',
  'expect',
  'authorization',
]);

/** Signed whenever present, whether or not the client signed them. */
const ALWAYS_SIGNED = new Set(['host', 'content-type', 'content-md5']);

const PAYLOAD_HASH = /^(?:[0-9a-f]{64}|UNSIGNED-PAYLOAD|STREAMING-UNSIGNED-PAYLOAD-TRAILER)$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// Signing names are case-sensitive and a few have capitals (IoTSecuredTunneling).
const REGION_NAME = /^[a-z0-9-]+$/;
// Visible ASCII: a credential with CR, LF or a space could split or forge header lines.
const HEADER_SAFE = /^[\x21-\x7e]+$/;
// A request target as it may appear on the wire: visible ASCII only.
const TARGET_SAFE = /^[\x21-\x7e]*$/;
/** A header value that is signed: visible ASCII, spaces and tabs. */
const SIGNABLE_VALUE = /^[\t\x20-\x7e]*$/;

/**
 * Signs `req` for `scope` with `creds` at time `now` and returns the raw
 * header list to send upstream: the client's headers in their order, minus
 * {@link AWS_SIGNATURE_HEADERS}, with `x-amz-content-sha256` set to
 * `req.payloadHash`, followed by `X-Amz-Date`, `X-Amz-Security-Token` (when
 * there is a session token) and `Authorization`. A Host header is added first
 * when the client sent none.
 *
 * The request target to send is `stripQuerySignature(req.path)`; the
 * signature covers that target, not one with the client's presigned query.
 *
 * Signed headers: host, content-type, content-md5, every x-amz-* header, and
 * whatever else the client itself listed in its SignedHeaders (header or
 * presigned query), except hop-by-hop headers, user-agent and expect.
 *
 * The canonical URI and query are computed the way AWS recomputes them from
 * the received target: each path segment and query parameter is
 * percent-decoded and re-encoded (RFC 3986 unreserved characters kept, `+` in
 * the query meaning a space), then S3 uses that path once-encoded and every
 * other service encodes it a second time. For targets that AWS SDKs produce
 * (already in that form) this is the target byte for byte.
 *
 * @throws {WirekeyError} code `WK_SIGV4` when the request cannot be signed
 *   unambiguously (malformed method, target, percent-encoding or payload hash;
 *   several Host headers, or a Host that is not `req.host`), when the scope or
 *   credentials are unusable (empty, or characters that cannot go in a header),
 *   or when `now` is not a valid date. No message contains a secret value.
 */
export async function signSigV4(
  req: SigningRequest,
  creds: AwsCredentials,
  scope: { service: string; region: string },
  now: Date,
): Promise<string[]> {
  const secretAccessKey = creds.secretAccessKey.reveal();
  const sessionToken = creds.sessionToken?.reveal();
  checkInputs(req, creds, secretAccessKey, sessionToken, scope, now);

  const clientSigned = clientSignedHeaders(req);
  const target = stripQuerySignature(req.path);
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  const rawQuery = q === -1 ? '' : target.slice(q + 1);
  const isS3 = scope.service === 's3';

  // The output list, and beside it the subset that is signed, merged per name
  // the way SigV4 canonicalises repeated headers (values joined by commas).
  const out: string[] = [];
  const signed: Record<string, string> = Object.create(null) as Record<string, string>;
  const addSigned = (lower: string, value: string) => {
    signed[lower] = lower in signed ? `${signed[lower]},${value}` : value;
  };
  let hostSeen = false;
  let shaSeen = false;
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i] as string;
    let value = req.rawHeaders[i + 1] as string;
    const lower = name.toLowerCase();
    if (AWS_SIGNATURE_HEADERS.has(lower)) continue;
    if (lower === 'host') {
      if (hostSeen) throw requestError('the request has more than one Host header');
      hostSeen = true;
      if (normalHost(value) !== normalHost(req.host)) {
        throw requestError(`the Host header does not name ${JSON.stringify(req.host)}`);
      }
    }
    if (lower === 'x-amz-content-sha256') {
      // The body the upstream gets is described by the caller's hash, not the client's claim.
      if (shaSeen) continue;
      shaSeen = true;
      value = req.payloadHash;
    }
    out.push(name, value);
    if (NEVER_SIGNED.has(lower)) continue;
    if (ALWAYS_SIGNED.has(lower) || lower.startsWith('x-amz-') || clientSigned.has(lower)) {
      // Signed as UTF-8, sent as the bytes received: a byte past ASCII
      // would make the two differ, and the server's answer would quote
      // what was signed (the session token line included).
      if (!SIGNABLE_VALUE.test(value)) throw requestError(`the value of ${name.slice(0, 64)} has bytes outside visible ASCII, which cannot be signed as they are sent`);
      addSigned(lower, value);
    }
  }
  if (!hostSeen) {
    out.unshift('Host', req.host);
    addSigned('host', req.host);
  }
  if (!shaSeen) addSigned('x-amz-content-sha256', req.payloadHash);

  const query: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  for (const part of rawQuery.split('&')) {
    // Empty parameters ("a=1&&b=2") carry nothing; servers skip them.
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = decodeQueryComponent(eq === -1 ? part : part.slice(0, eq));
    const value = decodeQueryComponent(eq === -1 ? '' : part.slice(eq + 1));
    const prev = query[key];
    query[key] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [prev, value];
  }

  const signer = new SignatureV4({
    service: scope.service,
    region: scope.region,
    credentials: { accessKeyId: creds.accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) },
    sha256: Hash.bind(null, 'sha256'),
    // S3 signs the once-encoded path; every other service encodes it again.
    uriEscapePath: !isS3,
    // x-amz-content-sha256 is already in `signed`; the signer must not hash a body it never sees.
    applyChecksum: false,
  });

  let result: { headers: Record<string, string> };
  try {
    result = await signer.sign({
      method: req.method,
      protocol: 'https:',
      hostname: normalHost(req.host),
      path: canonicalPathOnce(rawPath),
      query,
      headers: signed,
    }, { signingDate: now });
  } catch (err) {
    // The signer's messages are about its inputs; scrub them anyway, since
    // those inputs include the secret.
    throw sigv4Error(`signing failed: ${redact(String((err as Error)?.message ?? err), [secretAccessKey, sessionToken])}`);
  } finally {
    // The signer keeps derived signing keys in a module-wide cache keyed by
    // the session token in clear, past any rotation or withdrawal of the
    // credential. Deriving again costs a few HMACs per request; holding
    // secret material nobody accounts for is not worth saving them.
    clearCredentialCache();
  }

  const generated = (name: string): string => {
    const v = result.headers[name];
    if (typeof v !== 'string') throw sigv4Error(`the signer produced no ${name} header`);
    return v;
  };
  out.push('X-Amz-Date', generated('x-amz-date'));
  if (sessionToken) out.push('X-Amz-Security-Token', sessionToken);
  if (!shaSeen) out.push('X-Amz-Content-SHA256', req.payloadHash);
  out.push('Authorization', generated('authorization'));
  return out;
}

/**
 * `path` without the query parameters of a presigned URL (X-Amz-Algorithm,
 * -Credential, -Date, -Expires, -SignedHeaders, -Signature, -Security-Token;
 * names compared case-insensitively after percent-decoding). Every other
 * parameter is kept byte for byte and in order; the `?` goes when nothing is
 * left. Returns `path` itself when there is nothing to remove. Never throws.
 */
export function stripQuerySignature(path: string): string {
  const q = path.indexOf('?');
  if (q === -1) return path;
  const parts = path.slice(q + 1).split('&');
  const kept = parts.filter((part) => {
    const eq = part.indexOf('=');
    const rawName = eq === -1 ? part : part.slice(0, eq);
    let name: string;
    try {
      name = decodeQueryComponent(rawName);
    } catch {
      name = rawName;
    }
    return !QUERY_SIGNATURE_PARAMS.has(name.toLowerCase());
  });
  if (kept.length === parts.length) return path;
  return kept.length === 0 ? path.slice(0, q) : `${path.slice(0, q)}?${kept.join('&')}`;
}

function checkInputs(
  req: SigningRequest,
  creds: AwsCredentials,
  secretAccessKey: string,
  sessionToken: string | undefined,
  scope: { service: string; region: string },
  now: Date,
): void {
  if (!TOKEN.test(req.method)) throw requestError('the request method is not an HTTP token');
  if (!req.path.startsWith('/') || !TARGET_SAFE.test(req.path)) {
    throw requestError('the request target must be an origin-form path of visible ASCII characters');
  }
  if (!PAYLOAD_HASH.test(req.payloadHash)) {
    throw requestError('the payload hash must be a hex SHA-256, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER');
  }
  if (req.rawHeaders.length % 2 !== 0) throw sigv4Error('raw headers must come in name/value pairs');
  if (!SERVICE_NAME.test(scope.service) || !REGION_NAME.test(scope.region)) {
    throw sigv4Error(`the signing scope ${JSON.stringify(`${scope.region}/${scope.service}`)} is not a region and service name`);
  }
  // The values themselves stay out of every message: the access key id is
  // not secret, but a misconfigured source could have put the secret there.
  if (!HEADER_SAFE.test(creds.accessKeyId) || /[/,=]/.test(creds.accessKeyId)) {
    throw sigv4Error('the access key id is empty or has characters that cannot appear in a Credential');
  }
  if (secretAccessKey === '') throw sigv4Error('the secret access key is empty');
  if (sessionToken !== undefined && !HEADER_SAFE.test(sessionToken)) {
    throw sigv4Error('the session token is empty or has characters that cannot appear in a header');
  }
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw sigv4Error('the signing time is not a valid date');
}

/** Header names the client listed in its own signature (Authorization or presigned query), lower-case. */
function clientSignedHeaders(req: SigningRequest): Set<string> {
  const names = new Set<string>();
  const add = (list: string) => {
    for (const n of list.split(';')) if (n.trim() !== '') names.add(n.trim().toLowerCase());
  };
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    if ((req.rawHeaders[i] as string).toLowerCase() !== 'authorization') continue;
    const m = /(?:^|[\s,])SignedHeaders=([^,\s]*)/i.exec(req.rawHeaders[i + 1] as string);
    if (m) add(m[1] as string);
  }
  const q = req.path.indexOf('?');
  if (q !== -1) {
    for (const part of req.path.slice(q + 1).split('&')) {
      const eq = part.indexOf('=');
      if (eq === -1) continue;
      try {
        if (decodeQueryComponent(part.slice(0, eq)).toLowerCase() === 'x-amz-signedheaders') add(decodeQueryComponent(part.slice(eq + 1)));
      } catch {
        // A parameter that does not decode is not a list of names we could honour.
      }
    }
  }
  return names;
}

/**
 * The path with each segment percent-decoded and re-encoded with only RFC
 * 3986 unreserved characters left bare: the form AWS computes from whatever
 * the client sent (`(` and `%28` are the same key to S3).
 */
function canonicalPathOnce(rawPath: string): string {
  return rawPath
    .split('/')
    .map((segment) => uriEscape(decodeComponent(segment, 'path')))
    .join('/');
}

function decodeQueryComponent(s: string): string {
  // Form decoding: AWS front ends read `+` in a query as a space.
  return decodeComponent(s.replace(/\+/g, ' '), 'query string');
}

function decodeComponent(s: string, where: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw requestError(`the ${where} has malformed percent-encoding`);
  }
}

function uriEscape(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function redact(message: string, secrets: (string | undefined)[]): string {
  let out = message;
  for (const s of secrets) if (s) out = out.split(s).join('[redacted]');
  return out;
}

function sigv4Error(message: string): WirekeyError {
  return new WirekeyError('WK_SIGV4', `SigV4: ${message}`);
}

/** The request as the workload sent it cannot be signed: its to mend, not the credential's. */
function requestError(message: string): WirekeyError {
  return new WirekeyError('WK_SIGV4_REQUEST', `SigV4: ${message}`);
}
