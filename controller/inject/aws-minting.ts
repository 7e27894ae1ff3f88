/**
 * AWS calls whose answer is a credential of its own: temporary keys from
 * STS, a new access key from IAM, a registry password from ECR, a session
 * from S3 Express. Signed with the bound credential, such a call would hand
 * the workload keys that work from anywhere, with nothing of wirekey's in
 * the way; so the proxy refuses to sign them (sigv4-mints-credentials).
 *
 * The action is found wherever the service's protocol puts it: the query
 * API's `Action` (in the query string or a form body), the JSON protocol's
 * `X-Amz-Target`, or a REST path. Names are compared case-insensitively,
 * after percent-decoding, and every occurrence counts.
 */

/** Per signing service: the actions (lower-case) that mint credentials. */
const MINTING_ACTIONS: ReadonlyMap<string, ReadonlySet<string>> = new Map(
  Object.entries({
    sts: ['assumerole', 'assumerolewithsaml', 'assumerolewithwebidentity', 'assumeroot', 'getsessiontoken', 'getfederationtoken'],
    iam: ['createaccesskey', 'updateaccesskey', 'createloginprofile', 'updateloginprofile', 'createservicespecificcredential',
      'resetservicespecificcredential'],
    ecr: ['getauthorizationtoken'],
    'ecr-public': ['getauthorizationtoken'],
    codeartifact: ['getauthorizationtoken'],
    'cognito-identity': ['getcredentialsforidentity', 'getopenidtokenfordeveloperidentity'],
    s3: ['createsession'],
    s3express: ['createsession'],
  }).map(([service, actions]) => [service, new Set(actions)]),
);

/** Query-API services: a form body may name the action. */
const FORM_BODY_SERVICES = new Set(['sts', 'iam']);

/**
 * Whether requests to `service` must have their body read to be judged (a
 * form body may name the action). Other services name theirs in a header,
 * the path or the query, and their bodies (S3 uploads) stream as before.
 */
export function actionInBody(service: string): boolean {
  return FORM_BODY_SERVICES.has(service);
}

export interface ActionRequest {
  /** Origin-form target: path and query as sent. */
  path: string;
  /** [name, value, ...] as received. */
  rawHeaders: string[];
  /** The body, when it was read (a form-encoded body may carry `Action`). */
  body?: Buffer;
}

/**
 * The credential-minting action `req` asks `service` for, as the request
 * names it; undefined when it asks for none.
 */
export function mintingAction(service: string, req: ActionRequest): string | undefined {
  const actions = MINTING_ACTIONS.get(service);
  if (!actions) return undefined;
  for (const action of namedActions(req)) if (actions.has(action.toLowerCase())) return action;
  return undefined;
}

/** Every action name the request carries, in any of the places a protocol puts one. */
function namedActions(req: ActionRequest): string[] {
  const out: string[] = [];
  const q = req.path.indexOf('?');
  const path = q === -1 ? req.path : req.path.slice(0, q);
  if (q !== -1) formActions(req.path.slice(q + 1), out);
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const value = req.rawHeaders[i + 1] as string;
    // JSON protocol: "ServicePrefix_Version.Action".
    if ((req.rawHeaders[i] as string).toLowerCase() === 'x-amz-target') out.push(value.slice(value.lastIndexOf('.') + 1).trim());
  }
  // Read as a form whatever its declared type: a server may take it for one.
  if (req.body && req.body.length) formActions(req.body.toString('latin1'), out);
  // REST: CodeArtifact's POST /v1/authorization-token; S3 Express's GET /?session.
  const segments = safeDecode(path).toLowerCase().split('/').filter(Boolean);
  if (segments.includes('authorization-token')) out.push('GetAuthorizationToken');
  if (q !== -1 && /(^|&)session(=|&|$)/i.test(req.path.slice(q + 1))) out.push('CreateSession');
  return out;
}

/** Pushes the value of every `Action` parameter of a form-encoded string. */
function formActions(text: string, out: string[]): void {
  for (const part of text.split('&')) {
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    const key = safeDecode(part.slice(0, eq).replace(/\+/g, ' ')).trim().toLowerCase();
    if (key === 'action') out.push(safeDecode(part.slice(eq + 1).replace(/\+/g, ' ')).trim());
  }
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
