// Library mode tasks (HTTP worker → sidekick), in this process with taskQueue 2: requestTask round trip, sendTask
// reaching the handler, timeout, abort, a throwing handler, and the bounded queue.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { configure, requestTask, sendTask, shutdown } from 'sidekick-runtime';
import { ENTRYPOINT, readEvents, tempDir, waitFor } from './helpers/serve.ts';

const tmp = tempDir('sk-lib-tasks-');

before(() => {
  process.env.SK_TEST_DIR = tmp.dir;
  configure({ entrypoint: ENTRYPOINT, app: 'tasks', taskQueue: 2, stopGraceMs: 2000 });
});

after(async () => {
  await shutdown();
  tmp.cleanup();
});

const withCode =
  (code: string, ...patterns: RegExp[]) =>
  (err: unknown): boolean => {
    const e = err as Error & { code?: string };
    assert.equal(e.code, code, `expected ${code}, got: ${String(err)}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  };

test('requestTask round trip: the payload reaches the handler and its result comes back (starting the sidekick lazily)', async () => {
  const payload = { a: [1, 'two', { three: 3 }], s: 'NUL\u0000 😀', n: null, big: 'x'.repeat(50_000) };
  const r = (await requestTask('tasks.rt', { op: 'echo', value: payload }, { timeout: 20_000 })) as Record<
    string,
    unknown
  >;
  assert.deepEqual(r, { echo: payload, app: 'tasks', name: 'tasks.rt', generation: 0 });
});

test('sendTask (fire-and-forget) reaches the handler', async () => {
  const name = 'tasks.send';
  sendTask(name, { op: 'note', text: 'first' });
  // Tasks are handled in order: a later request sees the note (queue of 2: one send + one request in flight).
  assert.deepEqual(await requestTask(name, { op: 'notes' }, { timeout: 20_000 }), ['first']);
  sendTask(name, { op: 'note', text: 'second' });
  await waitFor('the second note to reach the handler', () =>
    readEvents(tmp.dir).some((e) => e.name === name && e.event === 'note second'),
  );
  assert.deepEqual(
    readEvents(tmp.dir)
      .filter((e) => e.name === name && e.event.startsWith('note '))
      .map((e) => e.event),
    ['note first', 'note second'],
  );
});

test('requestTask past its timeout rejects with SK_ERR_TIMEOUT naming the sidekick and the wait', async () => {
  await requestTask('tasks.slow', { op: 'echo' }, { timeout: 20_000 }); // started and ready
  await assert.rejects(
    requestTask('tasks.slow', { op: 'slow', ms: 1500 }, { timeout: 100 }),
    withCode('SK_ERR_TIMEOUT', /"tasks\.slow"/, /\b100 ms\b/),
  );
});

test('requestTask aborted by its signal rejects with SK_ERR_ABORTED (during the wait, and when already aborted)', async () => {
  await requestTask('tasks.abort', { op: 'echo' }, { timeout: 20_000 });
  const controller = new AbortController();
  const pending = requestTask('tasks.abort', { op: 'slow', ms: 1500 }, { signal: controller.signal });
  setTimeout(() => controller.abort(), 50);
  await assert.rejects(pending, withCode('SK_ERR_ABORTED', /"tasks\.abort"/));
  await assert.rejects(
    requestTask('tasks.abort', { op: 'echo' }, { signal: AbortSignal.abort() }),
    withCode('SK_ERR_ABORTED'),
  );
});

test('a throwing task handler → SK_ERR_TASK_FAILED quoting its error; the sidekick keeps serving', async () => {
  await assert.rejects(
    requestTask('tasks.throw', { op: 'throw', message: 'handler exploded 42' }, { timeout: 20_000 }),
    withCode('SK_ERR_TASK_FAILED', /handler exploded 42/, /tasks\.throw/),
  );
  const r = (await requestTask('tasks.throw', { op: 'echo', value: 'still here' })) as { echo: string };
  assert.equal(r.echo, 'still here');
});

test('taskQueue 2 with a slow handler: the 3rd concurrent task → SK_ERR_TASK_QUEUE_FULL (requestTask and sendTask)', async () => {
  const name = 'tasks.queue';
  await requestTask(name, { op: 'echo' }, { timeout: 20_000 });
  const inFlight = [requestTask(name, { op: 'slow', ms: 600 }), requestTask(name, { op: 'slow', ms: 600 })];
  await assert.rejects(requestTask(name, { op: 'echo' }), withCode('SK_ERR_TASK_QUEUE_FULL', /"tasks\.queue"/));
  assert.throws(() => sendTask(name, { op: 'note', text: 'dropped' }), withCode('SK_ERR_TASK_QUEUE_FULL'));
  assert.deepEqual(await Promise.all(inFlight), ['slow-done', 'slow-done']);
  // Slots free again once the tasks finished; the refused note never reached the handler.
  assert.deepEqual(await requestTask(name, { op: 'notes' }), []);
});

// A sidekick that publishes without having called handleTasks is taken not to handle tasks: waiting tasks fail at once.
test('a task to a sidekick that never calls handleTasks → SK_ERR_NO_TASK_HANDLER', async () => {
  await requestTask('lazy.nohandler', { op: 'echo' }, { timeout: 15_000 }).then(
    () => assert.fail('must not resolve'),
    withCode('SK_ERR_NO_TASK_HANDLER'),
  );
});
