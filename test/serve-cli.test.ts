// The CLI around `serve`: `sidekick check` (0 for a good config; 78 naming the bad field otherwise, and `serve` exits
// 78 on the same configs), `sidekick status` / `sidekick vars` with nothing running (SK_ERR_ADMIN_UNREACHABLE), and
// `serve` on an address already in use (SK_ERR_LISTEN). Reading a running instance is in serve-sidekicks.test.ts.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  FIXTURES,
  HANDLER,
  ENTRYPOINT,
  freePort,
  processesOfTestDir,
  runCli,
  tempDir,
  waitFor,
  writeServeConfig,
} from './helpers/serve.ts';

const tmp = tempDir('sk-cli-');
after(() => tmp.cleanup());

const GOOD = join(FIXTURES, 'check-good.config.json');

function app(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'a',
    listen: '127.0.0.1:18081',
    handler: HANDLER,
    workers: 1,
    sidekicks: { entrypoint: ENTRYPOINT },
    ...overrides,
  };
}

/** Writes a config file into the temp dir. */
function configFile(name: string, content: unknown): string {
  const file = join(tmp.dir, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

test('sidekick check: a good config exits 0', async () => {
  const r = await runCli(['check', '-c', GOOD]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /OK/);
  assert.match(r.stdout, /1 app/);
});

const BAD: { name: string; content: unknown; field: RegExp; code: string }[] = [
  {
    name: 'workers-zero',
    content: { apps: [app({ workers: 0 })] },
    field: /apps\[0\]\.workers/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  {
    name: 'bad-listen',
    content: { apps: [app({ listen: 'not an address' })] },
    field: /apps\[0\]\.listen/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  {
    name: 'unknown-field',
    content: { apps: [app({ sidekicks: { entrypoint: ENTRYPOINT, maxLazzy: 3 } })] },
    field: /apps\[0\]\.sidekicks.*"maxLazzy"/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  {
    name: 'bad-sidekick-name',
    content: { apps: [app({ sidekicks: { entrypoint: ENTRYPOINT, declare: { 'bad name': {} } } })] },
    field: /apps\[0\]\.sidekicks\.declare/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  {
    name: 'bad-every',
    content: { apps: [app({ sidekicks: { entrypoint: ENTRYPOINT, declare: { f: { every: 'often' } } } })] },
    field: /apps\[0\]\.sidekicks\.declare\.f\.every/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  {
    name: 'pool-threads-zero',
    content: { apps: [app({ sidekicks: { entrypoint: ENTRYPOINT, declare: { r: { tasks: { threads: 0 } } } } })] },
    field: /apps\[0\]\.sidekicks\.declare\.r\.tasks\.threads/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  {
    name: 'pool-unknown-field',
    content: { apps: [app({ sidekicks: { entrypoint: ENTRYPOINT, declare: { r: { tasks: { thread: 4 } } } } })] },
    field: /apps\[0\]\.sidekicks\.declare\.r\.tasks.*"thread"/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  {
    name: 'pool-on-a-source',
    content: {
      apps: [
        app({ sidekicks: { declare: { r: { source: { type: 'file', path: '/x.json' }, tasks: { threads: 2 } } } } }),
      ],
    },
    field: /apps\[0\]\.sidekicks\.declare\.r\.tasks: a built-in source takes no tasks/,
    code: 'SK_ERR_CONFIG_INVALID',
  },
  { name: 'duplicate-app', content: { apps: [app(), app()] }, field: /apps\[1\]\.name/, code: 'SK_ERR_CONFIG_INVALID' },
  { name: 'not-json', content: '{ "apps": [', field: /not-json/, code: 'SK_ERR_CONFIG_LOAD' },
];

for (const bad of BAD) {
  test(`sidekick check / serve: ${bad.name} → exit 78 naming the field`, async () => {
    const file = configFile(`${bad.name}.json`, bad.content);
    const [check, serve] = await Promise.all([
      runCli(['check', '-c', file]),
      runCli(['serve', '-c', file], { timeoutMs: 15_000 }),
    ]);
    for (const [cmd, r] of [
      ['check', check],
      ['serve', serve],
    ] as const) {
      assert.equal(r.code, 78, `${cmd}: exit status\n${r.stderr}`);
      assert.match(r.stderr, new RegExp(bad.code), cmd);
      assert.match(r.stderr, bad.field, `${cmd} names the field: ${r.stderr}`);
    }
  });
}

test('sidekick check: a missing file → 78 SK_ERR_CONFIG_NOT_FOUND', async () => {
  const r = await runCli(['check', '-c', join(tmp.dir, 'nope.json')]);
  assert.equal(r.code, 78);
  assert.match(r.stderr, /SK_ERR_CONFIG_NOT_FOUND/);
  assert.match(r.stderr, /nope\.json/);
});

test('sidekick status / vars with nothing running → SK_ERR_ADMIN_UNREACHABLE (exit 1)', async () => {
  const [status, vars] = await Promise.all([
    runCli(['status', '-c', GOOD]),
    runCli(['vars', 'good/gen.g', '-c', GOOD]),
  ]);
  for (const r of [status, vars]) {
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /SK_ERR_ADMIN_UNREACHABLE/);
    assert.match(r.stderr, /never-started-admin\.sock/);
    assert.equal(r.stdout, '');
  }
  const usage = await runCli(['vars', 'no-slash', '-c', GOOD]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /APP\/NAME/);
});

test('sidekick serve on an address in use → SK_ERR_LISTEN, non-zero exit, nothing left running', async () => {
  const port = await freePort();
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', () => resolve()));
  try {
    const dir = join(tmp.dir, 'listen');
    mkdirSync(dir);
    const { file } = await writeServeConfig(dir, [{ name: 'busy', port, workers: 2 }]);
    const r = await runCli(['serve', '-c', file], { timeoutMs: 40_000, env: { SK_TEST_DIR: dir } });
    assert.equal(r.timedOut, false, 'serve gave up on its own');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /SK_ERR_LISTEN/);
    assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${port}`));
    // No HTTP worker outlives its supervisor.
    await waitFor('no process of this test left running', () => processesOfTestDir(dir).length === 0, {
      timeoutMs: 10_000,
    }).catch((err: Error) => {
      const left = processesOfTestDir(dir);
      for (const pid of left) process.kill(pid, 'SIGKILL');
      throw new Error(`${err.message}: left behind ${left.join(', ')}`);
    });
  } finally {
    blocker.close();
  }
});
