/**
 * Every error wirekey raises on purpose is a WirekeyError with a stable
 * `code` that scripts and tests can match on. Messages name what and where,
 * and never contain a secret value.
 */
export class WirekeyError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A position inside a policy file, 1-based. */
export interface SourcePosition {
  file: string;
  line: number;
  column: number;
}

/** One problem found in a policy document. */
export interface PolicyDiagnostic extends SourcePosition {
  message: string;
  /** A warning: valid, but probably not what was meant. Absent for errors. */
  severity?: 'warning';
}

/** The policy could not be parsed or validated; carries every problem found. */
export class PolicyError extends WirekeyError {
  readonly diagnostics: PolicyDiagnostic[];

  constructor(diagnostics: PolicyDiagnostic[]) {
    super(
      'WK_POLICY_INVALID',
      diagnostics.map((d) => `${d.file}:${d.line}:${d.column}: ${d.message}`).join('\n'),
    );
    this.diagnostics = diagnostics;
  }
}

/** A credential could not be read or is unusable. Never carries the value. */
export class CredentialError extends WirekeyError {
  readonly credential: string;

  constructor(credential: string, message: string, options?: { cause?: unknown }) {
    super('WK_CREDENTIAL', `credential "${credential}": ${message}`, options);
    this.credential = credential;
  }
}

/** A libbpf or kernel operation failed. */
export class BpfError extends WirekeyError {
  readonly errno: number | undefined;
  readonly libbpfLog: string | undefined;
  readonly verifierLog: string | undefined;

  constructor(
    message: string,
    details: { errno?: number; libbpfLog?: string; verifierLog?: string; cause?: unknown } = {},
  ) {
    super('WK_BPF', message, { cause: details.cause });
    this.errno = details.errno;
    this.libbpfLog = details.libbpfLog;
    this.verifierLog = details.verifierLog;
  }
}

/** The running kernel or host lacks something wirekey needs. */
export class NotSupportedError extends WirekeyError {
  readonly feature: string;
  readonly minimumKernel: string | undefined;

  constructor(feature: string, message: string, minimumKernel?: string) {
    super(
      'WK_NOT_SUPPORTED',
      minimumKernel ? `${feature}: ${message} (requires Linux ${minimumKernel})` : `${feature}: ${message}`,
    );
    this.feature = feature;
    this.minimumKernel = minimumKernel;
  }
}

/** The local CA or a TLS handshake failed. */
export class ProxyTlsError extends WirekeyError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WK_PROXY_TLS', message, options);
  }
}
