// Sidekick lifecycle rules of the README ("Lifecycle", the API table) that no other test drove, each on a real
// `sidekick serve` with the contract fixtures (test/fixtures/serve/contract.mjs, contract-app.mjs): the restart
// backoff's count resets after stable uptime; a clean exit after a publish is rerun; a sidekick that has published
// never gets SK_ERR_BOOT_FAILED however often it fails; onVars does not start a sidekick; an `every` run that overruns
// its period starts the next one at once.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  FIXTURES,
  getJson,
  httpGet,
  readEvents,
  startServe,
  tempDir,
  waitFor,
  type AppSpec,
  type ServeProcess,
  type SidekickStatusJson,
  type StatusJson,
} from './helpers/serve.ts';

const CONTRACT = join(FIXTURES, 'contract.mjs');
const CONTRACT_APP = join(FIXTURES, 'contract-app.mjs');

/** The status fields these tests read (the admin status carries them; SidekickStatusJson names only some). */
type SidekickStatus = SidekickStatusJson & {
  consecutiveFailures: number;
  starts: number;
  restarts: { crash: number; boot_failure: number; clean_exit: number; reload: number };
};

/** A serve of one app `c` (1 HTTP worker, contract handler and entrypoint); killed and its dir removed after `t`. */
async function serveContract(
  t: { after: (fn: () => Promise<void>) => void },
  sidekicks: AppSpec['sidekicks'],
  workers = 1,
): Promise<{ serve: ServeProcess; port: number; dir: string }> {
  const tmp = tempDir('sk-skcontract-');
  const started = await startServe(tmp.dir, [
    { name: 'c', workers, handler: CONTRACT_APP, sidekicks: { entrypoint: CONTRACT, ...sidekicks } },
  ]);
  t.after(async () => {
    await started.serve.kill();
    tmp.cleanup();
  });
  return { serve: started.serve, port: started.ports.c!, dir: tmp.dir };
}

function sk(serve: ServeProcess, st: StatusJson, name: string): SidekickStatus | undefined {
  return serve.sidekick(st, 'c', name) as SidekickStatus | undefined;
}

test('backoff: consecutiveFailures counts quick crashes (1, 2) and goes back to 1 after a run that stayed up past the 10 s stable window', async (t) => {
  const name = 'stablecrash.a';
  const { serve } = await serveContract(t, { declare: { [name]: { start: 'boot' } } });
  // Generation 2 runs only after two quick crashes: both counted as consecutive.
  const gen2 = await serve.waitReady((st) => sk(serve, st, name)?.generation === 2, {
    what: `${name} at generation 2`,
  });
  const before = sk(serve, gen2, name)!;
  assert.equal(before.crashes, 2, JSON.stringify(before));
  assert.equal(before.consecutiveFailures, 2, `two quick crashes in a row: ${JSON.stringify(before)}`);
  // Generation 2 crashes after 10.5 s of uptime (the fixture's own timer): the count starts over.
  const gen3 = await serve.waitReady((st) => (sk(serve, st, name)?.generation ?? 0) >= 3, {
    what: `${name} at generation 3`,
    timeoutMs: 30_000,
  });
  const after = sk(serve, gen3, name)!;
  assert.equal(after.crashes, 3, JSON.stringify(after));
  assert.equal(after.restarts.crash, 3);
  assert.equal(
    after.consecutiveFailures,
    1,
    `the crash after stable uptime is the first of a new series: ${JSON.stringify(after)}`,
  );
  assert.equal(after.bootFailures, 0);
});

test('a clean exit after a publish is rerun: restarts.clean_exit 1, generation + 1, no crash, no boot failure', async (t) => {
  const name = 'cleanexit.a';
  const { serve, dir } = await serveContract(t, { declare: { [name]: { start: 'boot' } } });
  const st = await serve.waitReady(
    (s) => sk(serve, s, name)?.generation === 1 && sk(serve, s, name)?.state === 'running',
    {
      what: `${name} rerun as generation 1`,
    },
  );
  const s = sk(serve, st, name)!;
  assert.equal(s.restarts.clean_exit, 1, JSON.stringify(s));
  assert.equal(s.restarts.crash, 0);
  assert.equal(s.restarts.boot_failure, 0);
  assert.equal(s.crashes, 0);
  assert.equal(s.bootFailures, 0);
  assert.equal(s.starts, 2);
  assert.equal(s.ready, true);
  const events = readEvents(dir)
    .filter((e) => e.name === name)
    .map((e) => `${e.generation} ${e.event}`);
  assert.deepEqual(events.slice(0, 3), ['0 published', '0 returning', '1 published'], events.join('\n'));
  assert.match(serve.stderr, /sidekick exited cleanly; rerunning/);
});

test('a sidekick that has published never gets SK_ERR_BOOT_FAILED: crashes and boot failures past maxBootFailures, getVars keeps resolving with its last snapshot', async (t) => {
  const crasher = 'pubcrash.a'; // publishes, then crashes, every run
  const failer = 'pubthenfail.b'; // publishes once, then only boot failures
  const { serve, port } = await serveContract(t, {
    maxBootFailures: 2,
    declare: { [crasher]: { start: 'boot' }, [failer]: { start: 'boot' } },
  });
  const states = new Set<string>();
  const seen = (st: StatusJson): boolean => {
    for (const n of [crasher, failer]) states.add(sk(serve, st, n)?.state ?? 'absent');
    return true;
  };
  const st = await serve.waitReady(
    (s) => seen(s) && (sk(serve, s, crasher)?.crashes ?? 0) >= 4 && (sk(serve, s, failer)?.bootFailures ?? 0) >= 4,
    { what: 'four crashes of one and four boot failures of the other (maxBootFailures 2)', timeoutMs: 30_000 },
  );
  assert.ok(!states.has('failed'), `never "failed" (gave up): states seen ${[...states].join(', ')}`);
  const c = sk(serve, st, crasher)!;
  const f = sk(serve, st, failer)!;
  assert.ok(c.crashes > 2, `crashes > maxBootFailures: ${JSON.stringify(c)}`);
  assert.ok(f.bootFailures > 2, `boot failures > maxBootFailures: ${JSON.stringify(f)}`);
  assert.equal(f.crashes, 1);
  assert.equal(f.ready, true);
  for (const n of [crasher, failer]) {
    const r = await getJson<{ vars?: Record<string, string>; code?: string }>(port, `/vars?name=${n}`);
    assert.equal(r._status, 200, `getVars(${n}) resolves: ${JSON.stringify(r)}`);
    assert.match(r.vars?.generation ?? '', /^\d+$/, JSON.stringify(r));
  }
  // getVars of the boot-failing one resolves with the snapshot of generation 0, its only publish.
  const r = await getJson<{ vars: Record<string, string> }>(port, `/vars?name=${failer}`);
  assert.equal(r.vars.generation, '0');
  // Still not given up, after those calls too (a getVars on a failed sidekick would have restarted it).
  const later = await serve.status();
  for (const n of [crasher, failer]) assert.notEqual(sk(serve, later, n)?.state, 'failed');
  assert.doesNotMatch(serve.stderr, /gave up booting/);
});

test('onVars does not start a sidekick; a later getVars does, and the subscription hears its snapshot', async (t) => {
  const { serve, port } = await serveContract(t, { declare: { 'plain.declared': { start: 'lazy' } } });
  await serve.waitReady();
  const agent = new (await import('node:http')).Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const get = async (path: string): Promise<Record<string, unknown>> => {
    const r = await httpGet(port, path, { agent });
    assert.equal(r.status, 200, `${path}: ${r.text}`);
    return JSON.parse(r.text) as Record<string, unknown>;
  };
  const first = await get('/onvars?name=plain.sub');
  await get('/onvars?name=plain.declared');
  // Another sidekick started afterwards on the same worker and connection, and ready: the supervisor has handled
  // everything that worker sent before it.
  await get('/vars?name=plain.other');
  const st = await serve.status();
  const names = serve.app(st, 'c').sidekicks.map((s) => s.name);
  assert.deepEqual(names, ['plain.other'], 'only the sidekick getVars asked for was started');
  assert.equal((await get('/heard?name=plain.sub')).heard, 0);

  // The subscription is live: once getVars starts it, the listener hears its snapshot.
  const vars = await get('/vars?name=plain.sub');
  assert.equal(vars.pid, first.pid, 'the same worker (one keep-alive connection)');
  const heard = await waitFor('the onVars listener to hear plain.sub', async () => {
    const h = await get('/heard?name=plain.sub');
    return (h.heard as number) >= 1 ? h : undefined;
  });
  assert.deepEqual(heard.last, { generation: '0', name: 'plain.sub' });
  const st2 = await serve.status();
  assert.deepEqual(
    serve
      .app(st2, 'c')
      .sidekicks.map((s) => s.name)
      .sort(),
    ['plain.other', 'plain.sub'],
  );
});

test('every: a run longer than its period starts the next at once (no gap between run-end and run-begin); a short run waits', async (t) => {
  const { serve, dir } = await serveContract(t, {
    declare: { 'overrun.a': { start: 'boot', every: 100 }, 'quick.b': { start: 'boot', every: 150 } },
  });
  await serve.waitReady();
  const events = (name: string): string[] =>
    readEvents(dir)
      .filter((e) => e.name === name)
      .map((e) => e.event);
  await waitFor('4 overrunning runs and 3 quick ones', () => {
    return events('overrun.a').includes('run-end 4') && events('quick.b').includes('run-end 3');
  });
  const overrun = events('overrun.a');
  const firstFour = overrun.slice(0, overrun.indexOf('run-end 4') + 1);
  assert.deepEqual(
    firstFour,
    ['run-begin 1', 'run-end 1', 'run-begin 2', 'run-end 2', 'run-begin 3', 'run-end 3', 'run-begin 4', 'run-end 4'],
    `never overlapping, and each run-end directly followed by the next run-begin:\n${overrun.join('\n')}`,
  );
  assert.ok(!overrun.some((e) => e.startsWith('gap')), `no gap after an overrun:\n${overrun.join('\n')}`);
  // The control: a run shorter than its period leaves a gap (the marker works).
  const quick = events('quick.b');
  for (const n of [1, 2]) {
    const end = quick.indexOf(`run-end ${n}`);
    assert.equal(quick[end + 1], `gap ${n}`, `a short run waits out its period:\n${quick.join('\n')}`);
    assert.equal(quick[end + 2], `run-begin ${n + 1}`);
  }
});
