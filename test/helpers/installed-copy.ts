// Tests that run a piece as another user (nobody) cannot run it from the checkout in place: the checkout may lie under
// a directory that user cannot traverse (a clone in root's 0700 home, a `mktemp -d`), and node then fails with
// "Cannot find module". These helpers copy what that process needs into a directory it can read, as an install does:
// the built package (bin/, dist/, package.json and its runtime dependencies from node_modules), or single files (the
// PHP client). Each test puts the copy in a temp dir of its own and removes it with that dir.
import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '..', '..');
/** uid and gid of the user `nobody` (Debian). */
export const NOBODY = 65534;

interface PackageJson {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

/**
 * The package directories (relative to ROOT) of the runtime dependency closure of package.json, resolved the way
 * node does: `<dir>/node_modules/<name>`, then each parent's, up to ROOT. Optional and peer dependencies count when
 * installed.
 */
function runtimeDependencies(): string[] {
  const found = new Set<string>();
  const visit = (pkgDir: string): void => {
    const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as PackageJson;
    const names = Object.keys({ ...pkg.peerDependencies, ...pkg.optionalDependencies, ...pkg.dependencies });
    for (const name of names) {
      let dir = pkgDir;
      let at: string | undefined;
      for (;;) {
        const candidate = join(dir, 'node_modules', name);
        if (existsSync(join(candidate, 'package.json'))) {
          at = candidate;
          break;
        }
        if (dir === ROOT) break;
        dir = dirname(dir);
      }
      if (at === undefined) {
        if (pkg.dependencies?.[name] !== undefined) throw new Error(`${name} (needed by ${pkgDir}) is not installed`);
        continue; // an optional or peer dependency that is not installed
      }
      const rel = relative(ROOT, at);
      if (found.has(rel)) continue;
      found.add(rel);
      visit(at);
    }
  };
  visit(ROOT);
  return [...found].sort();
}

/** Makes `path` and everything below it readable by everyone (directories and executables also searchable). */
export function openToAll(path: string): void {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    chmodSync(path, (st.mode & 0o7777) | 0o755);
    for (const entry of readdirSync(path)) openToAll(join(path, entry));
  } else {
    chmodSync(path, (st.mode & 0o7777) | 0o444 | (st.mode & 0o100 ? 0o111 : 0));
  }
}

/**
 * Copies the built package into `dir` (created; it and every directory above it must be searchable by the user who
 * runs the copy): bin/, dist/, package.json and the runtime dependencies, all readable by everyone. Returns the copy's
 * bin/sidekick.js. Run `npm run build` first (the tests need dist/ anyway).
 */
export function installedCopy(dir: string): string {
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is not built: npm run build');
  mkdirSync(dir, { recursive: true });
  for (const part of ['bin', 'dist', 'package.json', ...runtimeDependencies()]) {
    cpSync(join(ROOT, part), join(dir, part), { recursive: true });
  }
  openToAll(dir);
  return join(dir, 'bin', 'sidekick.js');
}
