// docs/errors.md and src/errors.ts must list the same codes: every code in ERROR_CODES has a row in the doc's table,
// and every code the doc's table names exists in the catalogue.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ERROR_CODES } from '../src/errors.ts';

const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');

/** Codes named in the first column of the doc's table rows: "| `SK_ERR_X` | when | what to do |". */
function documentedCodes(): string[] {
  const codes: string[] = [];
  for (const line of doc.split('\n')) {
    const m = /^\|\s*`(SK_ERR_[A-Z0-9_]+)`\s*\|/.exec(line);
    if (m) codes.push(m[1]!);
  }
  return codes;
}

test('every code in ERROR_CODES has a row in docs/errors.md', () => {
  const documented = new Set(documentedCodes());
  const missing = Object.keys(ERROR_CODES).filter((c) => !documented.has(c));
  assert.deepEqual(missing, [], `codes missing from docs/errors.md: ${missing.join(', ')}`);
});

test('every code documented in docs/errors.md exists in ERROR_CODES', () => {
  const unknown = documentedCodes().filter((c) => !Object.hasOwn(ERROR_CODES, c));
  assert.deepEqual(unknown, [], `docs/errors.md documents codes src/errors.ts does not define: ${unknown.join(', ')}`);
});

test('docs/errors.md lists each code once, and each row says when and what to do', () => {
  const codes = documentedCodes();
  const dupes = codes.filter((c, i) => codes.indexOf(c) !== i);
  assert.deepEqual(dupes, [], `listed twice: ${dupes.join(', ')}`);
  for (const line of doc.split('\n').filter((l) => /^\|\s*`SK_ERR_/.test(l))) {
    const cells = line
      .split('|')
      .slice(1, -1)
      .map((c) => c.trim());
    assert.equal(cells.length, 3, `row should have 3 cells (code | when | what to do): ${line}`);
    assert.ok(cells[1] && cells[2], `empty cell in: ${line}`);
  }
});

test('every catalogue code is SK_ERR_* with a description', () => {
  for (const [code, text] of Object.entries(ERROR_CODES)) {
    assert.match(code, /^SK_ERR_[A-Z0-9_]+$/);
    assert.ok(typeof text === 'string' && text.length > 0, code);
  }
});

test('every SK_ERR_* the source names (thrown, logged as `code`, documented in comments) is in the catalogue', () => {
  const root = new URL('../src/', import.meta.url);
  const files = readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  assert.ok(files.length > 20, `expected the source tree under ${root.pathname}`);
  const unknown: string[] = [];
  for (const file of files) {
    const text = readFileSync(new URL(file, root), 'utf8');
    for (const m of text.matchAll(/\bSK_ERR_[A-Z0-9_]*[A-Z0-9]\b/g)) {
      const prefixMatch = text.slice(Math.max(0, m.index - 12), m.index).includes('startsWith(');
      if (!prefixMatch && !Object.hasOwn(ERROR_CODES, m[0])) unknown.push(`${file}: ${m[0]}`);
    }
  }
  assert.deepEqual(unknown, [], `codes used in src/ but missing from src/errors.ts:\n${unknown.join('\n')}`);
});
