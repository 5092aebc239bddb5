// The supervisor runs no user code: each app's sidekicks live in a sidekick host process. A sidekick that takes its
// whole process down (a large allocation past its thread's heap cap aborts V8: nodejs/node#47224; the OOM killer's
// SIGKILL) takes only its app's host: the supervisor survives, HTTP requests under load keep being answered with the
// last snapshots, the host restarts with backoff and its sidekicks carry on with generation + 1, another app's
// sidekicks are untouched, and the status, the timeline and the counters say what happened.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
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
import { isAlive } from './helpers/proc.ts';

const tmp = tempDir('sk-serve-host-');
const serves: ServeProcess[] = [];
after(async () => {
  await Promise.all(serves.map((s) => s.kill()));
  tmp.cleanup();
});

interface HostJson {
  pid: number | undefined;
  state: string;
  rss: number | undefined;
  restarts: number;
  lastExit: string | undefined;
}
const hostOf = (s: StatusJson, app: string): HostJson =>
  (s.apps.find((a) => a.name === app) as unknown as { sidekickHost: HostJson }).sidekickHost;

/** Two apps: `victim` with the sidekicks under test and a reader, `bystander` with one calm sidekick. */
async function twoApps(
  dir: string,
  victim: Record<string, unknown>,
): Promise<{ serve: ServeProcess; ports: Record<string, number> }> {
  const started = await startServe(dir, [
    { name: 'victim', workers: 2, sidekicks: victim },
    { name: 'bystander', workers: 1, sidekicks: { declare: { 'scoped.calm': { start: 'boot' } } } },
  ]);
  serves.push(started.serve);
  await started.serve.waitReady((s) => {
    const calm = started.serve.sidekick(s, 'bystander', 'scoped.calm');
    const host = hostOf(s, 'victim');
    return Boolean(calm?.ready && host.pid && host.rss);
  });
  return started;
}

function sub(name: string): string {
  const d = join(tmp.dir, name);
  mkdirSync(d);
  return d;
}

async function events(serve: ServeProcess): Promise<{ kind: string; app?: string; detail?: string }[]> {
  return adminGet(serve.adminSocket, '/events');
}

test('a sidekick that aborts its process (large arrays past maxHeapMb 64) takes down only its app host', async () => {
  const dir = sub('bigalloc');
  const { serve, ports } = await twoApps(dir, {
    maxHeapMb: 64,
    declare: { 'bigalloc.b': { start: 'boot' }, 'scoped.steady': { start: 'boot' } },
  });
  const first = await serve.status();
  const calmBefore = serve.sidekick(first, 'bystander', 'scoped.calm')!;
  // The load starts once both HTTP workers hold scoped.steady's first snapshot: before it, readVars is SK_ERR_NOT_READY
  // by contract (on a loaded machine the first publish can come after the host reported its pid).
  const answered = new Set<number>();
  await waitFor('both victim workers to read scoped.steady', async () => {
    const r = await getJson<{ pid: number }>(ports.victim!, '/read?name=scoped.steady');
    if (r._status === 200) answered.add(r.pid);
    return answered.size >= 2;
  });
  const load = startLoad({ port: ports.victim!, path: '/read?name=scoped.steady', concurrency: 4, maxMs: 60_000 });
  try {
    const s = await waitFor(
      'the hog to take its host down twice (host restarted, the hog restarted with a higher generation)',
      async () => {
        const st = await serve.status();
        const host = hostOf(st, 'victim');
        const hog = serve.sidekick(st, 'victim', 'bigalloc.b');
        return host.restarts >= 2 && hog && hog.generation >= 2 ? st : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 100 },
    );
    assert.equal(serve.exitInfo, undefined, `the supervisor is still running\n${serve.logs()}`);
    const host = hostOf(s, 'victim');
    assert.match(String(host.lastExit), /signal SIGABRT|exit code 134|signal SIGTRAP/, `lastExit: ${host.lastExit}`);
    // The other sidekick of the same app went down with the host and carried on: generation + 1, snapshot served.
    const steady = serve.sidekick(s, 'victim', 'scoped.steady')!;
    assert.ok(steady.generation >= 1, `scoped.steady restarted in the new host (generation ${steady.generation})`);
    assert.ok(steady.ready);
    // Another app's sidekick never noticed.
    const calm = serve.sidekick(s, 'bystander', 'scoped.calm')!;
    assert.equal(calm.generation, calmBefore.generation);
    assert.equal(calm.crashes, 0);
    assert.equal(hostOf(s, 'bystander').restarts, 0);
    assert.equal(hostOf(s, 'bystander').pid, hostOf(first, 'bystander').pid);
    const timeline = await events(serve);
    assert.ok(
      timeline.some((e) => e.kind === 'sidekick_host_died' && e.app === 'victim'),
      'the timeline shows the host death',
    );
    assert.ok(timeline.every((e) => !(e.kind === 'sidekick_host_died' && e.app === 'bystander')));
  } finally {
    load.stop();
  }
  const r = await load.done;
  assert.ok(r.total > 0, 'the load ran');
  assert.deepEqual(r.failures, [], 'no request failed while the host died and restarted');
  assert.equal(
    r.ok,
    r.total,
    `every request was answered 200 (${JSON.stringify(r.statuses)} ${r.errorBodies.join(' | ')})`,
  );
});

test('a host killed with SIGKILL (the OOM killer): requests keep being answered, tasks in it fail with SK_ERR_HOST_DIED', async () => {
  const dir = sub('sigkill');
  const { serve, ports } = await twoApps(dir, {
    declare: { 'gen.g': { start: 'boot' }, 'tasks.t': { start: 'boot' } },
  });
  const before = await waitFor('both sidekicks ready', async () => {
    const s = await serve.status();
    const g = serve.sidekick(s, 'victim', 'gen.g');
    const t = serve.sidekick(s, 'victim', 'tasks.t');
    return g?.ready && t?.ready ? s : undefined;
  });
  const hostPid = hostOf(before, 'victim').pid!;
  assert.ok(isAlive(hostPid));
  assert.notEqual(hostPid, serve.pid, 'the sidekicks do not run in the supervisor');
  const cmdline = readFileSync(`/proc/${hostPid}/cmdline`, 'utf8');
  assert.match(cmdline, /host-main/);
  // The host's own V8 heap follows the app's sidekick settings (maxHeapMb, default 512).
  assert.match(cmdline, /--max-old-space-size=512\0/, cmdline.replaceAll('\0', ' '));
  const genBefore = serve.sidekick(before, 'victim', 'gen.g')!.generation;
  const valueBefore = await getJson<{ vars: { generation: string } }>(ports.victim!, '/read?name=gen.g');
  assert.equal(valueBefore._status, 200);

  const load = startLoad({ port: ports.victim!, path: '/read?name=gen.g', concurrency: 4, maxMs: 60_000 });
  // A slow task in flight when the host dies.
  const inFlight = getJson<{ ok: boolean; code?: string; message?: string }>(
    ports.victim!,
    `/task?name=tasks.t&payload=${encodeURIComponent(JSON.stringify({ op: 'slow', ms: 20_000 }))}&timeout=60000`,
  );
  await waitFor('the task to reach the host', async () => {
    const s = await serve.status();
    return (serve.sidekick(s, 'victim', 'tasks.t') as unknown as { tasksInFlight: number }).tasksInFlight > 0
      ? true
      : undefined;
  });
  process.kill(hostPid, 'SIGKILL');
  const task = await inFlight;
  assert.equal(task.ok, false);
  assert.equal(task.code, 'SK_ERR_HOST_DIED', `the task's caller learns why: ${task.message}`);
  assert.match(String(task.message), /signal SIGKILL/);

  const s = await waitFor('a new host with gen.g at generation + 1', async () => {
    const st = await serve.status();
    const g = serve.sidekick(st, 'victim', 'gen.g');
    const host = hostOf(st, 'victim');
    return host.pid && host.pid !== hostPid && g && g.generation === genBefore + 1 && g.state === 'running'
      ? st
      : undefined;
  });
  load.stop();
  const r = await load.done;
  assert.deepEqual(r.failures, [], 'no request failed');
  assert.equal(
    r.ok,
    r.total,
    `every request was answered 200 (${JSON.stringify(r.statuses)} ${r.errorBodies.join(' | ')})`,
  );
  assert.equal(serve.exitInfo, undefined);
  assert.equal(isAlive(hostPid), false);
  const host = hostOf(s, 'victim');
  assert.equal(host.restarts, 1);
  assert.match(String(host.lastExit), /SIGKILL/);
  const g = serve.sidekick(s, 'victim', 'gen.g')!;
  assert.equal(g.crashes, 1, 'the host death counts as a crash of each sidekick that ran in it');
  assert.match(String(g.lastError), /sidekick host process died \(signal SIGKILL/);
  // The timeline says what happened: the victim's host died of SIGKILL, the bystander's did not die.
  const timeline = await events(serve);
  assert.ok(
    timeline.some((e) => e.kind === 'sidekick_host_died' && e.app === 'victim' && /SIGKILL/.test(e.detail ?? '')),
    `the timeline shows the host's SIGKILL: ${JSON.stringify(timeline.filter((e) => e.kind === 'sidekick_host_died'))}`,
  );
  assert.ok(timeline.every((e) => !(e.kind === 'sidekick_host_died' && e.app === 'bystander')));
  // New workers get the latest snapshot, and a new task works in the new host.
  const after2 = await getJson<{ vars: { generation: string } }>(ports.victim!, '/read?name=gen.g');
  assert.equal(after2._status, 200);
  const echo = await getJson<{ ok: boolean; value: { echo: string } }>(
    ports.victim!,
    `/task?name=tasks.t&payload=${encodeURIComponent(JSON.stringify({ op: 'echo', value: 'again' }))}`,
  );
  assert.equal(echo.ok, true, JSON.stringify(echo));
  assert.equal(echo.value.echo, 'again');
  assert.equal(serve.sidekick(s, 'bystander', 'scoped.calm')!.generation, 0);

  // The supervisor's stop ends the host too.
  const exit = await serve.stop();
  assert.equal(exit.code, 0);
  const newHost = hostOf(s, 'victim').pid!;
  await waitFor('the host to be gone after stop', () => (isAlive(newHost) ? undefined : true), { timeoutMs: 10_000 });
});

test('a getVars waiting for a sidekick that has not published yet keeps waiting across a host death, then gets it', async () => {
  const dir = sub('waiter');
  const { serve, ports } = await twoApps(dir, { declare: { 'gen.g': { start: 'boot' } } });
  const waiting = getJson<{ vars?: { generation: string }; code?: string; message?: string }>(
    ports.victim!,
    '/vars?name=gate.w&timeout=60000',
  );
  const before = await waitFor('gate.w to be starting in the host', async () => {
    const s = await serve.status();
    return serve.sidekick(s, 'victim', 'gate.w')?.state === 'starting' ? s : undefined;
  });
  const hostPid = hostOf(before, 'victim').pid!;
  process.kill(hostPid, 'SIGKILL');
  await waitFor('gate.w to be starting again in a new host', async () => {
    const s = await serve.status();
    const host = hostOf(s, 'victim');
    const w = serve.sidekick(s, 'victim', 'gate.w');
    return host.pid !== hostPid && w?.state === 'starting' && w.generation === 1 ? s : undefined;
  });
  writeFileSync(join(dir, 'gate'), '');
  const got = await waiting;
  assert.equal(got._status, 200, JSON.stringify(got));
  assert.equal(got.vars?.generation, '1', 'the waiter got the first publish, from the new host');
  const s = await serve.status();
  const w = serve.sidekick(s, 'victim', 'gate.w')!;
  assert.equal(w.bootFailures, 1, 'the host death counted as its boot failure (it had not published)');
  assert.match(String(w.lastError), /sidekick host process died/);
});

test('with the default maxHeapMb (512), a sidekick allocating large arrays takes down only its host', async () => {
  const dir = sub('bigalloc-default');
  const { serve } = await twoApps(dir, { declare: { 'bigalloc.d': { start: 'boot' } } });
  const s = await waitFor(
    'the host to die and the hog to run again in a new one',
    async () => {
      const st = await serve.status();
      const hog = serve.sidekick(st, 'victim', 'bigalloc.d');
      return hostOf(st, 'victim').restarts >= 1 && hog && hog.generation >= 1 ? st : undefined;
    },
    { timeoutMs: 90_000, intervalMs: 100 },
  );
  assert.equal(serve.exitInfo, undefined, 'the supervisor is still running');
  assert.match(String(hostOf(s, 'victim').lastExit), /signal SIGABRT|exit code 134|signal SIGTRAP/);
  assert.equal(serve.sidekick(s, 'bystander', 'scoped.calm')!.generation, 0);
  assert.equal(hostOf(s, 'bystander').restarts, 0);
});
