// Coalesced runs (src/common/coalesce.ts), the rule behind every reload: one run at a time; requests during a run
// become exactly one more run after it, never dropped; a stop lets the current run finish and skips a queued one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Coalesced } from '../src/common/coalesce.ts';

/** A job whose runs the test ends one by one. */
function gatedJob(): { job: () => Promise<void>; runs: number; finish: (err?: Error) => void } {
  const gates: ((err?: Error) => void)[] = [];
  const state = {
    runs: 0,
    job: (): Promise<void> => {
      state.runs++;
      return new Promise<void>((resolve, reject) => gates.push((err) => (err ? reject(err) : resolve())));
    },
    finish: (err?: Error): void => gates.shift()!(err),
  };
  return state;
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('requests during a run: exactly one more run after it; a later request starts its own', async () => {
  const g = gatedJob();
  const queued: boolean[] = [];
  const c = new Coalesced(g.job, (first) => queued.push(first));
  const first = c.request();
  await tick();
  assert.equal(g.runs, 1);
  const during = [c.request(), c.request(), c.request(), c.request()];
  assert.deepEqual(queued, [true, false, false, false], 'one request queued the next run, three joined it');
  assert.equal(g.runs, 1, 'nothing runs beside the current run');
  g.finish();
  await first;
  await tick();
  assert.equal(g.runs, 2, 'the queued run started once the first finished');
  assert.ok(c.busy);
  g.finish();
  await Promise.all(during);
  assert.equal(g.runs, 2);
  assert.equal(c.busy, false);
  const later = c.request();
  await tick();
  assert.equal(g.runs, 3);
  g.finish();
  await later;
});

test('a failed run rejects its own requesters only; the queued run still runs', async () => {
  const g = gatedJob();
  const c = new Coalesced(g.job);
  const first = c.request();
  await tick();
  const next = c.request();
  g.finish(new Error('run 1 failed'));
  await assert.rejects(first, /run 1 failed/);
  await tick();
  assert.equal(g.runs, 2);
  g.finish();
  await next;
});

test('close(): the current run finishes, a queued one is skipped, later requests do nothing', async () => {
  const g = gatedJob();
  const c = new Coalesced(g.job);
  void c.request();
  await tick();
  const queued = c.request();
  const closed = c.close();
  g.finish();
  await closed;
  await queued;
  assert.equal(g.runs, 1);
  await c.request();
  assert.equal(g.runs, 1);
  assert.equal(c.busy, false);
});
