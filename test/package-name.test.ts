// The npm name is sidekick-runtime: `sidekick` belongs to an unrelated package (issue 19, item 1). Every module
// specifier in the README, the docs, the examples, the deploy files, the sources, the tests and the benchmarks must
// name ours: an `import … from 'sidekick'` or a `sidekick/client` copied from them installs or names someone else's
// code. The CLI command stays `sidekick`, so only module specifiers are checked, not the word.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIRS = ['docs', 'deploy', 'examples', 'src', 'test', 'bench', 'clients', 'scripts'];
const SKIP = new Set(['node_modules', 'dist', 'build', '.git']);
const TEXT = /\.(md|ts|mts|mjs|cjs|js|json|php|sh|conf|service)$/;

function files(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(e.name)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p));
    else if (e.isFile() && TEXT.test(e.name) && statSync(p).size < 2_000_000) out.push(p);
  }
  return out;
}

/** Module specifiers that name the unrelated package: 'sidekick' or 'sidekick/…' in quotes or backticks. */
const OLD_NAME = /(?<![\w@./-])(['"`])sidekick(\/[\w./-]+)?\1/g;
/** Where such a string is a module specifier, or stands for one in prose ("the agent client is `sidekick/client`"). */
const SPECIFIER_CONTEXT = /\bfrom\s*$|\bimport\s*\(?\s*$|\brequire\s*\(\s*$|\bnpm\s+(i|install)\s+(-g\s+)?$/;

test('package.json: the name is sidekick-runtime, the command is sidekick, ./client is exported', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
    name: string;
    bin: Record<string, string>;
    exports: Record<string, unknown>;
  };
  assert.equal(pkg.name, 'sidekick-runtime');
  assert.deepEqual(Object.keys(pkg.bin), ['sidekick']);
  assert.ok(pkg.exports['./client'], 'sidekick-runtime/client is exported');
});

test("no module specifier names the unrelated npm package 'sidekick' (imports, requires, sidekick/client)", () => {
  const found: string[] = [];
  const all = [join(ROOT, 'README.md'), ...DIRS.flatMap((d) => files(join(ROOT, d)))];
  for (const file of all) {
    if (file === fileURLToPath(import.meta.url)) continue; // this file names the old specifiers on purpose
    const text = readFileSync(file, 'utf8');
    const lines = text.split('\n');
    lines.forEach((line, i) => {
      for (const m of line.matchAll(OLD_NAME)) {
        const before = line.slice(0, m.index);
        // A subpath (`sidekick/client`) is a specifier wherever it stands; a bare 'sidekick' only after from/import/
        // require/npm install (elsewhere it is the command, a program name or a log field).
        if (m[2] !== undefined || SPECIFIER_CONTEXT.test(before))
          found.push(`${relative(ROOT, file)}:${i + 1}: ${line.trim().slice(0, 120)}`);
      }
    });
  }
  assert.deepEqual(found, [], `use 'sidekick-runtime' (or 'sidekick-runtime/client'):\n${found.join('\n')}`);
});
