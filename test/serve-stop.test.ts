// `sidekick serve` stopping: SIGTERM lets an in-flight request finish, aborts the sidekicks' stop signal, ends an
// `every` sidekick's sleep at once (no grace needed) and exits 0; stuck sidekicks (busy loop, ignored signal) are
// terminated after stopGraceMs on reload and on shutdown, and neither hangs.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import {
  httpGet,
  processesOfTestDir,
  readEvents,
  startServe,
  tempDir,
  waitFor,
  type ServeProcess,
} from './helpers/serve.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const terminations = (logs: string, name: string): number =>
  logs.split('\n').filter((l) => l.includes(`"sidekick":"${name}"`) && l.includes('terminating its thread')).length;

test('SIGTERM: the in-flight request completes with 200, sidekicks see their stop signal, exit status 0', async (t) => {
  const tmp = tempDir('sk-serve-stop-');
  const started = await startServe(tmp.dir, [
    {
      name: 'stop',
      workers: 2,
      // Below Node's keepAliveTimeout (5 s): a keep-alive connection left open after its response would hold the
      // worker until this deadline, which says so in its log ('drain deadline reached').
      drainTimeoutMs: 4_500,
      sidekicks: {
        stopGraceMs: 10_000,
        declare: { 'watcher.w': { start: 'boot' }, 'everyfast.f': { start: 'boot', every: '5s' } },
      },
    },
  ]);
  const serve: ServeProcess = started.serve;
  cleanups.push(async () => {
    await serve.kill();
    tmp.cleanup();
  });
  const port = started.ports.stop!;
  await serve.waitReady(
    (s) => ['watcher.w', 'everyfast.f'].every((n) => serve.sidekick(s, 'stop', n)?.ready === true),
    { what: 'workers listening and both sidekicks ready' },
  );

  // Keep-alive clients, like a browser or a proxy: their connections stay open after the response. One request
  // has not sent its headers yet when SIGTERM arrives, the other is already streaming its body.
  const agents = [new http.Agent({ keepAlive: true }), new http.Agent({ keepAlive: true })];
  cleanups.push(() => agents.forEach((a) => a.destroy()));
  const pending = httpGet(port, '/slow?ms=800', { agent: agents[0], timeoutMs: 15_000 });
  const streaming = httpGet(port, '/slow?ms=800&flush=1', { agent: agents[1], timeoutMs: 15_000 });
  await waitFor('both slow requests to be in their handlers', () => {
    const begun = readEvents(tmp.dir).map((e) => e.event);
    return begun.includes('slow-begin') && begun.includes('slow-begin-flushed');
  });
  const t0 = Date.now();
  serve.signal('SIGTERM');
  const [slow, streamed] = await Promise.all([pending, streaming]);
  for (const r of [slow, streamed]) {
    assert.equal(r.status, 200);
    assert.equal(r.text, 'slow done');
  }
  // The response that had not started at SIGTERM closes its keep-alive connection.
  assert.equal(slow!.headers.connection, 'close', 'a response started while draining says Connection: close');

  const exit = await serve.stop('SIGTERM', 20_000);
  t.diagnostic(`stop took ${Date.now() - t0} ms after SIGTERM`);
  assert.equal(exit.code, 0, serve.logs());
  assert.equal(exit.signal, null);
  // The open keep-alive connections did not hold the exit: no worker reached its drain deadline (which is below
  // keepAliveTimeout), and no sidekick needed the 10 s grace (checked below: no termination).
  assert.doesNotMatch(serve.stderr, /drain deadline reached/, serve.logs());
  assert.deepEqual(processesOfTestDir(tmp.dir), [], 'no HTTP worker outlives the supervisor');

  const events = readEvents(tmp.dir);
  const watcher = events.filter((e) => e.name === 'watcher.w').map((e) => e.event);
  assert.ok(
    watcher.includes('aborted shouldStop=true'),
    `ctx.signal aborted, shouldStop() true: ${watcher.join(', ')}`,
  );
  assert.ok(watcher.includes('stopSignal-aborted'), 'the exported stopSignal aborted too');
  // everyfast.f sleeps 5 s between runs with a 10 s grace: it must end by its signal (clean exit), not terminate.
  const fast = events.filter((e) => e.name === 'everyfast.f').map((e) => e.event);
  assert.equal(fast.at(-1), 'exit-clean', `clean exit at stop: ${fast.join(', ')}`);
  assert.equal(terminations(serve.stderr, 'everyfast.f') + terminations(serve.stderr, 'watcher.w'), 0);
});

test('stuck sidekicks are terminated after stopGraceMs on reload (generation + 1) and on shutdown (SIGINT)', async () => {
  const tmp = tempDir('sk-serve-stuck-');
  const started = await startServe(tmp.dir, [
    {
      name: 'stuck',
      workers: 1,
      sidekicks: { stopGraceMs: 300, declare: { 'busy.b': { start: 'boot' }, 'ignorer.i': { start: 'boot' } } },
    },
  ]);
  const serve: ServeProcess = started.serve;
  cleanups.push(async () => {
    await serve.kill();
    tmp.cleanup();
  });
  const both = ['busy.b', 'ignorer.i'];
  await serve.waitReady((s) => both.every((n) => serve.sidekick(s, 'stuck', n)?.ready === true));

  serve.signal('SIGHUP');
  await serve.waitReady(
    (s) =>
      both.every((n) => {
        const sk = serve.sidekick(s, 'stuck', n);
        return sk?.generation === 1 && sk.state === 'running';
      }),
    { what: 'both stuck sidekicks to be replaced by generation 1' },
  );
  for (const n of both) assert.equal(terminations(serve.stderr, n), 1, `${n} terminated once on reload`);
  const spins = readEvents(tmp.dir).filter((e) => e.name === 'busy.b' && e.event === 'spinning');
  assert.deepEqual(
    spins.map((e) => e.generation),
    ['0', '1'],
  );
  // Still serving while a sidekick thread spins.
  assert.equal((await httpGet(started.ports.stuck!, '/read?name=busy.b')).status, 200);

  // SIGINT stops like SIGTERM (graceful, exit 0).
  const exit = await serve.stop('SIGINT', 20_000);
  assert.equal(exit.code, 0, serve.logs());
  for (const n of both) assert.equal(terminations(serve.stderr, n), 2, `${n} terminated again on shutdown`);
});

/** Resolves as soon as `done()` holds, checked on every chunk serve writes to stderr (the log line is the event). */
function onStderr(s: ServeProcess, done: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (!done()) return;
      cleanup();
      resolve();
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${s.logs()}`));
    }, timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      s.proc.stderr!.off('data', check);
    };
    s.proc.stderr!.on('data', check);
    check();
  });
}

const logLines = (s: ServeProcess, text: string): number => s.stderr.split('\n').filter((l) => l.includes(text)).length;

// Issue 16, item 4: a stop must cancel every pending restart and exit, wherever in a crash loop it lands. Before the
// fix, a restarted sidekick whose first publish arrived after the stop began was marked running again, its crash
// scheduled a restart after "stopped", and serve crash-looped until SIGKILL. SIGTERM goes in at four points:
// right after "sidekick crashed; restarting" (a restart pending), while a restarted sidekick boots (before its
// publish), right after "HTTP worker died; restarting", and while that replacement worker is still starting.
test('SIGTERM anywhere in a crash loop (sidekick or HTTP worker restart pending or booting): serve exits 0', async (t) => {
  const TRIES = 12;
  const hung: string[] = [];
  for (let i = 0; i < TRIES; i++) {
    const tmp = tempDir('sk-serve-stop-loop-');
    const started = await startServe(
      tmp.dir,
      [
        {
          name: 'loop',
          workers: 1,
          // Long: a replacement worker that missed its drain message would hold the stop past the bound below.
          drainTimeoutMs: 30_000,
          sidekicks: { declare: { 'crashloop.c': { start: 'boot' } } },
        },
      ],
      { SK_CRASH_BOOT_MS: '300', SK_CRASH_AFTER_MS: '20' },
    );
    const s = started.serve;
    const point = ['restart pending', 'sidekick booting', 'worker restart pending', 'worker starting'][i % 4]!;
    const crashes = 1 + (Math.floor(i / 4) % 3); // later in the loop on later rounds: longer backoffs
    try {
      await s.waitReady();
      if (point === 'restart pending') {
        await onStderr(s, () => logLines(s, 'sidekick crashed; restarting') >= crashes, `crash ${crashes}`);
      } else if (point === 'sidekick booting') {
        // Generation `crashes` has started (its thread is loading and waits 300 ms before its first publish).
        await waitFor(`generation ${crashes} to start`, () =>
          readEvents(tmp.dir).some((e) => e.name === 'crashloop.c' && e.generation === String(crashes)),
        );
      } else {
        const before = logLines(s, 'HTTP worker died; restarting');
        await httpGet(started.ports.loop!, '/crash', { timeoutMs: 5_000 }).catch(() => undefined);
        if (point === 'worker restart pending') {
          await onStderr(s, () => logLines(s, 'HTTP worker died; restarting') > before, 'the worker restart');
        } else {
          await waitFor('the replacement worker to be starting', async () =>
            s.app(await s.status(), 'loop').workers.some((w) => w.state === 'starting'),
          );
        }
      }
      try {
        const exit = await s.stop('SIGTERM', 20_000);
        assert.equal(exit.code, 0, s.logs());
        await waitFor('no process of this serve left', () => processesOfTestDir(tmp.dir).length === 0, {
          timeoutMs: 5_000,
        });
      } catch (err) {
        hung.push(`try ${i} (${point}, crash ${crashes}): ${(err as Error).message.split('\n')[0]}\n${s.logs(1500)}`);
      }
    } finally {
      await s.kill();
      tmp.cleanup();
    }
  }
  t.diagnostic(`${TRIES - hung.length} of ${TRIES} stops exited`);
  assert.deepEqual(hung, [], `stops that did not end:\n${hung.join('\n')}`);
});
