/** How the policy checks name documents and places in their messages, and find repeated items. */
import type { SourcePosition } from '../errors.js';
import type { PolicyDoc } from './types.js';

/** `Kind "name"`, as every message names a document. */
export function label(doc: PolicyDoc): string {
  return `${doc.kind} ${JSON.stringify(doc.metadata.name)}`;
}

/** `file:line`, for a message that points at another place. */
export function where(position: SourcePosition): string {
  return `${position.file}:${position.line}`;
}

/** Each item whose key an earlier item already had, paired with that first item. */
export function repeats<T>(items: T[], keyOf: (item: T) => string): [T, T][] {
  const first = new Map<string, T>();
  const found: [T, T][] = [];
  for (const item of items) {
    const key = keyOf(item);
    const earlier = first.get(key);
    if (earlier === undefined) first.set(key, item);
    else found.push([item, earlier]);
  }
  return found;
}
