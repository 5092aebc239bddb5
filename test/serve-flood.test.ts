// A sidekick that publishes 100 KB snapshots in a tight loop (a bug in user code) must not sink `sidekick serve`:
// snapshots are latest-wins end to end (one in flight and one waiting per sidekick, thread → supervisor → each HTTP
// worker), so the supervisor's memory stays bounded, HTTP workers keep answering, and every worker ends up with the
// latest snapshot. Before latest-wins the supervisor grew by ~300 MB/s and stopped answering.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { getJson, readEvents, startLoad, startServe, tempDir, waitFor, type ServeProcess } from './helpers/serve.ts';

const tmp = tempDir('sk-serve-flood-');
let serve: ServeProcess | undefined;
after(async () => {
  await serve?.kill();
  tmp.cleanup();
});

/** Resident memory of a process, in MB, from /proc. */
function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

test('a sidekick publishing 100 KB snapshots in a loop: bounded supervisor memory, workers answer, latest wins', async () => {
  const COUNT = 3000; // 300 MB of snapshots, as fast as the thread can produce them
  const started = await startServe(
    tmp.dir,
    [{ name: 'flood', workers: 2, sidekicks: { declare: { 'flood.f': { start: 'boot' } } } }],
    { SK_FLOOD_COUNT: String(COUNT) },
  );
  serve = started.serve;
  const port = started.ports.flood!;
  await serve.waitReady();
  const load = startLoad({ port, path: '/hello', concurrency: 4, maxMs: 60_000, maxRequests: 1_000_000 });
  let maxRss = 0;
  try {
    await waitFor(
      'the flood to end',
      () => {
        maxRss = Math.max(maxRss, rssMb(serve!.pid));
        return readEvents(tmp.dir).some((e) => e.event === 'flood-done') ? true : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 20 },
    );
    // Every HTTP worker converges on the final snapshot.
    const seen = new Map<number, string>();
    await waitFor(
      'every HTTP worker to read the final snapshot',
      async () => {
        const r = await getJson<{ pid: number; vars: { seq: string } }>(port, '/vars?name=flood.f');
        seen.set(r.pid, r.vars.seq);
        return seen.size === 2 && [...seen.values()].every((v) => v === 'done') ? true : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 20 },
    );
  } finally {
    load.stop();
  }
  const result = await load.done;
  console.log(
    `[flood] ${COUNT} × 100 KB published; supervisor RSS max ${maxRss.toFixed(0)} MB; ` +
      `${result.ok} requests answered during the flood, ${result.failures.length} failed`,
  );
  assert.equal(result.failures.length, 0, 'no request failed');
  assert.ok(result.ok > 0, 'HTTP workers kept answering during the flood');
  assert.ok(maxRss < 600, `supervisor RSS stayed bounded (max ${maxRss.toFixed(0)} MB for 300 MB published)`);
  assert.ok(
    /publishes faster than its snapshots can be delivered/.test(serve.stderr),
    'the skipped snapshots are logged (rate-limited)',
  );
});
