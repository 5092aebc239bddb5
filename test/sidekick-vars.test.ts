// Library mode, in this process: sidekicks run in worker threads of the test process (entrypoint set by configure).
// Covers: first read blocks until the first publish; snapshot identity; parallel start with one shared deadline;
// timeout errors; binary-safe values; sidekick-only calls outside a sidekick; crash → restart while readers keep the
// last snapshot. Each test uses its own sidekick names (the part before "." picks the fixture's behaviour).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  configure,
  getVars,
  handleTasks,
  onVars,
  peekVars,
  readVars,
  requestTask,
  sendTask,
  setVars,
  shouldStop,
  shutdown,
  stopSignal,
  type Vars,
} from 'sidekick-runtime';
import { BINARY_VARS } from './fixtures/serve/binary-values.mjs';
import { ENTRYPOINT, readEvents, tempDir, waitFor } from './helpers/serve.ts';

const tmp = tempDir('sk-lib-vars-');

before(() => {
  process.env.SK_TEST_DIR = tmp.dir; // inherited by the sidekick threads
  configure({ entrypoint: ENTRYPOINT, app: 'lib', maxLazy: 100, stopGraceMs: 2000 });
});

after(async () => {
  await shutdown();
  tmp.cleanup();
});

const codeOf = (code: string) => (err: unknown) => {
  assert.equal((err as { code?: string }).code, code, `expected ${code}, got: ${String(err)}`);
  return true;
};

function nextSnapshot(name: string): Promise<Vars> {
  return new Promise((resolve) => {
    const off = onVars(name, (vars) => {
      off();
      resolve(vars);
    });
  });
}

test('first read blocks until the first publish; readVars before it throws SK_ERR_NOT_READY', async () => {
  const name = 'delayed.first';
  assert.throws(() => readVars(name), codeOf('SK_ERR_NOT_READY'));
  const pending = getVars(name, { timeout: 20_000 });
  assert.throws(() => readVars(name), codeOf('SK_ERR_NOT_READY')); // started, not yet published
  assert.equal(peekVars(name), undefined, 'peekVars: the non-throwing read');
  const vars = await pending;
  assert.equal(peekVars(name), vars);
  assert.equal(vars.name, name);
  assert.equal(vars.app, 'lib');
  assert.equal(vars.generation, '0');
  assert.equal(vars.envName, name, 'process.env.SIDEKICK_NAME holds the name');
  assert.equal(vars.argvName, name, 'process.argv[2] holds the name');
  assert.equal(readVars(name), vars);
  const events = readEvents(tmp.dir).filter((e) => e.name === name);
  assert.deepEqual(
    events.map((e) => e.event),
    ['start', 'publish'],
  );
  // Once ready, getVars resolves at once with the same snapshot.
  assert.equal(await getVars(name), vars);
});

test('readVars returns the identical frozen object until the next publish, then a new one', async () => {
  const name = 'tasks.identity';
  const first = await getVars(name, { timeout: 20_000 });
  const a = readVars(name);
  const b = readVars(name);
  assert.equal(a, b, 'same object (===) on repeated reads');
  assert.equal(a, first);
  assert.ok(Object.isFrozen(a));
  assert.throws(() => {
    (a as Record<string, string>).generation = 'mutated';
  }, TypeError);
  assert.equal(Object.getPrototypeOf(a), null, 'null prototype: keys are plain data');

  let notified = 0;
  const off = onVars(name, () => notified++);
  await requestTask(name, { op: 'set', vars: { v: '2' } });
  const c = readVars(name);
  assert.notEqual(c, a, 'a publish gives a new object');
  assert.deepEqual({ ...c }, { v: '2' });
  assert.equal(a.generation, '0', 'the old snapshot is untouched');
  assert.equal(readVars(name), c);
  assert.equal(notified, 1);

  // Identical content again: no new snapshot, no notification.
  await requestTask(name, { op: 'set', vars: { v: '2' } });
  assert.equal(readVars(name), c);
  assert.equal(notified, 1);
  off();
});

test('getVars([a, b]) starts both in parallel and resolves with both, keyed by name', async () => {
  const [a, b] = ['delayed.par-a', 'delayed.par-b'];
  const result = await getVars([a, b], { timeout: 20_000 });
  assert.deepEqual(Object.keys(result).sort(), [a, b]);
  assert.equal(result[a]!.name, a);
  assert.equal(result[b]!.name, b);
  const events = readEvents(tmp.dir).filter((e) => e.name === a || e.name === b);
  const firstPublish = events.findIndex((e) => e.event === 'publish');
  const starts = events.map((e, i) => (e.event === 'start' ? i : -1)).filter((i) => i >= 0);
  assert.equal(starts.length, 2, JSON.stringify(events));
  assert.ok(
    starts.every((i) => i < firstPublish),
    `both sidekicks must start before either publishes (parallel start): ${JSON.stringify(events)}`,
  );
});

test('getVars([a, never]) rejects at the shared deadline with SK_ERR_TIMEOUT naming only the missing sidekick', async () => {
  const [ok, never] = ['lazy.dl-ok', 'never.dl']; // lazy.* publishes as soon as it starts
  // published first (bounded generously): on a loaded machine its thread may take longer than the 3 s deadline to boot
  await getVars(ok, { timeout: 30_000 });
  const err = await getVars([ok, never], { timeout: 3000 }).then(
    () => assert.fail('must not resolve'),
    (e: unknown) => e as Error & { code: string; details: { names: string[]; timeoutMs: number } },
  );
  assert.equal(err.code, 'SK_ERR_TIMEOUT');
  assert.deepEqual(err.details.names, [never]);
  assert.equal(err.details.timeoutMs, 3000);
  assert.match(err.message, /"never\.dl"/);
  assert.doesNotMatch(err.message, /dl-ok/, 'the sidekick that published is not blamed');
  // The one that published is readable; the array call did not cancel it.
  assert.equal(readVars(ok).name, ok);
});

test('the timeout error names the sidekick, the app and the wait in ms; a negative timeout is a RangeError', async () => {
  await assert.rejects(getVars('never.t5', { timeout: 150 }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_TIMEOUT');
    assert.match(err.message, /"never\.t5"/);
    assert.match(err.message, /"lib"/);
    assert.match(err.message, /\b150 ms\b/);
    return true;
  });
  await assert.rejects(getVars('never.t5', { timeout: -1 }), RangeError);
  await assert.rejects(getVars(['never.t5'], { timeout: -5 }), RangeError);
  await assert.rejects(getVars('never.t5', { timeout: Number.NaN }), RangeError);
  await assert.rejects(requestTask('tasks.t5', {}, { timeout: -1 }), RangeError);
  // timeout 0 is allowed: an already-published sidekick still resolves.
  await getVars('delayed.first', { timeout: 0 });
});

test('binary-safe values (NUL, UTF-8, emoji, empty, ~114 KB) arrive byte for byte; identical re-publish is a no-op', async () => {
  const name = 'binary.lib';
  const vars = await getVars(name, { timeout: 20_000 });
  assert.deepEqual(Object.keys(vars).sort(), Object.keys(BINARY_VARS).sort());
  for (const [k, v] of Object.entries(BINARY_VARS)) {
    assert.ok(Object.hasOwn(vars, k), `key ${JSON.stringify(k)} present`);
    assert.ok(Buffer.from(vars[k]!, 'utf8').equals(Buffer.from(v, 'utf8')), `value of ${JSON.stringify(k)} byte-exact`);
  }
  assert.equal(vars.empty, '');
  assert.equal(vars.onlyNul, '\u0000');

  let notified = 0;
  const off = onVars(name, () => notified++);
  assert.equal(await requestTask(name, { op: 'republish' }), 'republished');
  assert.equal(readVars(name), vars, 'same snapshot object after an identical publish');
  assert.equal(notified, 0, 'onVars not called for identical content');
  off();
});

test('setVars with a non-string value → SK_ERR_VARS_INVALID; over maxVarsBytes → SK_ERR_VARS_TOO_LARGE (in the sidekick)', async () => {
  const name = 'tasks.invalid';
  const before = await getVars(name, { timeout: 20_000 });
  for (const vars of [{ a: 1 }, { a: null }, { a: { nested: 'x' } }, 'a string', null, ['x']]) {
    const r = (await requestTask(name, { op: 'set-invalid', vars })) as { code: string; message: string };
    assert.equal(r.code, 'SK_ERR_VARS_INVALID', `setVars(${JSON.stringify(vars)})`);
    assert.match(r.message, /tasks\.invalid/);
  }
  const big = (await requestTask(name, { op: 'set-big', bytes: 1024 * 1024 + 1 })) as { code: string; message: string };
  assert.equal(big.code, 'SK_ERR_VARS_TOO_LARGE');
  assert.match(big.message, /1048576/);
  const fits = (await requestTask(name, { op: 'set-big', bytes: 512 * 1024 })) as { code: string | null };
  assert.equal(fits.code, null, 'a snapshot under the cap is accepted');
  assert.notEqual(readVars(name), before);
  assert.equal(readVars(name).big?.length, 512 * 1024);
});

test('setVars, shouldStop, handleTasks and stopSignal outside a sidekick throw SK_ERR_NOT_IN_SIDEKICK', () => {
  const notIn = codeOf('SK_ERR_NOT_IN_SIDEKICK');
  assert.throws(() => setVars({ a: 'b' }), notIn);
  assert.throws(() => shouldStop(), notIn);
  assert.throws(() => handleTasks(() => 1), notIn);
  assert.throws(() => stopSignal.aborted, notIn);
  assert.throws(() => stopSignal.addEventListener('abort', () => {}), notIn);
});

test('invalid names → SK_ERR_INVALID_NAME from every entry point', async () => {
  const bad = ['', 'has space', '-leading-dash', '.dot', 'a/b', 'é', 'x'.repeat(129), 'semi;colon'];
  for (const name of bad) {
    await assert.rejects(getVars(name, { timeout: 100 }), codeOf('SK_ERR_INVALID_NAME'), JSON.stringify(name));
    assert.throws(() => onVars(name, () => {}), codeOf('SK_ERR_INVALID_NAME'));
    assert.throws(() => sendTask(name, {}), codeOf('SK_ERR_INVALID_NAME'));
    await assert.rejects(requestTask(name, {}), codeOf('SK_ERR_INVALID_NAME'));
  }
  await assert.rejects(getVars(['delayed.first', 'bad name']), codeOf('SK_ERR_INVALID_NAME'));
  // The longest valid name (128 characters) is accepted.
  assert.ok(await getVars(`lazy.${'x'.repeat(123)}`, { timeout: 20_000 }));
});

test('crash → restart (generation + 1): readVars keeps the last snapshot meanwhile; onVars gets the new one', async () => {
  const name = 'tasks.crashy';
  const gen0 = await getVars(name, { timeout: 20_000 });
  assert.equal(gen0.generation, '0');
  const next = nextSnapshot(name);
  assert.equal(await requestTask(name, { op: 'crash' }), 'crashing');
  // Generation 1 boots and waits 700 ms before publishing: the restart window.
  await waitFor('generation 1 to start', () =>
    readEvents(tmp.dir).some((e) => e.name === name && e.generation === '1' && e.event === 'start'),
  );
  assert.equal(readVars(name), gen0, 'the last snapshot is served during the restart');
  const gen1 = await next;
  assert.equal(gen1.generation, '1');
  assert.equal(gen1.previous, '0', 'ctx.previousVars carries the last snapshot across the restart');
  assert.equal(readVars(name), gen1);
  assert.equal(await getVars(name), gen1);
  // The restarted sidekick serves tasks again.
  const echo = (await requestTask(name, { op: 'echo', value: 1 })) as { generation: number };
  assert.equal(echo.generation, 1);
});

test('a crash whose restart republishes identical content notifies nobody and keeps the snapshot object', async () => {
  const name = 'binary.restart';
  const vars = await getVars(name, { timeout: 20_000 });
  let notified = 0;
  const off = onVars(name, () => notified++);
  await requestTask(name, { op: 'crash' });
  await waitFor('generation 1 to publish', () =>
    readEvents(tmp.dir).some((e) => e.name === name && e.generation === '1' && e.event === 'published'),
  );
  // A task round trip to generation 1 orders after its publish message.
  const echo = (await requestTask(name, { op: 'echo', value: 0 })) as { generation: number };
  assert.equal(echo.generation, 1);
  assert.equal(readVars(name), vars);
  assert.equal(notified, 0);
  off();
});
