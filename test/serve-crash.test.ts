// `sidekick serve`: one HTTP worker dies (process.exit(1) inside a request) while a keep-alive load runs. The other
// workers keep serving — every failed request was on a connection to the worker that died — and the supervisor
// replaces it (new pid, workerRestarts 1) without touching the others or the sidekicks.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { httpGet, readEvents, startLoad, startServe, tempDir, waitFor, type ServeProcess } from './helpers/serve.ts';

const tmp = tempDir('sk-serve-crash-');
let serve: ServeProcess | undefined;

after(async () => {
  await serve?.kill();
  tmp.cleanup();
});

test('a worker crash: others keep serving, the crashed one is replaced (new pid, workerRestarts 1)', async (t) => {
  const started = await startServe(
    tmp.dir,
    [{ name: 'crash', workers: 3, sidekicks: { stopGraceMs: 1000, declare: { 'gen.g': { start: 'boot' } } } }],
    { SK_TEST_READ: 'gen.g' },
  );
  serve = started.serve;
  const port = started.ports.crash!;
  const ready = await serve.waitReady((s) => serve!.sidekick(s, 'crash', 'gen.g')?.ready === true);
  const before = serve.app(ready, 'crash').workers.map((w) => w.pid);
  assert.equal(before.length, 3);

  const load = startLoad({ port, path: '/hello', concurrency: 4, maxMs: 15_000, maxRequests: 200_000 });
  try {
    await waitFor('the load to reach every worker', () =>
      before.every((pid) => (load.result.byPid.get(pid) ?? 0) > 0) ? true : undefined,
    );

    // The crash request itself gets no response: its worker exits mid-request (the request fails when its
    // connection closes, i.e. once the worker is gone).
    await assert.rejects(httpGet(port, '/crash', { timeoutMs: 10_000 }));
    const crashed = await waitFor('the crash mark', () => {
      const e = readEvents(tmp.dir).find((x) => x.app === 'http' && x.event === 'crash');
      return e ? Number(e.name) : undefined;
    });
    assert.ok(before.includes(crashed));
    const survivors = before.filter((p) => p !== crashed);
    // What each survivor had answered by the time the crash was seen: it must answer more after it.
    const answeredAtCrash = new Map(survivors.map((p) => [p, load.result.byPid.get(p) ?? 0]));

    // Replaced: three listening workers again, the two survivors untouched, one new pid.
    const replaced = await serve.waitReady(
      (s) => {
        const pids = serve!.app(s, 'crash').workers.map((w) => w.pid);
        return !pids.includes(crashed) && survivors.every((p) => pids.includes(p));
      },
      { what: 'the crashed worker to be replaced' },
    );
    const app = serve.app(replaced, 'crash');
    assert.equal(app.workerRestarts, 1);
    const fresh = app.workers.map((w) => w.pid).filter((p) => !before.includes(p));
    assert.equal(fresh.length, 1, `one new worker: ${JSON.stringify(app.workers)}`);

    // The load kept being served by the survivors after the crash.
    const servedAfter = await waitFor('survivors to answer after the crash', () =>
      survivors.every((p) => (load.result.byPid.get(p) ?? 0) > answeredAtCrash.get(p)!) ? true : undefined,
    );
    assert.ok(servedAfter);

    // New connections reach the new worker too (round-robin over fresh connections).
    const pids = new Set<number>();
    await waitFor(
      'the new worker to serve a request',
      async () => {
        const r = await httpGet(port, '/hello');
        assert.equal(r.status, 200);
        pids.add(r.pid!);
        return pids.has(fresh[0]!) ? true : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 0 },
    );
  } finally {
    load.stop();
  }
  const result = await load.done;
  assert.ok(result.ok > 0);
  assert.deepEqual(Object.keys(result.statuses), ['200'], `only 200s: ${JSON.stringify(result.statuses)}`);
  t.diagnostic(
    `load: ${result.total} requests, ${result.failures.length} failed on the crashed worker's connections: ${JSON.stringify(result.failures)}`,
  );
  const crashedPid = Number(readEvents(tmp.dir).find((x) => x.event === 'crash')!.name);
  const unrelated = result.failures.filter((f) => f.socketPid !== crashedPid);
  assert.deepEqual(unrelated, [], 'no failed request on a connection to a surviving worker');
  assert.ok(result.failures.length <= 4, `at most one failure per load connection: ${JSON.stringify(result.failures)}`);

  // The sidekick was not disturbed by the HTTP worker crash.
  const status = await serve.status();
  assert.equal(serve.sidekick(status, 'crash', 'gen.g')?.generation, 0);
  const exit = await serve.stop('SIGTERM');
  assert.equal(exit.code, 0, serve.logs());
});
