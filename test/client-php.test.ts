// The PHP client (clients/php/sidekick-agent.php) under Debian's real php CLI, against Unix listeners that are up,
// down (no file, stale file) and hung (accepting but never reading; never accepting with a full backlog).
// Timing is measured inside PHP for information only; tests assert outcomes, bounded by generous deadlines.
// Every case runs once per client variant (test/helpers/php-ext.ts): the userland file, and the extension (loaded in
// every php run here, so the userland file, prepended or required, steps aside).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  FIXTURES,
  Listener,
  PHP,
  PHP_CLIENT,
  PHP_MISSING,
  makeStaleSocket,
  run,
  socketDir,
  startHungListener,
  startNeverAccepting,
  type RunResult,
} from './fixtures/clients/helpers.ts';
import { agentConfig, fileOutput, startAgent, tmpDir, waitFor, writeConfig } from './helpers/agent.ts';
import { PHP_CLIENT_VARIANTS } from './helpers/php-ext.ts';
import { PHP_ONE_RUN } from './helpers/ci-split.ts';

if (PHP_MISSING) console.log(PHP_MISSING);

const APP = join(FIXTURES, 'app.php');
const APP_REQUIRE = join(FIXTURES, 'app-require.php');
// Make any leaked notice or warning visible on stderr, whatever the system php.ini says.
const LOUD = ['-d', 'display_errors=stderr', '-d', 'error_reporting=-1', '-d', 'log_errors=0', '-d', 'html_errors=0'];

/** A clean environment: no inherited SIDEKICK_* variables or web-request variables. */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SIDEKICK_') && !k.startsWith('REQUEST_') && !k.startsWith('APP_')) base[k] = v;
  }
  return { ...base, ...extra };
}

function runPhp(args: string[], extra: Record<string, string>): Promise<RunResult> {
  return run(PHP ?? 'php', [...LOUD, ...args], { env: env(extra), ms: 20_000 });
}

function assertClean(r: RunResult): void {
  assert.equal(r.signal, null, 'php was not killed');
  assert.equal(r.code, 0, `php exit code (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', 'nothing on stdout');
  assert.equal(r.stderr, '', 'nothing on stderr');
}

interface Timing {
  ok: boolean;
  ns: number;
  stats: { sent: number; spilled: number; dropped: number };
}
function readTiming(file: string): Timing {
  assert.ok(existsSync(file), 'the page got past Agent::send() and wrote its measurement');
  const t = JSON.parse(readFileSync(file, 'utf8')) as Timing;
  assert.equal(typeof t.ns, 'number');
  console.log(`Agent::send() took ${(t.ns / 1000).toFixed(1)} µs (ok=${t.ok}) — information only`);
  return t;
}

for (const variant of PHP_CLIENT_VARIANTS) {
  // The extension variant loads the extension in every run (also those that require the userland file themselves).
  const LOAD = variant.so ? ['-d', `extension=${variant.so}`] : [];
  const PREPEND = ['-d', `auto_prepend_file=${PHP_CLIENT}`];
  const php = (args: string[], extra: Record<string, string>): Promise<RunResult> => runPhp([...LOAD, ...args], extra);

  describe(`PHP client [${variant.name}]`, { skip: PHP_MISSING || PHP_ONE_RUN || variant.skip }, () => {
    test('the client variant is available (CI builds the extension)', () => assert.equal(variant.missing, false));
    const dirs = socketDir();
    after(() => dirs.cleanup());

    describe('agent up', () => {
      let listener: Listener;
      before(async () => {
        listener = await Listener.start(dirs.path('up.sock'));
      });
      after(() => listener.close());

      test('auto_prepend_file: exactly one line with the documented fields', async () => {
        listener.lines.length = 0;
        const t0 = Date.now();
        const r = await php([...PREPEND, APP], {
          SIDEKICK_AGENT_SOCKET: listener.path,
          REQUEST_URI: '/shop/cart?id=7#frag',
          REQUEST_METHOD: 'POST',
        });
        const t1 = Date.now();
        assertClean(r);
        const lines = await listener.settle();
        assert.equal(lines.length, 1, `one record, got ${JSON.stringify(lines)}`);
        const rec = lines[0] as Record<string, unknown>;
        assert.equal(rec.type, 'php_request', 'a tag cannot override a built-in field');
        assert.equal(rec.route, '/shop/cart');
        assert.equal(rec.method, 'POST');
        assert.equal(rec.status, 201);
        assert.equal(typeof rec.ts, 'number');
        assert.ok((rec.ts as number) >= t0 - 1000 && (rec.ts as number) <= t1 + 1000, `ts ${rec.ts} within the run`);
        assert.equal(typeof rec.duration_ms, 'number');
        assert.ok((rec.duration_ms as number) >= 0);
        assert.ok(Number.isInteger(rec.memory_peak_bytes) && (rec.memory_peak_bytes as number) > 0);
        assert.equal(rec.host, hostname());
        assert.equal(rec.pid, r.pid);
        assert.equal(rec.sapi, 'cli');
        assert.equal(rec.user, '42');
        assert.ok(listener.raw.every((l) => !l.includes('\n')));
      });

      test('require (CLI: route is the script name), and prepend + require still sends one line', async () => {
        listener.lines.length = 0;
        const r1 = await php([APP_REQUIRE], { SIDEKICK_AGENT_SOCKET: listener.path });
        assertClean(r1);
        const r2 = await php([...PREPEND, APP_REQUIRE], { SIDEKICK_AGENT_SOCKET: listener.path });
        assertClean(r2);
        const lines = (await listener.settle()) as Record<string, unknown>[];
        assert.equal(lines.length, 2, `one record per run, got ${JSON.stringify(lines)}`);
        assert.deepEqual(lines.map((l) => l.pid).sort(), [r1.pid, r2.pid].sort());
        for (const rec of lines) {
          assert.equal(rec.route, '/custom/{id}', 'Agent::route() overrides the route');
          assert.equal(rec.method, 'CLI');
          assert.equal(rec.status, null, 'no status on the CLI when the script never set one');
        }
        listener.lines.length = 0;
        const r3 = await php([join(FIXTURES, 'cli-route.php')], { SIDEKICK_AGENT_SOCKET: listener.path });
        assertClean(r3);
        const [rec] = (await listener.settle()) as Record<string, unknown>[];
        assert.equal(rec?.route, join(FIXTURES, 'cli-route.php'), 'CLI route = script name');
      });

      test('socket path from a constant and from php.ini; env wins over both', async () => {
        listener.lines.length = 0;
        assertClean(await php([APP_REQUIRE], { APP_CONSTANT: listener.path }));
        assertClean(await php(['-d', `sidekick.agent_socket=${listener.path}`, ...PREPEND, APP], {}));
        assertClean(
          await php(['-d', `sidekick.agent_socket=${dirs.path('nothing-here.sock')}`, ...PREPEND, APP], {
            SIDEKICK_AGENT_SOCKET: listener.path,
          }),
        );
        const lines = await listener.settle();
        assert.equal(lines.length, 3);
      });

      test('Agent::disable() and SIDEKICK_AGENT_DISABLE=1 send nothing', async () => {
        listener.lines.length = 0;
        assertClean(await php([...PREPEND, APP], { SIDEKICK_AGENT_SOCKET: listener.path, APP_DISABLE: '1' }));
        assertClean(
          await php([...PREPEND, APP], { SIDEKICK_AGENT_SOCKET: listener.path, SIDEKICK_AGENT_DISABLE: '1' }),
        );
        assert.deepEqual(await listener.settle(), []);
      });

      test('Agent::send() returns true and the record arrives', async () => {
        listener.lines.length = 0;
        const out = join(dirs.dir, 'timing-up.json');
        const r = await php([...PREPEND, APP], { SIDEKICK_AGENT_SOCKET: listener.path, APP_TIMING_OUT: out });
        assertClean(r);
        const t = readTiming(out);
        assert.equal(t.ok, true);
        assert.equal(t.stats.sent, 1);
        const lines = (await listener.settle()) as Record<string, unknown>[];
        assert.deepEqual(
          lines.map((l) => l.type),
          ['probe', 'php_request'],
        );
      });
    });

    describe('agent down or hung: php exits 0, prints nothing, the record is spilled (or, hung, may be taken)', () => {
      const cases: Array<{ name: string; setup: (path: string) => Promise<() => Promise<void>>; ok: boolean | null }> =
        [
          { name: 'no socket file', setup: async () => async () => {}, ok: false },
          {
            name: 'stale socket file (nobody listening)',
            setup: async (path) => {
              await makeStaleSocket(path);
              assert.ok(existsSync(path), 'the stale file is there');
              return async () => {};
            },
            ok: false,
          },
          {
            name: 'hung: accepts but never reads, kernel buffer pre-filled by another connection',
            setup: async (path) => (await startHungListener(path)).close,
            ok: null, // a fresh connection has its own send buffer, so the kernel may still take the line
          },
          {
            name: 'hung: never accepts, backlog full',
            setup: async (path) => (await startNeverAccepting(path)).close,
            ok: false,
          },
        ];
      for (const c of cases) {
        test(c.name, async () => {
          const path = dirs.path(`case-${cases.indexOf(c)}.sock`);
          const spill = dirs.path(`spill-${cases.indexOf(c)}`);
          const teardown = await c.setup(path);
          try {
            for (const strict of ['0', '1']) {
              const out = join(dirs.dir, `timing-${cases.indexOf(c)}-${strict}.json`);
              const r = await php([...PREPEND, APP], {
                SIDEKICK_AGENT_SOCKET: path,
                SIDEKICK_AGENT_SPILL_DIR: spill,
                APP_TIMING_OUT: out,
                APP_STRICT: strict,
                REQUEST_URI: '/x',
              });
              assertClean(r);
              const t = readTiming(out);
              if (c.ok !== null) assert.equal(t.ok, true, 'the spill file took it');
              if (c.ok === false) assert.deepEqual([t.stats.spilled, t.stats.dropped], [1, 0]);
            }
            // Each run spilled its probe and its request record: 2 runs x 2, whole lines, nothing dropped.
            if (c.ok === false) {
              const lines = spilled(spill);
              assert.deepEqual(
                lines.map((l) => l.type),
                ['probe', 'php_request', 'probe', 'php_request'],
              );
            }
          } finally {
            await teardown();
          }
        });
      }
    });

    describe('spill and drops reach the agent', () => {
      test('records spilled while the agent is down are replayed by the agent once it runs, exactly once', async () => {
        const { dir, cleanup } = tmpDir('sk-php-spill-');
        try {
          const socket = join(dir, 'agent.sock');
          const base = { SIDEKICK_AGENT_SOCKET: socket, REQUEST_URI: '/down/1' };
          assertClean(await php([...PREPEND, APP], base));
          assertClean(await php([...PREPEND, APP], { ...base, REQUEST_URI: '/down/2' }));
          assert.deepEqual(
            spilled(join(dir, 'spill')).map((l) => l.route),
            ['/down/1', '/down/2'],
            'the default spill dir is spill/ beside the socket',
          );
          const agent = await startAgent(writeConfig(dir, agentConfig(dir)), { ready: true });
          try {
            assertClean(await php([...PREPEND, APP], { ...base, REQUEST_URI: '/up' }));
            let last: unknown;
            const st = await waitFor(async () => {
              const s = await agent.status();
              last = { counters: s.counters, gauges: s.gauges, spill: (s.pipeline as { spill?: unknown })?.spill };
              return s.counters.exported === 3 && s;
            }, 'three records exported').catch((err: unknown) => {
              throw new Error(`${String(err)}; agent: ${JSON.stringify(last)}; stderr: ${agent.stderr().slice(-2000)}`);
            });
            assert.equal(st.counters.spillReplayed, 2);
            assert.equal(st.counters.clientDropped, 0);
            const routes = fileOutput(join(dir, 'out')).lines.map((l) => (JSON.parse(l) as { route: string }).route);
            assert.deepEqual([...routes].sort(), ['/down/1', '/down/2', '/up']);
            // Restarted on the same spool: the offsets say the spill was read, nothing comes twice.
            assert.equal((await agent.stop()).code, 0);
            const again = await startAgent(writeConfig(dir, agentConfig(dir)), { ready: true });
            try {
              assertClean(await php([...PREPEND, APP], { ...base, REQUEST_URI: '/again' }));
              await waitFor(async () => (await again.status()).counters.exported >= 1, 'the new record exported');
              const c = (await again.status()).counters;
              assert.deepEqual(
                { exported: c.exported, spillReplayed: c.spillReplayed },
                { exported: 1, spillReplayed: 0 },
                `only the new record; no spilled record replayed twice (${JSON.stringify(c)})`,
              );
            } finally {
              await again.stop();
            }
          } finally {
            if (agent.child.exitCode === null) await agent.stop();
          }
        } finally {
          cleanup();
        }
      });

      test('past the spill cap records are dropped, and the drop count waits in the spill as a control line', async () => {
        const spill = dirs.path('spill-cap');
        const base = {
          SIDEKICK_AGENT_SOCKET: dirs.path('nobody.sock'),
          SIDEKICK_AGENT_SPILL_DIR: spill,
          SIDEKICK_AGENT_SPILL_MAX_BYTES: '150', // the probe (~20 bytes) fits, the request record (~200) does not
        };
        const out = join(dirs.dir, 'cap.json');
        assertClean(await php([...PREPEND, APP], { ...base, APP_TIMING_OUT: out, REQUEST_URI: '/cap' }));
        const t = readTiming(out);
        assert.equal(t.ok, true, 'the first record fits');
        const lines = spilled(spill);
        assert.deepEqual(lines[0]?.type, 'probe');
        assert.deepEqual(
          lines.slice(1),
          [{ _sidekick: 'dropped', count: 1 }],
          'the request record was dropped, counted',
        );
      });

      test('a record over 1 MiB is dropped and reported at once on the working connection', async () => {
        const listener = await Listener.start(dirs.path('huge.sock'));
        try {
          assertClean(
            await php([...PREPEND, APP], {
              SIDEKICK_AGENT_SOCKET: listener.path,
              SIDEKICK_AGENT_SPILL_DIR: dirs.path('spill-huge'),
              APP_HUGE: '1',
              REQUEST_URI: '/huge',
            }),
          );
          const lines = (await listener.settle()) as Record<string, unknown>[];
          assert.deepEqual(lines[0], { _sidekick: 'dropped', count: 1 });
          assert.deepEqual(
            lines.slice(1).map((l) => l.route),
            ['/huge'],
          );
          assert.equal(listener.accepted, 2, 'one connection for the whole request (+ the settle sentinel)');
        } finally {
          await listener.close();
        }
      });
    });
  });
}

/** The records (and control lines) in a spill directory's spill file, in order. */
function spilled(spillDir: string): Record<string, unknown>[] {
  const file = join(spillDir, 'spill.ndjson');
  if (!existsSync(file)) return [];
  const text = readFileSync(file, 'utf8');
  assert.ok(text.endsWith('\n'), 'only whole lines');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
