// Tasks under `sidekick serve` (issue 21): the task pool lives in the app's sidekick host process. Progress crosses
// every hop (thread → host → supervisor → HTTP worker) in order and before the result; a caller's timeout and an HTTP
// worker that dies both abort the handler's signal in the host; a pool thread that dies fails only its own task
// (SK_ERR_TASK_CRASHED) while the host and the other thread go on, and is replaced; status and /metrics show the pool;
// the pool survives a host killed with SIGKILL (resumed in the new host) and a reload.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { formatStatus } from '../src/cli/status-table.ts';
import type { StatusJson as FullStatus } from '../src/cli/status-table.ts';
import {
  freePort,
  getJson,
  httpGet,
  readEvents,
  startServe,
  tempDir,
  waitFor,
  type ServeProcess,
} from './helpers/serve.ts';

const tmp = tempDir('sk-serve-pool-');
let serve: ServeProcess;
let port: number;
let metricsPort: number;
const NAME = 'pool.s';

interface PoolJson {
  threads: number;
  busy: number;
  queued: number;
  crashes: number;
  durations: { count: number; sum: number; counts: number[] };
  members: { thread: number; state: string; generation: number; crashes: number }[];
}
interface TaskSidekickJson {
  state: string;
  tasks: { sent: number; completed: number; failed: number; cancelled: number };
  pool: PoolJson;
}

before(async () => {
  metricsPort = await freePort();
  const started = await startServe(
    tmp.dir,
    [
      {
        name: 'tp',
        workers: 1,
        sidekicks: { declare: { [NAME]: { start: 'boot', tasks: { threads: 2, queue: 8 } } } },
      },
    ],
    {},
    { metrics: { listen: metricsPort } },
  );
  serve = started.serve;
  port = started.ports.tp!;
  await serve.waitReady((s) => serve.sidekick(s, 'tp', NAME)?.ready === true);
  // Both threads up (thread 1 is up once it called handleTasks).
  await waitFor('both pool threads running', async () => {
    const p = await pool();
    return p.state === 'running' && p.pool.members[0]?.state === 'running';
  });
});

after(async () => {
  await serve?.kill();
  tmp.cleanup();
});

async function pool(): Promise<TaskSidekickJson> {
  const s = await serve.status();
  return serve.sidekick(s, 'tp', NAME) as unknown as TaskSidekickJson;
}

const task = <T = Record<string, unknown>>(payload: unknown, extra = ''): Promise<T & { _status: number }> =>
  getJson<T>(port, `/task?name=${NAME}&payload=${encodeURIComponent(JSON.stringify(payload))}${extra}`);

test('serve: progress crosses thread → host → supervisor → HTTP worker in order, the last value before the result', async () => {
  for (const every of [0, 1]) {
    const r = await task<{ ok: boolean; value: string; progress: unknown[] }>(
      { op: 'progress', n: 3000, every },
      '&progress=1&timeout=30000',
    );
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.value, 'progress-done');
    const values = r.progress as number[];
    assert.ok(
      values.every((v) => typeof v === 'number'),
      `no value after the result: ${values.join(',')}`,
    );
    for (let i = 1; i < values.length; i++) assert.ok(values[i]! > values[i - 1]!, `in order: ${values.join(',')}`);
    assert.equal(values[0], 1);
    assert.equal(values.at(-1), 3000, 'the last value arrives, before the result');
    // Latest-wins at every hop: a handler that never yields cannot flood the channels.
    if (every === 0) assert.ok(values.length <= 8, `a tight loop sends a handful, not 3000: ${values.length}`);
  }
});

test("serve: a requestTask timeout aborts the handler's signal in the sidekick host (SK_ERR_TIMEOUT)", async () => {
  const r = await task<{ ok: boolean; code: string }>({ op: 'wait-cancel', tag: 's1' }, '&timeout=400');
  assert.equal(r.code, 'SK_ERR_TIMEOUT');
  const line = await waitFor('the handler to see its signal abort', () =>
    readEvents(tmp.dir).find((e) => e.event.startsWith('cancelled s1 ')),
  );
  assert.equal(line.event.split(' ')[2], 'SK_ERR_TIMEOUT');
});

test('serve: a pool thread that dies fails only its own task; the host and the other thread go on; it is replaced', async () => {
  const before = await serve.status();
  const hostPid = (before.apps[0] as unknown as { sidekickHost: { pid: number } }).sidekickHost.pid;
  const other = task<{ ok: boolean; value: { thread: number } }>({ op: 'gate', tag: 'sc' }, '&timeout=30000');
  await waitFor('the gate task to run', () => readEvents(tmp.dir).some((e) => e.event === 'gate-wait sc'));
  const died = await task<{ ok: boolean; code: string; message: string }>({ op: 'die' }, '&timeout=20000');
  assert.equal(died.ok, false);
  assert.equal(died.code, 'SK_ERR_TASK_CRASHED', died.message);
  assert.match(died.message, /thread \d died on purpose/);
  writeFileSync(join(tmp.dir, 'gate-sc'), '');
  const survived = await other;
  assert.equal(survived.ok, true, 'the other thread finished its task');
  const dying = readEvents(tmp.dir).find((e) => e.event.startsWith('dying '))!;
  assert.notEqual(String(survived.value.thread), dying.event.split(' ')[1]);
  const after = await waitFor('the dead thread replaced (both running again)', async () => {
    const p = await pool();
    return p.state === 'running' && p.pool.members[0]!.state === 'running' && p.pool.crashes === 1 ? p : undefined;
  });
  const s = await serve.status();
  assert.equal((s.apps[0] as unknown as { sidekickHost: { pid: number } }).sidekickHost.pid, hostPid, 'same host');
  assert.equal(after.pool.threads, 2);
  // Both threads take tasks again: two at once, on threads 0 and 1, the replaced one at generation 1.
  const both = [0, 1].map(() =>
    task<{ ok: boolean; value: { thread: number; generation: number } }>({ op: 'gate', tag: 'rec' }, '&timeout=30000'),
  );
  await waitFor('both tasks to run', () => readEvents(tmp.dir).filter((e) => e.event === 'gate-wait rec').length === 2);
  writeFileSync(join(tmp.dir, 'gate-rec'), '');
  const answers = await Promise.all(both);
  assert.deepEqual(answers.map((a) => a.value.thread).sort(), [0, 1], JSON.stringify(answers));
  assert.deepEqual(answers.map((a) => a.value.generation).sort(), [0, 1]);
});

test('serve: status and /metrics show the pool (threads, busy, queue depth, durations, cancellations)', async () => {
  const p = await pool();
  assert.equal(p.pool.threads, 2);
  assert.equal(p.pool.queued, 0);
  assert.ok(p.tasks.cancelled >= 1, `cancelled ${p.tasks.cancelled}`);
  assert.ok(p.pool.durations.count >= 3, `durations ${JSON.stringify(p.pool.durations)}`);
  const table = formatStatus((await serve.status()) as unknown as FullStatus, Date.now());
  assert.match(table, /pool\.s: tasks: threads 2 {2}busy \d {2}queued 0/);
  const text = (await httpGet(metricsPort, '/metrics')).text;
  const labels = `app="tp",sidekick="${NAME}"`;
  assert.match(text, new RegExp(`sidekick_task_threads\\{${labels}\\} 2`));
  assert.match(text, new RegExp(`sidekick_task_threads_busy\\{${labels}\\} \\d`));
  assert.match(text, new RegExp(`sidekick_task_queue_depth\\{${labels}\\} 0`));
  assert.match(text, new RegExp(`sidekick_tasks_cancelled_total\\{${labels}\\} [1-9]`));
  assert.match(text, new RegExp(`sidekick_task_thread_crashes_total\\{${labels}\\} 1`));
  assert.match(text, /# TYPE sidekick_task_duration_seconds histogram/);
  const inf = new RegExp(`sidekick_task_duration_seconds_bucket\\{${labels},le="\\+Inf"\\} (\\d+)`).exec(text);
  const count = new RegExp(`sidekick_task_duration_seconds_count\\{${labels}\\} (\\d+)`).exec(text);
  assert.ok(inf && count, text.slice(0, 3000));
  assert.equal(inf[1], count[1], 'the +Inf bucket holds every answered task');
});

test("serve: an HTTP worker killed while it waits for a task: the handler's signal aborts in the host", async () => {
  const waiting = task({ op: 'wait-cancel', tag: 'k1' }, '&timeout=60000').catch((err: Error) => err);
  await waitFor('the task to run', () => readEvents(tmp.dir).some((e) => e.event === 'waiting k1'));
  const s = await serve.status();
  const pid = serve.app(s, 'tp').workers[0]!.pid;
  process.kill(pid, 'SIGKILL');
  const line = await waitFor('the handler to see its signal abort', () =>
    readEvents(tmp.dir).find((e) => e.event.startsWith('cancelled k1 ')),
  );
  const [, , code, message] = line.event.split(' ');
  assert.equal(code, 'SK_ERR_ABORTED');
  assert.match(message!, /HTTP_worker.*exited_\(signal_SIGKILL\)/);
  assert.ok((await waiting) instanceof Error, 'the request itself died with its worker');
  // The supervisor replaces the worker and serves on.
  await serve.waitReady();
  assert.equal(serve.exitInfo, undefined);
});

test('serve: a sidekick host killed with SIGKILL: the pool comes back in the new host with both threads, counters kept', async () => {
  const before = await pool();
  const s0 = await serve.status();
  const hostPid = (s0.apps[0] as unknown as { sidekickHost: { pid: number } }).sidekickHost.pid;
  process.kill(hostPid, 'SIGKILL');
  await waitFor(
    'a new host with both pool threads running again',
    async () => {
      const s = await serve.status();
      const host = (s.apps[0] as unknown as { sidekickHost: { pid: number } }).sidekickHost;
      const p = serve.sidekick(s, 'tp', NAME) as unknown as TaskSidekickJson;
      return host.pid !== hostPid && p.state === 'running' && p.pool.members[0]?.state === 'running';
    },
    { timeoutMs: 30_000 },
  );
  const both = [0, 1].map(() =>
    task<{ ok: boolean; value: { thread: number } }>({ op: 'gate', tag: 'host' }, '&timeout=30000'),
  );
  await waitFor(
    'both tasks to run',
    () => readEvents(tmp.dir).filter((e) => e.event === 'gate-wait host').length === 2,
  );
  writeFileSync(join(tmp.dir, 'gate-host'), '');
  assert.deepEqual((await Promise.all(both)).map((a) => a.value.thread).sort(), [0, 1]);
  const after = await pool();
  assert.ok(after.tasks.sent >= before.tasks.sent + 2, `sent carried over: ${before.tasks.sent} → ${after.tasks.sent}`);
  assert.ok(after.pool.durations.count >= before.pool.durations.count, 'the histogram carried over');
});

test('serve: a reload (SIGHUP) restarts every pool thread (generation + 1); tasks keep working', async () => {
  const before = await pool();
  const gens = {
    own: (before as unknown as { generation: number }).generation,
    t1: before.pool.members[0]!.generation,
  };
  serve.signal('SIGHUP');
  await waitFor(
    'both threads at their next generation, running',
    async () => {
      const p = (await pool()) as TaskSidekickJson & { generation: number };
      return (
        p.generation > gens.own &&
        p.pool.members[0]!.generation > gens.t1 &&
        p.state === 'running' &&
        p.pool.members[0]!.state === 'running'
      );
    },
    { timeoutMs: 30_000 },
  );
  const both = [0, 1].map(() =>
    task<{ ok: boolean; value: { thread: number } }>({ op: 'gate', tag: 'reload' }, '&timeout=30000'),
  );
  await waitFor(
    'both tasks to run',
    () => readEvents(tmp.dir).filter((e) => e.event === 'gate-wait reload').length === 2,
  );
  writeFileSync(join(tmp.dir, 'gate-reload'), '');
  assert.deepEqual((await Promise.all(both)).map((a) => a.value.thread).sort(), [0, 1]);
});
