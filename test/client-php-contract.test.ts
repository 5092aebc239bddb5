// The PHP client's contract rules (docs/clients.md "PHP"), each proved with the real php CLI against a Unix listener
// run here, or with the real nginx + PHP-FPM stack where the rule only exists under FPM: one record per request
// whatever ends it (fatal error, exit()), the route cap, disable()/enable(), every sidekick.* ini setting and its
// SIDEKICK_AGENT_* env twin, the APCu drop counter, and the /run/sidekick default socket.
//
// Every case runs once per client variant (test/helpers/php-ext.ts): the userland file, and the extension (loaded
// with the same prepend on the CLI, which then steps aside; alone under FPM).
//
// Under CI (CI=true) a missing tool (php, the apcu extension, php-fpm, nginx, php-dev) fails instead of skipping.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  Listener,
  PHP,
  PHP_CLIENT,
  PHP_MISSING,
  REPO,
  run,
  socketDir,
  type RunResult,
} from './fixtures/clients/helpers.ts';
import { openToAll } from './helpers/installed-copy.ts';
import { PHP_CLIENT_VARIANTS } from './helpers/php-ext.ts';
import { PHP_FPM_MISSING, startPhpStack, type PhpStack } from './helpers/php-fpm.ts';
import { PHP_ONE_RUN } from './helpers/ci-split.ts';

const CI = process.env.CI === 'true';
const APP = join(REPO, 'test', 'fixtures', 'clients', 'contract', 'app.php');
const QUIET = ['-d', 'display_errors=0', '-d', 'log_errors=0'];
const IS_ROOT = process.getuid?.() === 0;

const APCU_MISSING: string | false = (() => {
  if (!PHP) return 'php missing';
  const r = spawnSync('php', ['-m'], { encoding: 'utf8' });
  return /^apcu$/im.test(r.stdout ?? '') ? false : 'the apcu extension is not installed (apt-get install php-apcu)';
})();
const skipUnlessCi = (why: string | false): string | false => (why && !CI ? why : false);
const SKIP_PHP = skipUnlessCi(PHP_MISSING) || PHP_ONE_RUN;
const SKIP_APCU = skipUnlessCi(PHP_MISSING || APCU_MISSING);
const SKIP_FPM = skipUnlessCi(PHP_MISSING || PHP_FPM_MISSING) || PHP_ONE_RUN;
for (const why of [SKIP_PHP, SKIP_APCU, SKIP_FPM]) if (why) console.log(`skipped: ${why}`);

type Rec = Record<string, unknown>;

/** A clean environment: no inherited SIDEKICK_*, web-request or fixture variables. */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(SIDEKICK_|REQUEST_|CT_|XDG_RUNTIME_DIR$)/.test(k)) base[k] = v;
  }
  return { ...base, ...extra };
}

function php(args: string[], extra: Record<string, string>, opts: { uid?: number; gid?: number } = {}) {
  if (opts.uid !== undefined) {
    // run() has no uid option: the same bounded run through setpriv (util-linux), still started and waited for here.
    return run('setpriv', [`--reuid=${opts.uid}`, `--regid=${opts.gid}`, '--clear-groups', 'php', ...QUIET, ...args], {
      env: env(extra),
      ms: 20_000,
      cwd: '/tmp',
    });
  }
  return run(PHP ?? 'php', [...QUIET, ...args], { env: env(extra), ms: 20_000 });
}

function printed(r: RunResult): Rec {
  assert.equal(r.stderr, '', 'nothing on stderr');
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as Rec;
}

for (const variant of PHP_CLIENT_VARIANTS) {
  const PREPEND = variant.cliArgs();

  describe(`PHP client contract (php CLI) [${variant.name}]`, { skip: SKIP_PHP || variant.skip }, () => {
    test('php is installed (a CI machine must not skip these tests)', () => assert.equal(PHP_MISSING, false));
    test('the client variant is available (CI builds the extension)', () => assert.equal(variant.missing, false));

    const dirs = socketDir();
    let listener: Listener;
    before(async () => {
      listener = await Listener.start(dirs.path('up.sock'));
    });
    after(async () => {
      await listener?.close();
      dirs.cleanup();
    });

    /** Runs the fixture with CT_ACTION=action against the listener; returns the run and the records that arrived. */
    async function act(action: string, extra: Record<string, string> = {}, args: string[] = []) {
      listener.lines.length = 0;
      const r = await php([...args, ...PREPEND, APP], {
        SIDEKICK_AGENT_SOCKET: listener.path,
        CT_ACTION: action,
        ...extra,
      });
      assert.equal(r.signal, null, 'php was not killed');
      const lines = (await listener.settle()) as Rec[];
      return { r, lines };
    }

    describe('one record per request, whatever ends it', () => {
      const fatals: Array<{ action: string; error: RegExp; args?: string[] }> = [
        { action: 'fatal-undefined', error: /^Uncaught Error: Call to undefined function ct_undefined_function\(\)/ },
        { action: 'uncaught', error: /^Uncaught RuntimeException: rt boom/ },
        { action: 'fatal-user', error: /^user boom$/ }, // E_USER_ERROR: PHP's own fatal, was missed (fixed)
        { action: 'oom', error: /^Allowed memory size of 16777216 bytes exhausted/, args: ['-d', 'memory_limit=16M'] },
      ];
      for (const f of fatals) {
        test(`fatal error (${f.action}): one record, its "error" is the fatal's message`, async () => {
          const { r, lines } = await act(f.action, {}, f.args);
          assert.equal(r.code, 255, 'php ends with the fatal');
          assert.equal(lines.length, 1, `one record, got ${JSON.stringify(lines)}`);
          const rec = lines[0]!;
          assert.equal(rec.type, 'php_request');
          assert.equal(typeof rec.error, 'string');
          assert.match(rec.error as string, f.error);
          assert.ok(Buffer.byteLength(rec.error as string) <= 512, 'error is capped at 512 bytes');
        });
      }

      test('exit() in the page: one record, its status, no "error"', async () => {
        const { r, lines } = await act('exit');
        assert.equal(r.code, 3);
        assert.equal(lines.length, 1, JSON.stringify(lines));
        assert.equal(lines[0]!.status, 202);
        assert.equal('error' in lines[0]!, false, 'exit() is not an error');
      });

      test('exit() inside another shutdown function: still one record, with the status that function set', async () => {
        // exit() there skips the shutdown functions after it, the client's send included (was: no record; fixed
        // with a destructor that sends when the shutdown send did not run).
        const { r, lines } = await act('exit-in-shutdown');
        assert.equal(r.code, 0);
        assert.equal(lines.length, 1, JSON.stringify(lines));
        assert.equal(lines[0]!.status, 503);
      });

      test('uncaught Error inside another shutdown function: still one record, with that error', async () => {
        // Same cause as exit() there (the later shutdown functions are skipped); the destructor sends.
        const { r, lines } = await act('fatal-in-shutdown');
        assert.equal(r.code, 255);
        assert.equal(lines.length, 1, JSON.stringify(lines));
        assert.match(
          lines[0]!.error as string,
          /^Uncaught Error: Call to undefined function ct_undefined_function\(\)/,
        );
      });

      test(
        'an engine fatal (E_USER_ERROR, E_ERROR) inside another shutdown function: one record',
        {
          // The extension sends from RSHUTDOWN, which runs whatever happened in the shutdown functions.
          todo:
            variant.name === 'userland'
              ? 'known limit of the userland client: such a fatal skips the later shutdown functions and PHP marks ' +
                'every object destructed (php_error_cb), so no code of the client runs after it: no record'
              : false,
        },
        async () => {
          const { lines } = await act('user-error-in-shutdown');
          assert.equal(lines.length, 1, JSON.stringify(lines));
        },
      );
    });

    describe('route cap', () => {
      test('REQUEST_URI path without query or fragment, capped at 2048 bytes; no cap on distinct routes', async () => {
        const long = `/${'a'.repeat(5000)}`;
        const { lines } = await act('ok', { REQUEST_URI: `${long}?q=1#f` });
        assert.equal(lines.length, 1);
        assert.equal(lines[0]!.route, long.slice(0, 2048));
        const short = await act('ok', { REQUEST_URI: '/shop/7?q=1' });
        assert.equal(short.lines[0]!.route, '/shop/7', 'the query is cut before the cap');
        // The client has no cardinality cap: every distinct path is its own route (Agent::route() keeps it low).
        const routes: unknown[] = [];
        for (let i = 0; i < 5; i++) routes.push((await act('ok', { REQUEST_URI: `/item/${i}` })).lines[0]!.route);
        assert.deepEqual(routes, ['/item/0', '/item/1', '/item/2', '/item/3', '/item/4']);
      });
    });

    describe('disable() / enable()', () => {
      const cases: Array<{ action: string; extra?: Record<string, string>; records: number }> = [
        { action: 'ok', records: 1 },
        { action: 'disable', records: 0 },
        { action: 'disable-enable', records: 1 },
        { action: 'disable-in-shutdown', records: 0 }, // our send runs after every other shutdown function
        { action: 'enable', extra: { SIDEKICK_AGENT_DISABLE: '1' }, records: 0 }, // enable() does not undo the switch
        { action: 'send', extra: { SIDEKICK_AGENT_DISABLE: '1' }, records: 0 }, // nor does an explicit Agent::send()
      ];
      for (const c of cases)
        test(`${c.action}${c.extra ? ' with SIDEKICK_AGENT_DISABLE=1' : ''}: ${c.records} record(s)`, async () => {
          const { r, lines } = await act(c.action, c.extra);
          assert.equal(r.code, 0, r.stderr);
          assert.equal(lines.length, c.records, JSON.stringify(lines));
        });
    });

    describe('settings: each sidekick.* ini entry and its SIDEKICK_AGENT_* env twin', () => {
      const via = (how: 'ini' | 'env', name: string, value: string) =>
        how === 'ini'
          ? { args: ['-d', `sidekick.agent_${name}=${value}`], extra: {} }
          : { args: [], extra: { [`SIDEKICK_AGENT_${name.toUpperCase()}`]: value } };

      for (const how of ['ini', 'env'] as const) {
        test(`${how}: socket`, async () => {
          listener.lines.length = 0;
          const s = via(how, 'socket', listener.path);
          assert.equal((await php([...s.args, ...PREPEND, APP], { CT_ACTION: 'ok', ...s.extra })).code, 0);
          assert.equal((await listener.settle()).length, 1);
        });

        test(`${how}: spill_dir takes what the agent cannot`, async () => {
          const spill = dirs.path(`spill-${how}`);
          const s = via(how, 'spill_dir', spill);
          const r = await php([...s.args, ...PREPEND, APP], {
            SIDEKICK_AGENT_SOCKET: dirs.path('nobody.sock'),
            REQUEST_URI: `/spill/${how}`,
            ...s.extra,
          });
          assert.equal(r.code, 0);
          const text = readFileSync(join(spill, 'spill.ndjson'), 'utf8');
          assert.equal((JSON.parse(text) as Rec).route, `/spill/${how}`);
          assert.equal(existsSync(join(dirs.dir, 'spill')), false, 'not the default spill dir');
        });

        test(`${how}: spill_max_bytes=0 turns spilling off (the record is dropped, counted)`, async () => {
          const spill = dirs.path(`nospill-${how}`);
          const s = via(how, 'spill_max_bytes', '0');
          const r = await php([...s.args, ...PREPEND, APP], {
            SIDEKICK_AGENT_SOCKET: dirs.path('nobody.sock'),
            SIDEKICK_AGENT_SPILL_DIR: spill,
            CT_ACTION: 'send',
            ...s.extra,
          });
          const out = printed(r) as { ok: boolean; stats: Rec };
          assert.equal(out.ok, false);
          assert.deepEqual([out.stats.spilled, out.stats.dropped], [0, 1]);
          assert.equal(existsSync(join(spill, 'spill.ndjson')), false, 'nothing spilled');
        });

        test(`${how}: sndbuf sets SO_SNDBUF of a new connection (0 keeps the system default)`, async () => {
          const wmemDefault = Number(readFileSync('/proc/sys/net/core/wmem_default', 'utf8'));
          for (const [value, expect] of [
            ['32768', 65536], // Linux doubles what is asked for (bookkeeping overhead)
            ['0', wmemDefault],
          ] as const) {
            const s = via(how, 'sndbuf', value);
            const r = await php([...s.args, ...PREPEND, APP], {
              SIDEKICK_AGENT_SOCKET: listener.path,
              CT_ACTION: 'sndbuf',
              ...s.extra,
            });
            assert.equal(printed(r).sndbuf, expect, `sndbuf=${value}`);
          }
          await listener.settle();
        });

        test(`${how}: disable=1 sends nothing`, async () => {
          listener.lines.length = 0;
          const s = via(how, 'disable', '1');
          const r = await php([...s.args, ...PREPEND, APP], { SIDEKICK_AGENT_SOCKET: listener.path, ...s.extra });
          assert.equal(r.code, 0);
          assert.deepEqual(await listener.settle(), []);
        });
      }

      test('ini: max_wait_us bounds how long a send waits for a listener that does not read', async () => {
        const { createServer } = await import('node:net');
        const path = dirs.path('paused.sock');
        const held = new Set<import('node:net').Socket>();
        const server = createServer({ pauseOnConnect: true }, (s) => {
          held.add(s);
          s.on('error', () => {});
        });
        await new Promise<void>((res) => server.listen(path, res));
        try {
          const base = { SIDEKICK_AGENT_SOCKET: path, SIDEKICK_AGENT_SPILL_DIR: dirs.path('spill-wait') };
          const small = ['-d', 'sidekick.agent_sndbuf=65536']; // the 900 KB record cannot fit the buffer
          const long = printed(
            await php([...small, '-d', 'sidekick.agent_max_wait_us=1500000', ...PREPEND, APP], {
              ...base,
              CT_ACTION: 'big-send',
            }),
          );
          const short = printed(await php([...small, ...PREPEND, APP], { ...base, CT_ACTION: 'big-send' }));
          console.log(`big send: ${long.ms} ms with max_wait_us=1500000, ${short.ms} ms with the default (500 µs)`);
          assert.equal(long.ok, false, 'not taken within the budget (too long to spill): dropped');
          assert.ok((long.ms as number) >= 1500, `waited the whole budget (${long.ms} ms)`);
          assert.ok((short.ms as number) < 1000, `the default budget is far shorter (${short.ms} ms)`);
        } finally {
          for (const s of held) s.destroy();
          await new Promise<void>((res) => server.close(() => res()));
        }
      });
    });

    describe('APCu drop counter', { skip: SKIP_APCU }, () => {
      test('the apcu extension is installed (a CI machine must not skip this)', () =>
        assert.equal(APCU_MISSING, false));

      test('with APCu enabled, stats().dropped_total counts the drops (key sidekick.agent.dropped); else null', async () => {
        const base = {
          SIDEKICK_AGENT_SOCKET: dirs.path('nobody.sock'),
          SIDEKICK_AGENT_SPILL_MAX_BYTES: '0',
          CT_ACTION: 'drops',
        };
        const on = printed(await php(['-d', 'apc.enable_cli=1', ...PREPEND, APP], base)).stats as Rec;
        assert.deepEqual([on.dropped, on.dropped_total], [2, 2]);
        const off = printed(await php(['-d', 'apc.enable_cli=0', ...PREPEND, APP], base)).stats as Rec;
        assert.deepEqual([off.dropped, off.dropped_total], [2, null]);
      });

      for (const cli of ['0', '1']) {
        test(`spill full, apc.enable_cli=${cli}: a request's drops go to the spill as one control line with their count`, async () => {
          // On the CLI nothing outlives the process (not even APCu), so the request writes its drops into the allowance
          // past the cap: one line however many it dropped (2 extra records + its own), not one line per drop.
          const spill = dirs.path(`full-${cli}`);
          mkdirSync(spill, { recursive: true });
          writeFileSync(join(spill, 'spill.ndjson'), `{"type":"filler","pad":"${'x'.repeat(200)}"}\n`);
          const out = printed(
            await php(['-d', `apc.enable_cli=${cli}`, ...PREPEND, APP], {
              SIDEKICK_AGENT_SOCKET: dirs.path('nobody.sock'),
              SIDEKICK_AGENT_SPILL_DIR: spill,
              SIDEKICK_AGENT_SPILL_MAX_BYTES: '100',
              CT_ACTION: 'drops',
            }),
          ).stats as Rec;
          assert.deepEqual([out.spilled, out.dropped], [0, 2], 'both extra records dropped: the spill is full');
          const lines = readFileSync(join(spill, 'spill.ndjson'), 'utf8').split('\n').filter(Boolean);
          assert.deepEqual(
            lines.slice(1).map((l) => JSON.parse(l) as Rec),
            [{ _sidekick: 'dropped', count: 3 }],
            'one control line: the two extra records and the request record',
          );
        });
      }
    });

    describe('default socket /run/sidekick/agent.sock', () => {
      test('with no setting, root and a worker (not root) find the agent in /run/sidekick', async (t) => {
        if (!IS_ROOT) {
          t.skip('needs root: creates /run/sidekick and binds /run/sidekick/agent.sock for the duration of the test');
          return;
        }
        const dir = '/run/sidekick';
        const sock = join(dir, 'agent.sock');
        if (existsSync(sock)) {
          t.skip(`${sock} exists (an agent of this machine?): left alone`);
          return;
        }
        const created = !existsSync(dir);
        if (created) mkdirSync(dir, { mode: 0o755 });
        const l = await Listener.start(sock);
        // nobody runs a copy of the client and the page, as a pool runs an installed client (/opt/sidekick/clients/php):
        // the checkout may lie under a directory nobody cannot traverse (root's 0700 home, a mktemp -d).
        const copy = mkdtempSync(join(tmpdir(), 'skc-nobody-'));
        try {
          chmodSync(sock, 0o666);
          assert.equal((await php([...PREPEND, APP], { CT_ACTION: 'ok', REQUEST_URI: '/as-root' })).code, 0);
          for (const f of [PHP_CLIENT, APP]) copyFileSync(f, join(copy, basename(f)));
          openToAll(copy);
          // Not root: the "/run/sidekick exists" rule (what PHP-FPM workers rely on), with no XDG_RUNTIME_DIR either.
          const r = await php(
            [...variant.cliArgs(join(copy, basename(PHP_CLIENT))), join(copy, basename(APP))],
            { CT_ACTION: 'ok', REQUEST_URI: '/as-nobody' },
            { uid: 65534, gid: 65534 },
          );
          assert.equal(r.code, 0, r.stderr);
          const lines = (await l.settle()) as Rec[];
          assert.deepEqual(
            lines.map((x) => x.route),
            ['/as-root', '/as-nobody'],
          );
        } finally {
          await l.close();
          rmSync(copy, { recursive: true, force: true });
          rmSync(sock, { force: true });
          if (created) rmSync(dir, { recursive: true, force: true });
        }
      });
    });
  });

  describe(`PHP client contract under nginx + PHP-FPM [${variant.name}]`, { skip: SKIP_FPM || variant.skip }, () => {
    test('php-fpm and nginx are installed (a CI machine must not skip these tests)', () =>
      assert.equal(PHP_FPM_MISSING, false));

    const dirs = socketDir();
    let listener: Listener;
    let stack: PhpStack;
    before(async () => {
      listener = await Listener.start(dirs.path('agent.sock'));
      stack = await startPhpStack({
        agentSocket: listener.path,
        page: APP,
        children: 2,
        extension: variant.so, // the extension variant: loaded by the pools, no prepend
        pools: [
          { name: 'app' },
          { name: 'finish', env: { SIDEKICK_AGENT_FINISH_REQUEST: '1' } },
          // no agent, no spill: every request's record is dropped and counted in APCu (shared by the pool's children)
          {
            name: 'drop',
            env: { SIDEKICK_AGENT_SOCKET: dirs.path('nobody.sock'), SIDEKICK_AGENT_SPILL_MAX_BYTES: '0' },
          },
        ],
      });
    });
    after(async () => {
      await stack?.cleanup();
      await listener?.close();
      dirs.cleanup();
    });

    async function get(pool: string, path: string): Promise<{ status: number; body: string }> {
      const res = await fetch(`${stack.urls[pool]}${path}`, { signal: AbortSignal.timeout(10_000) });
      return { status: res.status, body: await res.text() };
    }

    /**
     * FPM children keep their connection open, so settle() cannot run until the stack stops: wait for the records a
     * test expects, and prove "no more than that" once at the end (the last test stops FPM, then settles).
     */
    let expected = 0;
    async function next(n: number): Promise<Rec[]> {
      const from = expected;
      expected += n;
      return ((await listener.waitForLines(expected)) as Rec[]).slice(from, expected);
    }

    test('a fatal error: the response is a 500 and the one record says status 500 with the error', async () => {
      assert.equal((await get('app', 'fatal-user/1')).status, 500);
      assert.equal((await get('app', 'exit/1')).status, 202);
      const lines = await next(2);
      const byRoute = new Map(lines.map((l) => [l.route, l]));
      assert.equal(lines.length, 2, JSON.stringify(lines));
      assert.deepEqual(
        [byRoute.get('/fatal-user/1')?.status, byRoute.get('/fatal-user/1')?.error],
        [500, 'user boom'],
        stack.logs(),
      );
      assert.equal(byRoute.get('/exit/1')?.status, 202);
      assert.equal(byRoute.get('/exit/1')?.sapi, 'fpm-fcgi');
    });

    test('many distinct routes: one record each, route = path (no cardinality cap in the client)', async () => {
      const paths = Array.from({ length: 40 }, (_, i) => `ok/${i}`);
      for (const p of paths) assert.equal((await get('app', p)).status, 200);
      const routes = (await next(paths.length)).map((l) => l.route as string).sort();
      assert.deepEqual(routes, paths.map((p) => `/${p}`).sort());
    });

    test('SIDEKICK_AGENT_FINISH_REQUEST=1: the response ends before the send (later output is discarded)', async () => {
      assert.equal((await get('app', 'destructor-echo/1')).body, 'page\nlate\n', 'off: a destructor still prints');
      if (variant.name === 'userland')
        assert.equal((await get('finish', 'destructor-echo/2')).body, 'page\n', 'on: the response ended before it');
      // The extension sends after the destructors ran (RSHUTDOWN): finishing the request first discards nothing.
      else assert.equal((await get('finish', 'destructor-echo/2')).body, 'page\nlate\n', 'on: nothing discarded');
      const routes = (await next(2)).map((l) => l.route).sort();
      assert.deepEqual(routes, ['/destructor-echo/1', '/destructor-echo/2'], 'both requests sent their record');
    });

    test('APCu: the drop count is shared by the pool (sidekick.agent.dropped)', { skip: SKIP_APCU }, async () => {
      const before = (JSON.parse((await get('drop', 'stats/0')).body) as { stats: Rec }).stats.dropped_total as number;
      assert.equal(typeof before, 'number', 'APCu is enabled under FPM');
      for (let i = 1; i <= 6; i++) assert.equal((await get('drop', `ok/${i}`)).status, 200);
      // The stats request reads the counter before its own record is dropped: the 6 above plus the first stats one.
      const out = JSON.parse((await get('drop', 'stats/1')).body) as { stats: Rec; pid: number };
      assert.equal(out.stats.dropped_total, before + 7, stack.logs());
    });

    test('after FPM stops (its connections close): no record beyond one per request', async () => {
      await stack.stop();
      const lines = (await listener.settle()) as Rec[];
      assert.equal(lines.length, expected, JSON.stringify(lines.slice(expected)));
    });
  });
}
