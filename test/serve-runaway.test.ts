// A sidekick that allocates until its thread dies cannot take `sidekick serve` down: its thread has a heap cap
// (apps[].sidekicks.maxHeapMb), the out-of-memory death is a crash like any other (restarted with backoff, generation
// + 1), the supervisor keeps answering, HTTP workers under load keep serving the last snapshot with no failed
// request, another sidekick in the same app is not disturbed, the app's sidekick host process survives (the thread
// died alone), another app is untouched, and the counters and the timeline say what happened. Many small allocations
// here, with maxHeapMb 64 and with the default (512); the large-array case that aborts the whole host process is in
// serve-host.test.ts (issue 17, Tests).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  adminGet,
  getJson,
  startLoad,
  startServe,
  tempDir,
  waitFor,
  type ServeProcess,
  type StatusJson,
} from './helpers/serve.ts';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const tmp = tempDir('sk-serve-runaway-');
const serves: ServeProcess[] = [];
after(async () => {
  await Promise.all(serves.map((s) => s.kill()));
  tmp.cleanup();
});

interface HostJson {
  pid: number | undefined;
  restarts: number;
}
const hostOf = (s: StatusJson, app: string): HostJson =>
  (s.apps.find((a) => a.name === app) as unknown as { sidekickHost: HostJson }).sidekickHost;

for (const maxHeapMb of [64, undefined]) {
  const label = maxHeapMb === undefined ? 'the default maxHeapMb (512)' : `maxHeapMb ${maxHeapMb}`;
  test(`${label}: a sidekick that allocates until it dies is restarted alone; serve, its host, the other sidekicks and requests under load go on`, async (t) => {
    const dir = join(tmp.dir, `heap-${maxHeapMb ?? 'default'}`);
    mkdirSync(dir);
    const started = await startServe(dir, [
      {
        name: 'runaway',
        workers: 2,
        sidekicks: {
          ...(maxHeapMb === undefined ? {} : { maxHeapMb }),
          declare: { 'hog.h': { start: 'boot' }, 'scoped.calm': { start: 'boot' } },
        },
      },
      { name: 'bystander', workers: 1, sidekicks: { declare: { 'scoped.calm': { start: 'boot' } } } },
    ]);
    const serve = started.serve;
    serves.push(serve);
    const port = started.ports.runaway!;
    const first = await serve.waitReady(
      (s) =>
        Boolean(serve.sidekick(s, 'runaway', 'scoped.calm')?.ready) &&
        Boolean(serve.sidekick(s, 'bystander', 'scoped.calm')?.ready) &&
        Boolean(hostOf(s, 'runaway').pid),
    );
    const hostPid = hostOf(first, 'runaway').pid!;
    const bystanderHost = hostOf(first, 'bystander').pid!;
    // The load starts once both HTTP workers hold scoped.calm's first snapshot (before it, SK_ERR_NOT_READY by contract).
    const answered = new Set<number>();
    await waitFor('both runaway workers to read scoped.calm', async () => {
      const r = await getJson<{ pid: number }>(port, '/read?name=scoped.calm');
      if (r._status === 200) answered.add(r.pid);
      return answered.size >= 2;
    });
    const load = startLoad({ port, path: '/read?name=scoped.calm', concurrency: 4, maxMs: 120_000 });
    let status: StatusJson;
    try {
      status = await waitFor(
        'the hog to run out of heap twice (crash, restart, crash)',
        async () => {
          const s = await serve.status();
          const hog = serve.sidekick(s, 'runaway', 'hog.h');
          return hog && hog.crashes >= 2 ? s : undefined;
        },
        { timeoutMs: 90_000, intervalMs: 100 },
      );
    } finally {
      load.stop();
    }
    const r = await load.done;
    assert.ok(r.total > 0, 'the load ran');
    assert.deepEqual(r.failures, [], 'no request failed while the hog died and restarted');
    assert.equal(r.ok, r.total, `every request was answered 200 (${JSON.stringify(r.statuses)})`);

    const hog = serve.sidekick(status, 'runaway', 'hog.h')!;
    t.diagnostic(
      `${label}: ${r.ok}/${r.total} requests answered 200 while hog.h died ${hog.crashes} times ` +
        `(generation ${hog.generation}); host pid unchanged, host restarts ${hostOf(status, 'runaway').restarts}`,
    );
    assert.match(String(hog.lastError), /memory|heap/i, `the crash says why: ${String(hog.lastError)}`);
    assert.ok(hog.generation >= 1, 'restarted after its first death (generation + 1)');
    const calm = serve.sidekick(status, 'runaway', 'scoped.calm')!;
    assert.equal(calm.generation, 0, 'the other sidekick was never restarted');
    assert.equal(calm.crashes, 0);
    // The thread died alone: its host process is the same one, never restarted.
    assert.equal(hostOf(status, 'runaway').pid, hostPid, 'the sidekick host process survived');
    assert.equal(hostOf(status, 'runaway').restarts, 0);
    // Another app: same host, same generation.
    assert.equal(hostOf(status, 'bystander').pid, bystanderHost);
    assert.equal(serve.sidekick(status, 'bystander', 'scoped.calm')!.generation, 0);
    // The timeline says what happened: the hog's crashes, no host death.
    const timeline = await adminGet<{ kind: string; app?: string; sidekick?: string }[]>(serve.adminSocket, '/events');
    assert.ok(
      timeline.filter((e) => e.kind === 'sidekick_crashed' && e.app === 'runaway' && e.sidekick === 'hog.h').length >=
        2,
      `the timeline shows the hog's crashes: ${JSON.stringify(timeline.map((e) => [e.kind, e.app, e.sidekick]))}`,
    );
    assert.ok(
      timeline.every((e) => e.kind !== 'sidekick_host_died'),
      'no host died',
    );
    // HTTP workers still answer, with the hog's last snapshot.
    const h = await getJson<{ vars: { generation: string } }>(port, '/read?name=hog.h');
    assert.equal(h._status, 200);
    assert.match(h.vars.generation, /^\d+$/);
    assert.equal(serve.exitInfo, undefined, 'the supervisor is still running');
    assert.equal((await serve.stop()).code, 0);
  });
}
