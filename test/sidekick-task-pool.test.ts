// Library mode tasks, complete (issue 21): the handler's signal aborts when the caller gives up (deadline, signal),
// progress values arrive in order and before the result (latest-wins), and task pools (declare.NAME.tasks): N
// threads of one entrypoint running CPU-bound tasks at once, a bounded queue, one snapshot published by thread 0, and
// a thread that dies failing only its own task while the pool recovers.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { configure, getVars, requestTask, shutdown } from 'sidekick-runtime';
import { ENTRYPOINT, readEvents, tempDir, waitFor } from './helpers/serve.ts';

const tmp = tempDir('sk-lib-pool-');

before(() => {
  process.env.SK_TEST_DIR = tmp.dir;
  configure({
    entrypoint: ENTRYPOINT,
    app: 'pool',
    stopGraceMs: 2000,
    declare: {
      'pool.cpu': { tasks: { threads: 4, queue: 10 } },
      'pool.cap': { tasks: { threads: 1, queue: 2 } },
      'pool.crash': { tasks: { threads: 2 } },
      'pool.progress': { tasks: { threads: 2 } },
    },
  });
});

after(async () => {
  await shutdown();
  tmp.cleanup();
});

const codeOf = (err: unknown): string | undefined => (err as { code?: string }).code;

/** The `cancelled <tag> <code> <message>` line the fixture writes once its handler's signal aborted. */
async function cancelledLine(tag: string): Promise<string[]> {
  const line = await waitFor(`the handler of ${tag} to see its signal abort`, () =>
    readEvents(tmp.dir).find((e) => e.event.startsWith(`cancelled ${tag} `)),
  );
  return line.event.split(' ');
}

test("requestTask past its timeout: SK_ERR_TIMEOUT for the caller, and the handler's signal aborts with it", async () => {
  // Started first: a task cancelled before its thread is up never reaches a handler (it is dropped, not run).
  await requestTask('tasks.cancel', { op: 'whoami' }, { timeout: 20_000 });
  await assert.rejects(requestTask('tasks.cancel', { op: 'wait-cancel', tag: 't1' }, { timeout: 300 }), (err) => {
    assert.equal(codeOf(err), 'SK_ERR_TIMEOUT');
    return true;
  });
  const [, , code, message] = await cancelledLine('t1');
  assert.equal(code, 'SK_ERR_TIMEOUT');
  assert.match(message!, /timed_out_after_300_ms/);
});

test("requestTask aborted by its signal: the handler's signal aborts with SK_ERR_ABORTED (also in a pool)", async () => {
  for (const [name, tag] of [
    ['tasks.cancel', 'a1'],
    ['pool.cpu', 'a2'],
  ] as const) {
    const controller = new AbortController();
    const pending = requestTask(name, { op: 'wait-cancel', tag }, { signal: controller.signal, timeout: 20_000 });
    await waitFor(`${tag} to run`, () => readEvents(tmp.dir).some((e) => e.event === `waiting ${tag}`));
    controller.abort();
    await assert.rejects(pending, (err) => codeOf(err) === 'SK_ERR_ABORTED');
    const [, , code] = await cancelledLine(tag);
    assert.equal(code, 'SK_ERR_ABORTED', `${name}: the handler learned why`);
  }
});

test('progress in a tight loop: latest-wins, in order, the last value before the result', async () => {
  // The handler never yields, so the thread cannot take an ack: the first value goes, each later one replaces the
  // waiting one, and the last waiting one goes before the result. Memory: two values, not 10 000 messages.
  for (const name of ['tasks.progress', 'pool.progress']) {
    const seen: unknown[] = [];
    let resolved = false;
    const result = await requestTask(
      name,
      { op: 'progress', n: 10_000 },
      { timeout: 20_000, onProgress: (v) => seen.push(resolved ? `late ${String(v)}` : v) },
    );
    resolved = true;
    assert.equal(result, 'progress-done');
    assert.deepEqual(seen, [1, 10_000], name);
  }
});

test('progress that yields between values: strictly increasing, ends with the last value, then the result', async () => {
  const seen: number[] = [];
  let resolved = false;
  await requestTask(
    'pool.progress',
    { op: 'progress', n: 200, every: 1 },
    {
      timeout: 20_000,
      onProgress: (v) => {
        assert.equal(resolved, false, 'no progress after the result');
        seen.push(v as number);
      },
    },
  );
  resolved = true;
  assert.ok(seen.length >= 2, `got ${seen.length} values`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i]! > seen[i - 1]!, `in order: ${seen.join(',')}`);
  assert.equal(seen.at(-1), 200);
  // A listener that is not asked for costs nothing: the same task without onProgress.
  assert.equal(await requestTask('pool.progress', { op: 'progress', n: 50 }), 'progress-done');
});

test('a pool of 4 runs 4 CPU-bound tasks at once: each sees the other 3 begin, and their run intervals overlap', async () => {
  // Each handler spins without yielding until all 4 have begun (or 20 s): one thread at a time could never get there.
  const results = (await Promise.all(
    Array.from({ length: 4 }, () => requestTask('pool.cpu', { op: 'spin', tag: 'cpu4', n: 4 }, { timeout: 60_000 })),
  )) as { thread: number; start: number; end: number; sawAll: boolean }[];
  assert.deepEqual(
    results.map((r) => r.sawAll),
    [true, true, true, true],
  );
  assert.deepEqual(new Set(results.map((r) => r.thread)), new Set([0, 1, 2, 3]), 'one task per thread');
  const lastStart = Math.max(...results.map((r) => r.start));
  const firstEnd = Math.min(...results.map((r) => r.end));
  assert.ok(lastStart < firstEnd, `every task began before any ended (${lastStart} < ${firstEnd})`);
});

test('only thread 0 of a pool publishes; setVars elsewhere throws SK_ERR_VARS_NOT_PUBLISHER', async () => {
  const vars = await getVars('pool.cpu', { timeout: 20_000 });
  assert.equal(vars.generation, '0');
  // 4 tasks that wait for each other: one per thread.
  const all = (await Promise.all(
    Array.from({ length: 4 }, () => requestTask('pool.cpu', { op: 'set-here', tag: 'pub', n: 4 }, { timeout: 20_000 })),
  )) as { thread: number; code: string | null }[];
  const seen = new Map(all.map((r) => [r.thread, r]));
  assert.equal(seen.size, 4, 'one task per thread');
  assert.equal(seen.get(0)!.code, null);
  for (const t of [1, 2, 3]) assert.equal(seen.get(t)!.code, 'SK_ERR_VARS_NOT_PUBLISHER', `thread ${t}`);
  const who = (await requestTask('pool.cpu', { op: 'whoami' })) as { env: string; thread: number };
  assert.equal(who.env, String(who.thread), 'SIDEKICK_THREAD');
});

test('the pool queue holds: 1 thread busy + 2 waiting, the next one → SK_ERR_TASK_QUEUE_FULL; the waiting ones run', async () => {
  const name = 'pool.cap';
  const running = requestTask(name, { op: 'gate', tag: 'cap' }, { timeout: 30_000 });
  await waitFor('the gate task to run', () => readEvents(tmp.dir).some((e) => e.event === 'gate-wait cap'));
  const waiting = [
    requestTask(name, { op: 'whoami' }, { timeout: 30_000 }),
    requestTask(name, { op: 'whoami' }, { timeout: 30_000 }),
  ];
  await assert.rejects(requestTask(name, { op: 'whoami' }), (err) => {
    assert.equal(codeOf(err), 'SK_ERR_TASK_QUEUE_FULL');
    assert.match((err as Error).message, /pool\.cap/);
    assert.match((err as Error).message, /tasks\.queue/);
    return true;
  });
  writeFileSync(join(tmp.dir, 'gate-cap'), '');
  assert.deepEqual(await running, { gate: 'cap', thread: 0, generation: 0 });
  assert.equal(((await waiting[0]) as { thread: number }).thread, 0);
  assert.equal(((await waiting[1]) as { thread: number }).thread, 0);
});

test('a thread that dies fails only its own task (SK_ERR_TASK_CRASHED); the other thread goes on; the pool recovers', async () => {
  const name = 'pool.crash';
  await requestTask(name, { op: 'whoami' }, { timeout: 20_000 });
  const other = requestTask(name, { op: 'gate', tag: 'crash' }, { timeout: 30_000 });
  await waitFor('the gate task to run', () => readEvents(tmp.dir).some((e) => e.event === 'gate-wait crash'));
  await assert.rejects(requestTask(name, { op: 'die' }, { timeout: 20_000 }), (err) => {
    assert.equal(codeOf(err), 'SK_ERR_TASK_CRASHED', String(err));
    assert.match((err as Error).message, /thread \d died on purpose/);
    return true;
  });
  writeFileSync(join(tmp.dir, 'gate-crash'), '');
  const survived = (await other) as { thread: number };
  const died = readEvents(tmp.dir).find((e) => e.name === name && e.event.startsWith('dying '))!;
  assert.notEqual(String(survived.thread), died.event.split(' ')[1], 'the other thread finished its task');
  // Replaced: two tasks at once run on both threads again, the replaced one at generation 1 (the second task waits
  // in the queue until the new thread is up).
  const both = [0, 1].map(() => requestTask(name, { op: 'gate', tag: 'recover' }, { timeout: 30_000 }));
  await waitFor(
    'both tasks to run',
    () => readEvents(tmp.dir).filter((e) => e.event === 'gate-wait recover').length === 2,
  );
  writeFileSync(join(tmp.dir, 'gate-recover'), '');
  const answers = (await Promise.all(both)) as { thread: number; generation: number }[];
  assert.deepEqual(answers.map((a) => a.thread).sort(), [0, 1]);
  assert.deepEqual(answers.map((a) => a.generation).sort(), [0, 1], 'one thread was replaced (generation 1)');
});
