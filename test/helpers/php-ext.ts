// The PHP client's two variants for the tests and benchmarks: the userland file (clients/php/sidekick-agent.php as
// auto_prepend_file) and the extension (clients/php/ext, built here with phpize from Debian's php-dev). The PHP tests
// run their cases once per variant:
//
//   for (const v of PHP_CLIENT_VARIANTS) describe(`… [${v.name}]`, { skip: v.skip }, () => { … v.cliArgs() … });
//
// The extension is built once per source version into a cache directory under the system temp dir (keyed by a hash
// of its sources and of the PHP API version), so concurrent test files share one build (scripts/build-php-ext.sh,
// ~20 s). Without php-dev the extension variant is skipped, except under CI (CI=true), where a missing or failing
// build fails it. SIDEKICK_TEST_PHP_VARIANTS=userland (a comma list) runs only the variants named (.ci/run's second
// suite run: the PHP side does not change with the Node version).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
export const PHP_CLIENT_FILE = join(REPO_ROOT, 'clients', 'php', 'sidekick-agent.php');
export const PHP_EXT_SRC = join(REPO_ROOT, 'clients', 'php', 'ext');

function sh(cmd: string, args: string[], cwd: string): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 300_000, env: { ...process.env, MAKEFLAGS: '' } });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

/** The built sidekick.so (cached), or why it could not be built. Synchronous: the first call may take ~20 s. */
export function buildPhpExtension(): { so: string } | { missing: string } {
  const api = sh('php-config', ['--extension-dir'], REPO_ROOT); // names the PHP API (…-20220829)
  if (!api.ok) return { missing: 'php-config not found (apt-get install php-dev)' };
  const hash = createHash('sha256').update(api.out);
  for (const f of readdirSync(PHP_EXT_SRC)
    .filter((n) => /\.(c|h|m4)$/.test(n))
    .sort())
    hash.update(f).update(readFileSync(join(PHP_EXT_SRC, f)));
  const cache = join(tmpdir(), `sidekick-php-ext-${hash.digest('hex').slice(0, 16)}`);
  const so = join(cache, 'sidekick.so');
  if (existsSync(so)) return { so };
  // scripts/build-php-ext.sh builds in a private copy; the result moves into place whole: concurrent builders each
  // finish, one rename wins.
  const staged = mkdtempSync(join(tmpdir(), 'sidekick-php-ext-build-'));
  const r = sh(join(REPO_ROOT, 'scripts', 'build-php-ext.sh'), [staged], REPO_ROOT);
  if (!r.ok) {
    rmSync(staged, { recursive: true, force: true });
    return { missing: `the PHP extension did not build (scripts/build-php-ext.sh):\n${r.out.slice(-4000)}` };
  }
  chmodSync(staged, 0o755); // FPM children and tests that run PHP as nobody load it
  try {
    renameSync(staged, cache);
  } catch {
    rmSync(staged, { recursive: true, force: true }); // another builder won: same sources, same result
  }
  return existsSync(so) ? { so } : { missing: `the PHP extension build left no ${so}` };
}

let built: { so: string } | { missing: string } | undefined;
/** buildPhpExtension(), once per process. */
export function phpExtension(): { so: string } | { missing: string } {
  built ??= buildPhpExtension();
  return built;
}

export interface PhpClientVariant {
  name: 'userland' | 'extension';
  /** Why this variant cannot run here (a skip outside CI), or false. Under CI it is false and the test fails. */
  skip: string | false;
  /** The build error or false (under CI a test asserts it is false). */
  missing: string | false;
  /** sidekick.so for the extension variant. */
  so?: string;
  /**
   * php CLI arguments that load the client: the userland file as auto_prepend_file; for the extension, the extension
   * AND the same prepend, so every test also proves that the file steps aside (one record per request, never two).
   */
  cliArgs(prepend?: string): string[];
}

function variants(): PhpClientVariant[] {
  const userland: PhpClientVariant = {
    name: 'userland',
    skip: false,
    missing: false,
    cliArgs: (prepend = PHP_CLIENT_FILE) => ['-d', `auto_prepend_file=${prepend}`],
  };
  const only = process.env.SIDEKICK_TEST_PHP_VARIANTS?.split(',').filter(Boolean);
  if (only?.length && !only.includes('extension')) return [userland];
  const ext = phpExtension();
  const missing = 'missing' in ext ? ext.missing : false;
  const extension: PhpClientVariant = {
    name: 'extension',
    skip: missing && process.env.CI !== 'true' ? missing : false,
    missing,
    ...('so' in ext ? { so: ext.so } : {}),
    cliArgs: (prepend = PHP_CLIENT_FILE) => [
      '-d',
      `extension=${'so' in ext ? ext.so : 'sidekick-extension-not-built.so'}`,
      '-d',
      `auto_prepend_file=${prepend}`,
    ],
  };
  if (only?.length && !only.includes('userland')) return [extension];
  if (extension.skip) console.log(`PHP extension variant skipped: ${extension.skip}`);
  return [userland, extension];
}

/** Both variants; builds the extension at first use (only test files that run PHP import this). */
export const PHP_CLIENT_VARIANTS: PhpClientVariant[] = variants();
