// `sidekick serve` end to end, one running instance with two apps: alpha (4 HTTP workers) and beta (1 worker,
// maxLazy 2). Real HTTP on 127.0.0.1, real IPC, sidekicks in the supervisor's threads.
// Covers: at-most-once start across workers, per-app scopes, binary-safe vars through IPC, boot-failure errors over
// HTTP, the lazy cap and invalid names, tasks, and `sidekick status` / `sidekick vars` against the running instance.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BINARY_VARS } from './fixtures/serve/binary-values.mjs';
import {
  ENTRYPOINT,
  getJson,
  httpGet,
  readEvents,
  runCli,
  startServe,
  tempDir,
  waitFor,
  type ServeProcess,
} from './helpers/serve.ts';

const tmp = tempDir('sk-serve-sk-');
let serve: ServeProcess;
let alpha: number;
let beta: number;
let configFile: string;

before(async () => {
  const started = await startServe(
    tmp.dir,
    [
      { name: 'alpha', workers: 4, sidekicks: { stopGraceMs: 1000, taskQueue: 2 } },
      { name: 'beta', workers: 1, sidekicks: { stopGraceMs: 1000, maxLazy: 2, declare: { 'scoped.s': {} } } },
    ],
    {},
    // `sidekick vars` below reads the values, which the admin socket masks unless the config allows them.
    { admin: { showValues: true } },
  );
  serve = started.serve;
  alpha = started.ports.alpha!;
  beta = started.ports.beta!;
  configFile = started.configFile;
  await serve.waitReady();
});

after(async () => {
  try {
    if (serve && !serve.exitInfo) {
      const exit = await serve.stop('SIGTERM', 20_000);
      assert.equal(exit.code, 0, `serve exit status after SIGTERM\n${serve.logs()}`);
    }
  } finally {
    await serve?.kill();
    tmp.cleanup();
  }
});

type VarsReply = { pid: number; vars: Record<string, string>; ok?: false; code?: string; message?: string };

function entries(vars: Record<string, string>): [string, string][] {
  return Object.keys(vars)
    .sort()
    .map((k) => [k, vars[k]!]);
}

const task = (port: number, name: string, payload: unknown, extra = ''): Promise<Record<string, unknown>> =>
  getJson(port, `/task?name=${name}&payload=${encodeURIComponent(JSON.stringify(payload))}${extra}`);

test('200 concurrent requests in 4 workers awaiting getVars("counter.c") share one start (generation 0)', async () => {
  const replies = await Promise.all(
    Array.from({ length: 200 }, () => getJson<VarsReply>(alpha, '/vars?name=counter.c&timeout=20000')),
  );
  for (const r of replies) assert.equal(r._status, 200, JSON.stringify(r));
  assert.ok(replies.every((r) => r.vars.app === 'alpha' && r.vars.generation === '0'));
  const pids = new Set(replies.map((r) => r.pid));
  assert.equal(pids.size, 4, `requests were spread over all 4 workers: ${[...pids].join(', ')}`);
  const starts = readEvents(tmp.dir).filter((e) => e.name === 'counter.c' && e.event === 'start');
  assert.equal(starts.length, 1, `exactly one start: ${JSON.stringify(starts)}`);
  const status = await serve.status();
  const sk = serve.sidekick(status, 'alpha', 'counter.c');
  assert.equal(sk?.generation, 0);
  assert.equal(sk?.state, 'running');
  assert.equal(sk?.bootFailures, 0);
});

test('readVars before the first publish → SK_ERR_NOT_READY in the worker; getVars waits for the publish', async () => {
  const early = await getJson<{ code: string }>(alpha, '/read?name=delayed.s');
  assert.equal(early.code, 'SK_ERR_NOT_READY');
  const [waited, stillEarly] = await Promise.all([
    getJson<VarsReply>(alpha, '/vars?name=delayed.s&timeout=20000'),
    getJson<{ code: string }>(alpha, '/read?name=delayed.s'), // started by the request above, not yet published
  ]);
  assert.equal(stillEarly.code, 'SK_ERR_NOT_READY');
  assert.equal(waited._status, 200);
  assert.equal(waited.vars.name, 'delayed.s');
  assert.equal(waited.vars.envName, 'delayed.s', 'SIDEKICK_NAME in the sidekick thread under serve');
  assert.equal(waited.vars.argvName, 'delayed.s', 'process.argv[2] in the sidekick thread under serve');
  // Every worker has it now.
  const reads = await Promise.all(Array.from({ length: 8 }, () => getJson<VarsReply>(alpha, '/read?name=delayed.s')));
  assert.ok(reads.every((r) => r._status === 200 && r.vars.name === 'delayed.s'));
});

test('a sidekick crash under serve: every worker keeps reading the last snapshot, then gets generation 1', async () => {
  const name = 'tasks.crash';
  const first = await getJson<VarsReply>(alpha, `/vars?name=${name}&timeout=20000`);
  assert.equal(first.vars.generation, '0');
  const crash = await task(alpha, name, { op: 'crash' });
  assert.equal(crash.value, 'crashing');
  // Generation 1 waits 700 ms before publishing: meanwhile all workers serve generation 0.
  await waitFor('generation 1 to start', () =>
    readEvents(tmp.dir).some((e) => e.name === name && e.generation === '1' && e.event === 'start'),
  );
  const during = await Promise.all(Array.from({ length: 8 }, () => getJson<VarsReply>(alpha, `/read?name=${name}`)));
  assert.equal(new Set(during.map((r) => r.pid)).size, 4);
  for (const r of during)
    assert.equal(r.vars?.generation, '0', `worker ${r.pid} during the restart: ${JSON.stringify(r)}`);
  await waitFor('every worker to see generation 1', async () => {
    const reads = await Promise.all(Array.from({ length: 8 }, () => getJson<VarsReply>(alpha, `/read?name=${name}`)));
    return reads.every((r) => r.vars?.generation === '1' && r.vars.previous === '0') ? true : undefined;
  });
  const sk = serve.sidekick(await serve.status(), 'alpha', name);
  assert.equal(sk?.generation, 1);
  assert.equal(sk?.crashes, 1);
  assert.equal(sk?.state, 'running');
});

test('the same sidekick name in two apps = two independent instances (ctx.app differs)', async () => {
  const a = await getJson<VarsReply>(alpha, '/vars?name=scoped.s&timeout=20000');
  const b = await getJson<VarsReply>(beta, '/vars?name=scoped.s&timeout=20000');
  assert.equal(a._status, 200, JSON.stringify(a));
  assert.equal(b._status, 200, JSON.stringify(b));
  assert.equal(a.vars.app, 'alpha');
  assert.equal(b.vars.app, 'beta');
  const starts = readEvents(tmp.dir).filter((e) => e.name === 'scoped.s' && e.event === 'start');
  assert.deepEqual(starts.map((e) => e.app).sort(), ['alpha', 'beta']);
  const status = await serve.status();
  assert.equal(serve.sidekick(status, 'alpha', 'scoped.s')?.app, 'alpha');
  assert.equal(serve.sidekick(status, 'beta', 'scoped.s')?.app, 'beta');
  // alpha never started beta's other sidekicks and vice versa.
  assert.equal(serve.sidekick(status, 'beta', 'counter.c'), undefined);
});

test('binary-safe vars survive the IPC relay byte for byte (JSON, raw bytes, every worker); identical re-publish is a no-op', async () => {
  const first = await getJson<VarsReply>(alpha, '/vars?name=binary.s&timeout=20000');
  assert.equal(first._status, 200, JSON.stringify(first).slice(0, 500));
  assert.deepEqual(entries(first.vars), entries({ ...BINARY_VARS }));
  // Every worker holds the same snapshot (fresh connections are spread round-robin).
  const reads = await Promise.all(Array.from({ length: 8 }, () => getJson<VarsReply>(alpha, '/read?name=binary.s')));
  assert.equal(new Set(reads.map((r) => r.pid)).size, 4);
  for (const r of reads) assert.deepEqual(entries(r.vars), entries({ ...BINARY_VARS }), `worker ${r.pid}`);
  for (const key of ['big', 'nul', 'onlyNul', 'emoji', 'utf8', 'empty', 'k\u0000ey', 'lines']) {
    const raw = await httpGet(alpha, `/raw?name=binary.s&key=${encodeURIComponent(key)}`);
    assert.equal(raw.status, 200);
    assert.ok(raw.body.equals(Buffer.from(BINARY_VARS[key]!, 'utf8')), `raw bytes of ${JSON.stringify(key)}`);
  }
  const before = serve.sidekick(await serve.status(), 'alpha', 'binary.s') as { publishedAt?: number };
  assert.ok(before.publishedAt);
  const r = await getJson<{ ok: boolean; value: unknown }>(
    alpha,
    '/task?name=binary.s&payload=%7B%22op%22%3A%22republish%22%7D',
  );
  assert.deepEqual([r.ok, r.value], [true, 'republished']);
  const afterRepublish = serve.sidekick(await serve.status(), 'alpha', 'binary.s') as { publishedAt?: number };
  assert.equal(afterRepublish.publishedAt, before.publishedAt, 'identical content: no new snapshot');
});

test('boot-failure loop: the waiting request gets SK_ERR_BOOT_FAILED naming sidekick, entrypoint, 6 attempts, last error', async () => {
  const r = await getJson<{ code: string; message: string }>(alpha, '/vars?name=bootfail.s&timeout=25000');
  assert.equal(r._status, 500);
  assert.equal(r.code, 'SK_ERR_BOOT_FAILED', r.message);
  assert.match(r.message, /"bootfail\.s"/);
  assert.match(r.message, /"alpha"/);
  assert.ok(r.message.includes(ENTRYPOINT), r.message);
  assert.match(r.message, /\b6 times\b/);
  assert.match(r.message, /boom-boot in bootfail\.s gen 5/);
  const sk = serve.sidekick(await serve.status(), 'alpha', 'bootfail.s');
  assert.equal(sk?.state, 'failed');
  assert.equal(sk?.bootFailures, 6);
  assert.match(sk?.lastError ?? '', /boom-boot/);
});

test('lazy cap over IPC (beta: maxLazy 2; declared scoped.s does not count) and invalid names', async () => {
  for (const name of ['lazy.a', 'lazy.b']) {
    const ok = await getJson<VarsReply>(beta, `/vars?name=${name}&timeout=20000`);
    assert.equal(ok._status, 200, JSON.stringify(ok));
  }
  const capped = await getJson<{ code: string; message: string }>(beta, '/vars?name=lazy.c&timeout=20000');
  assert.equal(capped.code, 'SK_ERR_LAZY_CAP', capped.message);
  assert.match(capped.message, /maxLazy = 2/);
  assert.match(capped.message, /"lazy\.c"/);
  const bad = await getJson<{ code: string }>(beta, `/vars?name=${encodeURIComponent('bad name')}`);
  assert.equal(bad.code, 'SK_ERR_INVALID_NAME');
  // alpha's cap is its own.
  const other = await getJson<VarsReply>(alpha, '/vars?name=lazy.c&timeout=20000');
  assert.equal(other._status, 200);
});

test('tasks through serve: round trip, sendTask, handler error, timeout, abort, full queue', async () => {
  const value = { s: 'NUL\u0000 😀', list: [1, 2, 3] };
  const echo = await task(alpha, 'tasks.s', { op: 'echo', value }, '&timeout=20000');
  assert.deepEqual(echo.value, { echo: value, app: 'alpha', name: 'tasks.s', generation: 0 });

  const sent = await httpGet(
    alpha,
    `/send?name=tasks.s&payload=${encodeURIComponent('{"op":"note","text":"via-ipc"}')}`,
  );
  assert.equal(sent.status, 202);
  // The note went to the one sidekick (in the supervisor), whichever worker served the request.
  const notes = await task(alpha, 'tasks.s', { op: 'notes' });
  assert.deepEqual(notes.value, ['via-ipc']);

  const failed = await task(alpha, 'tasks.s', { op: 'throw', message: 'bad thing 7' });
  assert.equal(failed.code, 'SK_ERR_TASK_FAILED');
  assert.match(String(failed.message), /bad thing 7/);

  const late = await task(alpha, 'tasks.s', { op: 'slow', ms: 1500 }, '&timeout=100');
  assert.equal(late.code, 'SK_ERR_TIMEOUT');
  assert.match(String(late.message), /"tasks\.s".*100 ms/);

  const aborted = await getJson<{ code: string }>(alpha, '/abort?name=tasks.s&ms=50');
  assert.equal(aborted.code, 'SK_ERR_ABORTED');

  // taskQueue 2: in one worker, the 3rd concurrent request and a sendTask are refused at once.
  const burst = await getJson<{ requests: string[]; sendTask: string }>(alpha, '/burst?name=tasks.q&n=3&ms=600');
  assert.deepEqual(burst.requests, ['ok', 'ok', 'SK_ERR_TASK_QUEUE_FULL']);
  assert.equal(burst.sendTask, 'SK_ERR_TASK_QUEUE_FULL');
});

test('`sidekick status` and `sidekick vars APP/NAME` print JSON from the running instance', async () => {
  const status = await runCli(['status', '-c', configFile, '--json'], { timeoutMs: 15_000 });
  assert.equal(status.code, 0, status.stderr);
  const s = JSON.parse(status.stdout) as { pid: number; apps: { name: string; workers: { pid: number }[] }[] };
  assert.equal(s.pid, serve.pid);
  assert.deepEqual(s.apps.map((a) => a.name).sort(), ['alpha', 'beta']);
  assert.equal(s.apps.find((a) => a.name === 'alpha')?.workers.length, 4);

  const vars = await runCli(['vars', 'alpha/binary.s', '-c', configFile, '--json'], { timeoutMs: 15_000 });
  assert.equal(vars.code, 0, vars.stderr);
  const v = JSON.parse(vars.stdout) as { app: string; name: string; generation: number; vars: Record<string, string> };
  assert.equal(v.app, 'alpha');
  assert.equal(v.name, 'binary.s');
  assert.equal(v.generation, 0);
  assert.deepEqual(entries(v.vars), entries({ ...BINARY_VARS }));

  const missing = await runCli(['vars', 'alpha/never-started', '-c', configFile], { timeoutMs: 15_000 });
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /alpha\/never-started/);
});
