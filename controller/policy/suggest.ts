/**
 * "Did you mean": the name a typo was probably meant to be. Pure.
 */

/**
 * The candidate closest to `word`, when it is close enough to be worth
 * suggesting: the same word in another case, a few edits away (at most one
 * per three characters, adjacent swaps counting one), or `word` cut short
 * (`sha` for `sha256`). Ties go to the candidate listed first; undefined
 * when nothing is close. Never throws.
 */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const lower = word.toLowerCase();
  const exact = candidates.find((c) => c.toLowerCase() === lower);
  if (exact !== undefined) return exact;
  const limit = Math.max(1, Math.floor(word.length / 3));
  let best: { candidate: string; distance: number } | undefined;
  for (const candidate of candidates) {
    const distance = editDistance(lower, candidate.toLowerCase());
    if (distance <= limit && (best === undefined || distance < best.distance)) best = { candidate, distance };
  }
  if (best) return best.candidate;
  // A prefix of three characters or more: `sha` for `sha256`, `secretId` for `secretIdFile`.
  if (word.length >= 3) return candidates.find((c) => c.toLowerCase().startsWith(lower));
  return undefined;
}

/**
 * Optimal string alignment distance: insertions, deletions, substitutions
 * and swaps of two adjacent characters each cost one.
 */
export function editDistance(a: string, b: string): number {
  // Policy names are short; a full table is simplest and cheap.
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[][] = Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      const row = d[i] as number[];
      const prev = d[i - 1] as number[];
      row[j] = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j] as number, ((d[i - 2] as number[])[j - 2] as number) + 1);
      }
    }
  }
  return (d[a.length] as number[])[b.length] as number;
}
