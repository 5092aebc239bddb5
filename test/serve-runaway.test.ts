// A sidekick that allocates until its thread dies cannot take `sidekick serve` down: its thread has a heap cap
// (apps[].sidekicks.maxHeapMb), the out-of-memory death is a crash like any other (restarted with backoff, generation
// + 1), the supervisor keeps answering, HTTP workers keep serving the last snapshot, and another sidekick in the same
// app is not disturbed.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { getJson, startServe, tempDir, waitFor, type ServeProcess } from './helpers/serve.ts';

const tmp = tempDir('sk-serve-runaway-');
let serve: ServeProcess | undefined;
after(async () => {
  await serve?.kill();
  tmp.cleanup();
});

test('a sidekick that allocates until it dies is restarted alone; serve and the other sidekicks go on', async () => {
  const started = await startServe(tmp.dir, [
    {
      name: 'runaway',
      workers: 2,
      sidekicks: {
        maxHeapMb: 64,
        declare: { 'hog.h': { start: 'boot' }, 'scoped.calm': { start: 'boot' } },
      },
    },
  ]);
  serve = started.serve;
  const port = started.ports.runaway!;
  await serve.waitReady();
  const status = await waitFor(
    'the hog to run out of heap twice (crash, restart, crash)',
    async () => {
      const s = await serve!.status();
      const hog = serve!.sidekick(s, 'runaway', 'hog.h');
      return hog && hog.crashes >= 2 ? s : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100 },
  );
  const hog = serve.sidekick(status, 'runaway', 'hog.h')!;
  assert.match(String(hog.lastError), /memory|heap/i, `the crash says why: ${String(hog.lastError)}`);
  assert.ok(hog.generation >= 1, 'restarted after its first death (generation + 1)');
  const calm = serve.sidekick(status, 'runaway', 'scoped.calm')!;
  assert.equal(calm.generation, 0, 'the other sidekick was never restarted');
  assert.equal(calm.crashes, 0);
  // HTTP workers still answer, with the hog's last snapshot and the calm one's.
  const r = await getJson<{ vars: { generation: string } }>(port, '/read?name=hog.h');
  assert.equal(r._status, 200);
  assert.match(r.vars.generation, /^\d+$/);
  const c = await getJson<{ vars: { app: string } }>(port, '/read?name=scoped.calm');
  assert.equal(c.vars.app, 'runaway');
  assert.equal(serve.exitInfo, undefined, 'the supervisor is still running');
});
