/**
 * Text to validated policy documents, with a file:line:column for every
 * problem. Pure: the caller reads the files.
 */
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import {
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseAllDocuments,
  type Document,
  type YAMLError,
} from 'yaml';
import schema from '../../policies/wirekey.schema.json' with { type: 'json' };
import type { PolicyDiagnostic, SourcePosition } from '../errors.js';
import { closest } from './suggest.js';
import type { Kind, PolicyDoc } from './types.js';

/** A path into a document's data, as in `['spec', 'hosts', 0]`. */
export type PolicyPath = readonly (string | number)[];

export interface ParseResult {
  documents: PolicyDoc[];
  diagnostics: PolicyDiagnostic[];
}

type Locator = (path: PolicyPath, at?: 'value' | 'key') => SourcePosition;

// A Record, not an array, so that adding a kind to types.ts fails to compile
// until it is listed here too.
const KIND_SET: Record<Kind, true> = { VaultConnection: true, CredentialSource: true, Service: true, Workload: true, Binding: true };
const KINDS = Object.keys(KIND_SET) as Kind[];

const validators = compileValidators();

// Positions stay with the YAML they came from, keyed weakly by document, so
// that types.ts stays plain data and cross-document checks can still point
// at the exact value they complain about.
const locators = new WeakMap<PolicyDoc, Locator>();

/**
 * Parses every YAML document in `text` and validates each against
 * policies/wirekey.schema.json. Empty documents are skipped. Never throws:
 * YAML and schema problems come back as diagnostics, with `file` as given.
 */
export function parsePolicyText(text: string, file: string): ParseResult {
  const lineCounter = new LineCounter();
  // YAML 1.2's core schema whatever a %YAML directive says: under 1.1, `port: 0673` is 443, `tls: yes` true, and `<<` merges.
  const stream = parseAllDocuments(text, { lineCounter, prettyErrors: false, schema: 'core' });
  const position = (offset: number): SourcePosition => {
    const { line, col } = lineCounter.linePos(offset);
    return { file, line, column: col };
  };
  const result: ParseResult = { documents: [], diagnostics: [] };
  if ('empty' in stream) {
    result.diagnostics.push(...yamlDiagnostics([...stream.errors, ...stream.warnings], position, text));
    return result;
  }
  for (const doc of stream) {
    const yamlProblems = yamlDiagnostics([...doc.errors, ...doc.warnings], position, text);
    if (yamlProblems.length > 0) {
      // The data of a broken document is a guess; schema errors on it would only add noise.
      result.diagnostics.push(...yamlProblems);
      continue;
    }
    const parsed = validateDocument(doc, position);
    if (parsed === undefined) continue;
    if ('diagnostics' in parsed) result.diagnostics.push(...parsed.diagnostics);
    else result.documents.push(parsed.document);
  }
  return result;
}

/**
 * Where the value at `path` of a document returned by parsePolicyText was
 * written. Falls back to the nearest enclosing node that exists, and to
 * `doc.source` for documents that did not come from parsePolicyText.
 */
export function positionOf(doc: PolicyDoc, path: PolicyPath): SourcePosition {
  return locators.get(doc)?.(path) ?? doc.source;
}

function compileValidators(): Map<Kind, ValidateFunction> {
  // verbose: the error's parentSchema carries the allowed property names and
  // the human wording of patterns.
  const ajv = new Ajv2020({ allErrors: true, strict: true, verbose: true, allowUnionTypes: true });
  // Understood by editors (VS Code, yaml-language-server); here it only words errors.
  ajv.addKeyword({ keyword: 'patternErrorMessage', schemaType: 'string' });
  ajv.addSchema(schema);
  return new Map(
    KINDS.map((kind) => {
      const validate = ajv.getSchema(`${schema.$id}#/$defs/${kind}`);
      if (validate === undefined) throw new Error(`wirekey.schema.json has no $defs/${kind}`);
      return [kind, validate];
    }),
  );
}

/**
 * The YAML library's errors in plain words, at the place to fix. One
 * mistake often breaks several of the parser's rules on one line (an
 * indented key after a value is both a "nested mapping in a compact
 * mapping" and a "multi-line implicit key"): one message per line.
 */
function yamlDiagnostics(
  problems: YAMLError[],
  position: (offset: number) => SourcePosition,
  text: string,
): PolicyDiagnostic[] {
  const out: PolicyDiagnostic[] = [];
  const lines = new Set<number>();
  for (const p of problems) {
    const { offset, message } = plainYamlError(p, text);
    const at = position(offset);
    if (lines.has(at.line)) continue;
    lines.add(at.line);
    out.push({ ...at, message: `invalid YAML: ${message}` });
  }
  return out;
}

/**
 * What went wrong, for someone who knows YAML from config files rather
 * than from its specification. Never quotes the text around the error: it
 * may be a secret pasted in the wrong place. Unknown errors keep the
 * library's wording.
 */
export function plainYamlError(p: YAMLError, text: string): { offset: number; message: string } {
  const at = p.pos[0];
  const flow = /^Flow (map|sequence) in block collection must be sufficiently indented and end with a ([}\]])/.exec(p.message);
  if (flow) {
    const [open, close] = flow[1] === 'map' ? ['{', '}'] : ['[', ']'];
    const opened = unclosedOpener(text, at, open as string, close as string);
    return {
      offset: opened ?? at,
      message: `this ${open} is never closed: end the ${flow[1] === 'map' ? 'mapping' : 'list'} with ${close} (a ${open}...${close} that spans lines must indent its continuation lines)`,
    };
  }
  if (/^Missing closing "quote/.test(p.message)) {
    return { offset: lastIndexBefore(text, at, '"') ?? at, message: 'this "quoted string is never closed: add the closing "' };
  }
  if (/^Missing closing 'quote/.test(p.message)) {
    return { offset: lastIndexBefore(text, at, "'") ?? at, message: "this 'quoted string is never closed: add the closing '" };
  }
  const start = /^Plain value cannot start with (?:reserved character )?(.)/.exec(p.message);
  if (start) return { offset: at, message: `a value cannot start with ${start[1]}: put the value in quotes` };
  const escape = /^Invalid escape sequence (.*)/.exec(p.message);
  if (escape) {
    return { offset: at, message: `${escape[1]} is not an escape sequence in a "double-quoted" string: write \\\\ for a backslash, or use 'single quotes'` };
  }
  const tag = /^Unresolved tag: (.*)/.exec(p.message);
  if (tag) return { offset: at, message: `unknown tag ${tag[1]}: policies use no tags (put a value starting with ! in quotes)` };
  const unexpected = /^Unexpected (.+?) in flow (map|sequence)/.exec(p.message);
  if (unexpected) return { offset: at, message: `unexpected ${unexpected[1]} inside a ${unexpected[2] === 'map' ? '{...} mapping' : '[...] list'}` };
  const missing = /^Missing (, or :|,) between flow (map|sequence) items/.exec(p.message);
  if (missing) return { offset: at, message: `missing ${missing[1] === ',' ? "','" : "',' or ':'"} between the items of a ${missing[2] === 'map' ? '{...} mapping' : '[...] list'}` };
  const words: Partial<Record<YAMLError['code'], string>> = {
    TAB_AS_INDENT: 'a tab indents this line: YAML indents with spaces only',
    DUPLICATE_KEY: `${keyAt(text, at)} is given twice in the same mapping`,
    BLOCK_AS_IMPLICIT_KEY:
      'the value on this line is followed by a line indented further: keys of one mapping must start in the same column, ' +
      'and a key with fields under it has nothing after its colon',
    MULTILINE_IMPLICIT_KEY:
      "this line is not 'key: value': a colon followed by a space is missing, or the next line is indented too far",
    BLOCK_IN_FLOW:
      "a nested block inside {...} or [...]: separate items with ', ' and keys from values with ': '",
    MISSING_CHAR: /^Comments must be separated/.test(p.message)
      ? "put a space before '#' to start a comment, or quote the value if '#' is part of it"
      : undefined,
    BAD_INDENT: /All (mapping|sequence) items must start at the same column/.test(p.message)
      ? 'this line is indented differently from the lines before it: the items of one mapping or list must start in the same column'
      : /Sequence item without - indicator/.test(p.message)
        ? "a list item without '- ' in front"
        : undefined,
    KEY_OVER_1024_CHARS: 'a key longer than 1024 characters (a missing colon or quote?)',
    MULTIPLE_ANCHORS: 'a value with two anchors (&name): give it one',
    MULTIPLE_TAGS: 'a value with two tags',
    BAD_ALIAS: 'an alias (*name) or anchor (&name) without a valid name',
  };
  const message = words[p.code];
  if (message) return { offset: at, message };
  return { offset: at, message: p.message.charAt(0).toLowerCase() + p.message.slice(1) };
}

/** Offset of the last `open` before `end` that no `close` matches; quotes and comments are skipped. */
function unclosedOpener(text: string, end: number, open: string, close: string): number | undefined {
  const stack: number[] = [];
  let quote: string | undefined;
  for (let i = 0; i < end && i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = undefined;
      else if (c === '\n' && quote === "'") quote = undefined;
    } else if (c === '"' || c === "'") {
      // Only at the start of a value: an apostrophe inside a plain word opens nothing.
      if (i === 0 || /[\s[{,:]/.test(text[i - 1] as string)) quote = c;
    } else if (c === '#' && (i === 0 || /\s/.test(text[i - 1] as string))) {
      while (i < end && text[i] !== '\n') i++;
    } else if (c === open) stack.push(i);
    else if (c === close) stack.pop();
  }
  return stack.at(-1);
}

function lastIndexBefore(text: string, end: number, char: string): number | undefined {
  const i = text.lastIndexOf(char, Math.max(0, end - 1));
  return i >= 0 ? i : undefined;
}

/** The key written at `offset`, quoted, for messages; "a key" when it cannot be read. */
function keyAt(text: string, offset: number): string {
  const m = /^(?:"([^"\n]{1,64})"|'([^'\n]{1,64})'|([^:\n#]{1,64}?))\s*:/.exec(text.slice(offset, offset + 80));
  const key = m?.[1] ?? m?.[2] ?? m?.[3];
  return key ? JSON.stringify(key.trim()) : 'a key';
}

type DocumentOutcome = { document: PolicyDoc } | { diagnostics: PolicyDiagnostic[] };

function validateDocument(
  doc: Document.Parsed,
  position: (offset: number) => SourcePosition,
): DocumentOutcome | undefined {
  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) return undefined;
  const source = position(root.range[0]);
  const fail = (at: SourcePosition, message: string): DocumentOutcome => ({
    diagnostics: [{ ...at, message }],
  });
  if (!isMap(root)) {
    return fail(source, 'a policy document must be a mapping with apiVersion, kind, metadata and spec');
  }
  let data: Record<string, unknown>;
  try {
    data = doc.toJS() as Record<string, unknown>;
  } catch (err) {
    // e.g. an alias to an anchor that does not exist, or too many aliases.
    return fail(source, `invalid YAML: ${(err as Error).message}`);
  }
  const locate: Locator = (path, at = 'value') => position(offsetOf(doc, path, at));
  const kind = data['kind'];
  if (kind === undefined) return fail(source, 'missing required field "kind"');
  if (!isKind(kind)) {
    const guess = typeof kind === 'string' ? closest(kind, KINDS) : undefined;
    return fail(
      locate(['kind']),
      `unknown kind ${JSON.stringify(kind)}${guess ? `: did you mean ${guess}?` : ''} (expected one of ${KINDS.join(', ')})`,
    );
  }
  const validate = validators.get(kind)!;
  const valid = validate(data);
  const errors = valid ? [] : (validate.errors ?? []);
  // A number where the schema refused its type, or inside an unknown field, is in no integer field: those errors say what to do.
  const notFields = errors.flatMap((e) => e.keyword === 'type' ? [e.instancePath]
    : e.keyword === 'additionalProperties' ? [`${e.instancePath}${pointerOf([String((e.params as { additionalProperty?: unknown }).additionalProperty)])}`]
      : []);
  const literals = numberLiterals(doc).filter((l) => {
    const at = pointerOf(l.path);
    return !notFields.some((p) => at === p || at.startsWith(`${p}/`));
  });
  if (!valid || literals.length > 0) {
    const label = documentLabel(kind, data);
    // Range errors on a number written as 0x1bb would judge a value that was probably not meant.
    const literalAt = new Set(literals.map((l) => pointerOf(l.path)));
    return {
      diagnostics: [
        ...schemaDiagnostics(errors.filter((e) => !literalAt.has(e.instancePath)), data, locate, label),
        ...literals.map((l) => ({ ...locate(l.path), message: `${label}: ${formatPath(l.path)}: ${literalMessage(l)}` })),
      ],
    };
  }
  const document = { ...data, source } as unknown as PolicyDoc;
  locators.set(document, (path) => locate(path));
  return { document };
}

/** A number written otherwise than in decimal digits. */
interface NumberLiteral {
  path: PolicyPath;
  source: string;
  value: number;
}

/**
 * Every whole number in the document written otherwise than as decimal
 * digits (with an optional '-', and no leading zero): YAML 1.2 reads
 * `0x1bb` and `443.0` as 443, `0o673` as 443, `1e3` as 1000 and `+443` as
 * 443, none of which a policy author probably meant for a port or a uid;
 * and it reads `0673` as 673, which YAML 1.1 (and the tools and habits
 * built on it) read as octal 443. Every number field of the
 * schema is an integer; the caller drops those where the schema wants no
 * number.
 */
function numberLiterals(doc: Document.Parsed): NumberLiteral[] {
  const out: NumberLiteral[] = [];
  const seen = new Set<unknown>();
  const visit = (node: unknown, path: PolicyPath): void => {
    if (isAlias(node)) node = node.resolve(doc);
    if (isScalar(node)) {
      const source = node.source;
      // A value with a fraction (1.5, .inf) is no integer: the schema's type error says so.
      if (typeof node.value === 'number' && Number.isInteger(node.value) && typeof source === 'string' && !DECIMAL.test(source)) {
        out.push({ path, source, value: node.value });
      }
      return;
    }
    // An alias may name a collection it is inside of.
    if (seen.has(node)) return;
    seen.add(node);
    if (isMap(node)) {
      for (const pair of node.items) if (isScalar(pair.key)) visit(pair.value, [...path, String(pair.key.value)]);
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => visit(item, [...path, i]));
    }
    seen.delete(node);
  };
  visit(doc.contents, []);
  return out;
}

const DECIMAL = /^-?(0|[1-9][0-9]*)$/;
const LEADING_ZERO = /^-?0[0-9]+$/;
const OCTAL_DIGITS = /^-?0[0-7]+$/;

function literalMessage(l: NumberLiteral): string {
  const base = 'must be an integer written in decimal digits';
  if (!Number.isSafeInteger(l.value)) return base;
  if (LEADING_ZERO.test(l.source)) {
    const reading = `${base}, without a leading zero: YAML reads ${l.source} as ${l.value}`;
    if (!OCTAL_DIGITS.test(l.source)) return `${reading} (write ${l.value} if that is what is meant)`;
    const octal = parseInt(l.source, 8);
    return `${reading}, YAML 1.1 as octal ${octal} (write ${l.value} or ${octal}, whichever is meant)`;
  }
  return `${base}: YAML reads ${l.source} as ${l.value} (write ${l.value} if that is what is meant)`;
}

/** The JSON pointer of `path`, as Ajv's instancePath gives it. */
function pointerOf(path: PolicyPath): string {
  return path.map((s) => `/${String(s).replaceAll('~', '~0').replaceAll('/', '~1')}`).join('');
}

function isKind(value: unknown): value is Kind {
  return typeof value === 'string' && Object.hasOwn(KIND_SET, value);
}

function documentLabel(kind: Kind, data: Record<string, unknown>): string {
  const metadata = data['metadata'];
  const name =
    typeof metadata === 'object' && metadata !== null ? (metadata as Record<string, unknown>)['name'] : undefined;
  return typeof name === 'string' ? `${kind} ${JSON.stringify(name)}` : kind;
}

/**
 * Source offset of the node at `path`: its value, or with `at: 'key'` the key
 * it is stored under. Stops at the deepest node that exists.
 */
function offsetOf(doc: Document.Parsed, path: PolicyPath, at: 'value' | 'key'): number {
  let node: unknown = doc.contents;
  let offset = doc.contents?.range[0] ?? 0;
  for (const [i, segment] of path.entries()) {
    if (isAlias(node)) node = node.resolve(doc);
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(segment));
      if (pair === undefined) break;
      const keyOffset = isScalar(pair.key) ? (pair.key.range?.[0] ?? offset) : offset;
      if (at === 'key' && i === path.length - 1) return keyOffset;
      node = pair.value;
      // `key:` with nothing after it has an empty value node; the key is the useful place.
      offset = hasText(node) ? node.range[0] : keyOffset;
    } else if (isSeq(node)) {
      const item: unknown = node.items[Number(segment)];
      if (!hasText(item)) break;
      node = item;
      offset = item.range[0];
    } else {
      break;
    }
  }
  return offset;
}

function hasText(node: unknown): node is { range: [number, number, number] } {
  if (node === null || typeof node !== 'object' || !('range' in node)) return false;
  const range = (node as { range?: [number, number, number] }).range;
  return range !== undefined && range[1] > range[0];
}

function schemaDiagnostics(
  errors: ErrorObject[],
  data: unknown,
  locate: Locator,
  label: string,
): PolicyDiagnostic[] {
  const onSameValue = (e: ErrorObject, keyword: string) =>
    errors.some((o) => o.keyword === keyword && o.instancePath === e.instancePath);
  // `spce:` for `spec:` is one mistake, not also a missing spec: the unknown
  // field's "did you mean" names the required one, which is not reported.
  const misspelt = (e: ErrorObject) =>
    e.keyword === 'required' &&
    errors.some((o) => o.keyword === 'additionalProperties' && o.instancePath === e.instancePath &&
      suggestedField(o) === (e.params as { missingProperty?: string }).missingProperty);
  // `oneOf` says "exactly one of these fields" (egress rules): its own error
  // says which; the branches' "missing field" errors are not mistakes.
  const choices = errors.filter((e) => e.keyword === 'oneOf');
  const inBranch = (e: ErrorObject) =>
    choices.some((c) => c !== e && c.instancePath === e.instancePath && e.schemaPath.startsWith(`${c.schemaPath}/`));
  // `hots:` for `hosts:` is one mistake, not also a rule that names no destination.
  const misspeltChoice = (e: ErrorObject) =>
    e.keyword === 'oneOf' &&
    errors.some((o) => o.keyword === 'additionalProperties' && o.instancePath === e.instancePath &&
      oneOfFields(e).includes(suggestedField(o) ?? ''));
  return errors
    .filter((e) => !inBranch(e) && !misspeltChoice(e))
    .filter((e) => !misspelt(e))
    // `if` only says which branch failed; the branch's own errors say why.
    .filter((e) => e.keyword !== 'if')
    // "must be a string or a mapping" already covers the branch's "must be a mapping".
    .filter((e) => !(e.keyword === 'type' && !Array.isArray(e.schema) && errors.some((o) => o.keyword === 'type' && Array.isArray(o.schema) && o.instancePath === e.instancePath)))
    .filter((e) => !supersededBy(e).some((keyword) => onSameValue(e, keyword)))
    .map((e) => {
      const { at, message } = describeError(e, dataPath(data, e.instancePath), valueAt(data, e.instancePath));
      return { ...locate(at.path, at.kind), message: `${label}: ${message}` };
    });
}

/** Errors on the same value that make `e` noise: fixing them fixes or changes it. */
function supersededBy(e: ErrorObject): string[] {
  // A value of the wrong type fails every other keyword on it too.
  if (e.keyword === 'type') return [];
  // `inject: {bearer: .., baerer: ..}` is one unknown field, not also "only one of".
  if (e.keyword === 'maxProperties') return ['type', 'additionalProperties'];
  return ['type'];
}

/** For an unknown field: the allowed field it is probably a misspelling of. */
function suggestedField(e: ErrorObject): string | undefined {
  if (e.keyword !== 'additionalProperties') return undefined;
  const allowed = Object.keys(((e.parentSchema ?? {}) as { properties?: object }).properties ?? {});
  return closest(String((e.params as { additionalProperty?: unknown }).additionalProperty), allowed);
}

interface ErrorSite {
  path: PolicyPath;
  kind: 'value' | 'key';
}

/** The fields a `oneOf` of `{required: [field]}` branches chooses between. */
function oneOfFields(e: ErrorObject): string[] {
  const branches = Array.isArray(e.schema) ? (e.schema as { required?: unknown }[]) : [];
  return branches.flatMap((b) => (Array.isArray(b.required) ? b.required.map(String) : []));
}

function describeError(e: ErrorObject, path: PolicyPath, value: unknown): { at: ErrorSite; message: string } {
  const parent = (e.parentSchema ?? {}) as { properties?: object; patternErrorMessage?: string };
  const allowed = Object.keys(parent.properties ?? {});
  const here: ErrorSite = { path, kind: 'value' };
  const params = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': {
      const field = [...path, String(params['additionalProperty'])];
      const guess = suggestedField(e);
      return {
        at: { path: field, kind: 'key' },
        message: `unknown field ${JSON.stringify(formatPath(field))}${guess ? `: did you mean ${JSON.stringify(guess)}?` : ''} (expected ${orList(allowed)})`,
      };
    }
    case 'required':
      return {
        at: here,
        message: `missing required field ${JSON.stringify(formatPath([...path, String(params['missingProperty'])]))}`,
      };
    case 'minProperties': {
      const choice = allowed.length === 1 ? allowed.join('') : `at least one of ${allowed.join(', ')}`;
      return { at: here, message: `${formatPath(path)}: must set ${choice}` };
    }
    case 'maxProperties':
      return { at: here, message: `${formatPath(path)}: must set only one of ${allowed.join(', ')}` };
    case 'minItems': {
      const limit = Number(params['limit']);
      const rule = limit === 1 ? 'must not be empty' : `must have at least ${limit} items`;
      return { at: here, message: `${formatPath(path)}: ${rule}` };
    }
    case 'uniqueItems': {
      const later = [...path, Number(params['i'])];
      return {
        at: { path: later, kind: 'value' },
        message: `${formatPath(later)}: duplicate of ${formatPath([...path, Number(params['j'])])}`,
      };
    }
    case 'oneOf': {
      const fields = oneOfFields(e);
      const given = fields.filter((f) => typeof value === 'object' && value !== null && Object.hasOwn(value, f));
      if (given.length > 1) {
        return {
          at: { path: [...path, given[1] as string], kind: 'key' },
          message: `${formatPath(path)}: gives ${orList(given, 'and')}: give only one of ${orList(fields)}`,
        };
      }
      return { at: here, message: `${formatPath(path)}: must give one of ${orList(fields)}` };
    }
    case 'enum':
      return { at: here, message: `${formatPath(path)}: must be ${orList((params['allowedValues'] as unknown[]).map(String))}` };
    case 'const':
      return { at: here, message: `${formatPath(path)}: must be ${JSON.stringify(params['allowedValue'])}` };
    case 'type':
      return { at: here, message: `${formatPath(path)}: must be ${String(params['type']).split(',').map(typeWord).join(' or ')}` };
    case 'pattern':
      return { at: here, message: `${formatPath(path)}: ${parent.patternErrorMessage ?? e.message}` };
    default:
      return { at: here, message: `${formatPath(path)}: ${e.message ?? e.keyword}` };
  }
}

/** The value a JSON pointer names in `data`. */
function valueAt(data: unknown, pointer: string): unknown {
  let value = data;
  for (const segment of dataPath(data, pointer)) {
    value = typeof value === 'object' && value !== null ? (value as Record<string | number, unknown>)[segment] : undefined;
  }
  return value;
}

/** Decodes a JSON pointer, turning segments that index an array into numbers. */
function dataPath(data: unknown, pointer: string): PolicyPath {
  if (pointer === '') return [];
  const path: (string | number)[] = [];
  let value = data;
  for (const raw of pointer.slice(1).split('/')) {
    const segment = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    const key = Array.isArray(value) ? Number(segment) : segment;
    path.push(key);
    value = typeof value === 'object' && value !== null ? (value as Record<string | number, unknown>)[key] : undefined;
  }
  return path;
}

function formatPath(path: PolicyPath): string {
  if (path.length === 0) return 'document';
  return path.map((s, i) => (typeof s === 'number' ? `[${s}]` : i === 0 ? s : `.${s}`)).join('');
}

function orList(items: string[], word: 'or' | 'and' = 'or'): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} ${word} ${items.at(-1)}`;
}

function typeWord(type: string): string {
  const words: Record<string, string> = {
    object: 'a mapping',
    array: 'a list',
    string: 'a string',
    integer: 'an integer',
    number: 'a number',
    boolean: 'true or false',
  };
  return words[type] ?? type;
}
