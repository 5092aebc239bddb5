// Library mode lifecycle: boot-failure cap (in this process), and — each in a child `node` process of its own, since
// they need their own configure() or must show the process ends after shutdown() — the lazy-start cap, stuck
// sidekicks terminated after stopGraceMs, and `every` schedules (never overlapping; stop cuts the sleep short).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { configure, getVars, shutdown } from 'sidekick-runtime';
import { RestartBackoff } from '../src/common/backoff.ts';
import { ENTRYPOINT, FIXTURES, readEvents, runNode, tempDir, waitFor } from './helpers/serve.ts';

const tmp = tempDir('sk-lib-life-');

before(() => {
  process.env.SK_TEST_DIR = tmp.dir;
  configure({ entrypoint: ENTRYPOINT, app: 'life', stopGraceMs: 1000 });
});

after(async () => {
  await shutdown();
  tmp.cleanup();
});

/** The JSON log lines in a child's stderr. */
function logLines(stderr: string): Record<string, unknown>[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Runs test/fixtures/serve/lib-scenario.mjs <name> in a child process; it must end by itself with status 0. */
async function scenario(name: string, dir: string, env: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const r = await runNode([join(FIXTURES, 'lib-scenario.mjs'), name], {
    env: { ...env, SK_TEST_DIR: dir },
    timeoutMs: 30_000,
  });
  assert.equal(r.timedOut, false, `scenario ${name} did not end within 30 s (left a thread or timer?)\n${r.stderr}`);
  assert.equal(r.code, 0, `scenario ${name} exit code\n${r.stderr}`);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return { ...(JSON.parse(last) as Record<string, unknown>), stderr: r.stderr };
}

test('6 consecutive boot failures reject every waiting getVars with SK_ERR_BOOT_FAILED naming sidekick, entrypoint, attempts and last error', async () => {
  const name = 'bootfail.lib';
  const callers = [getVars(name, { timeout: 25_000 }), getVars(name, { timeout: 25_000 })];
  for (const caller of callers) {
    await assert.rejects(caller, (err: Error & { code?: string; details?: Record<string, unknown> }) => {
      assert.equal(err.code, 'SK_ERR_BOOT_FAILED', String(err));
      assert.match(err.message, /"bootfail\.lib"/);
      assert.ok(err.message.includes(ENTRYPOINT), `names the entrypoint: ${err.message}`);
      assert.match(err.message, /\b6 times\b/);
      assert.match(err.message, /boom-boot in bootfail\.lib gen 5/, 'quotes the last error');
      assert.equal(err.details?.attempts, 6);
      return true;
    });
  }
  const starts = readEvents(tmp.dir).filter((e) => e.name === name && e.event === 'start');
  assert.deepEqual(
    starts.map((e) => e.generation),
    ['0', '1', '2', '3', '4', '5'],
    'exactly 6 attempts, then it gave up',
  );
  // The restart delays between the attempts come from the shared restart policy (how long they take is a benchmark
  // matter, not a timed assertion here): 100, 400, 900, 1000, 1000 ms, which ends the 6 attempts well inside
  // getVars' default 30 s timeout, so a waiting caller learns why rather than timing out.
  const backoff = new RestartBackoff();
  const delays = [1, 2, 3, 4, 5].map((n) => backoff.delayFor(n));
  assert.deepEqual(delays, [100, 400, 900, 1000, 1000]);
  assert.ok(
    delays.reduce((a, b) => a + b, 0) < 30_000 / 2,
    `the delays (${delays.join(', ')} ms) fit well inside the 30 s default timeout`,
  );

  // A new getVars after giving up starts a fresh series of attempts.
  await assert.rejects(getVars(name, { timeout: 300 }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_TIMEOUT');
    return true;
  });
  await waitFor('a fresh attempt (generation 6) after the cap', () =>
    readEvents(tmp.dir).some((e) => e.name === name && e.generation === '6' && e.event === 'start'),
  );
});

test('lazy cap: maxLazy 2 → the 3rd distinct lazily started name fails with SK_ERR_LAZY_CAP (declared names do not count)', async () => {
  const dir = tempDir('sk-lib-cap-');
  try {
    const r = await scenario('lazy-cap', dir.dir);
    assert.equal(r.noEntrypoint, 'SK_ERR_NO_ENTRYPOINT', 'no configure() and no SIDEKICK_ENTRYPOINT');
    assert.equal(r.declared, 'ok');
    assert.equal(r.one, 'ok');
    assert.equal(r.two, 'ok');
    assert.equal(r.three, 'SK_ERR_LAZY_CAP');
    assert.equal(r.threeInArray, 'SK_ERR_LAZY_CAP');
    assert.equal(r.sendTask, 'SK_ERR_LAZY_CAP');
    assert.equal(r.requestTask, 'SK_ERR_LAZY_CAP');
    assert.equal(r.oneAgain, 'ok', 'names already started stay available');
    assert.match(String(r.message), /maxLazy = 2/);
    assert.match(String(r.message), /"lazy\.six"/);
  } finally {
    dir.cleanup();
  }
});

test('stuck sidekicks (busy loop; ignoring the signal) are terminated after stopGraceMs and shutdown completes', async () => {
  const dir = tempDir('sk-lib-stuck-');
  try {
    const r = await scenario('stuck', dir.dir);
    assert.equal(r.waiting, 'SK_ERR_STOPPED', 'a getVars still waiting at shutdown is rejected');
    // Each stuck thread was terminated once, by the grace-period path (the line names the 300 ms grace that elapsed),
    // and the scenario then ended by itself with status 0 (scenario() checks both): shutdown did not hang.
    const stderr = String(r.stderr);
    for (const name of ['busy.s', 'ignorer.s']) {
      const terminated = logLines(stderr).filter(
        (l) => l.sidekick === name && String(l.msg).includes('did not stop within its grace period'),
      );
      assert.equal(terminated.length, 1, `${name} force-terminated once\n${stderr}`);
      assert.equal(terminated[0]!.graceMs, 300, `after the configured stopGraceMs\n${stderr}`);
    }
    const events = readEvents(dir.dir);
    assert.ok(events.some((e) => e.name === 'busy.s' && e.event === 'spinning'));
    assert.ok(events.some((e) => e.name === 'ignorer.s' && e.event === 'ignoring'));
  } finally {
    dir.cleanup();
  }
});

test('every: runs repeatedly, never overlapping; stop ends the sleep between runs at once (no grace needed)', async () => {
  const dir = tempDir('sk-lib-every-');
  try {
    const r = await scenario('every', dir.dir);
    assert.ok(Number(r.runs) >= 4, `ran repeatedly: ${String(r.runs)}`);
    assert.equal(r.maxRunning, 1, 'a run longer than the period never overlaps the next');
    const events = readEvents(dir.dir).filter((e) => e.name === 'every.slow');
    // From the marks: each run ends before the next begins.
    let open = 0;
    for (const e of events) {
      if (e.event.startsWith('run-begin')) open++;
      if (e.event.startsWith('run-end')) open--;
      assert.ok(open <= 1, `overlapping runs: ${JSON.stringify(events)}`);
    }
    assert.ok(events.filter((e) => e.event.startsWith('run-begin')).length >= 4);
    // everyfast.f sleeps 5 s between runs and stopGraceMs is 10 s: the thread must end by itself (its 'exit' hook
    // only runs on a clean exit, never on terminate) and shutdown must not wait for the sleep or the grace.
    const fast = readEvents(dir.dir).filter((e) => e.name === 'everyfast.f');
    assert.deepEqual(
      fast.map((e) => e.event),
      ['run', 'exit-clean'],
      'one run, then a clean exit at stop (not a terminate)',
    );
    // The 10 s grace was not needed: no thread was terminated, and everyfast.f's clean exit above came from its stop
    // signal ending the 5 s sleep (a terminated thread never runs its 'exit' hook).
    assert.doesNotMatch(String(r.stderr), /terminating its thread/);
  } finally {
    dir.cleanup();
  }
});

test('library mode takes its entrypoint from SIDEKICK_ENTRYPOINT when configure() is not called', async () => {
  const dir = tempDir('sk-lib-env-');
  try {
    const r = await scenario('env', dir.dir, { SIDEKICK_ENTRYPOINT: ENTRYPOINT });
    assert.equal(r.name, 'lazy.env');
  } finally {
    dir.cleanup();
  }
});

// shutdown() forgets the snapshots, so after configure() with another entrypoint getVars starts that one.
test("after shutdown() and configure(), getVars does not answer with the stopped runtime's snapshot", async () => {
  const dir = tempDir('sk-lib-re-');
  try {
    const r = await scenario('reconfigure', dir.dir);
    assert.equal(r.after, 'SK_ERR_BOOT_FAILED', 'the new entrypoint does not exist: it must be tried and fail');
    // It gave up after the one attempt that maxBootFailures: 1 allows (the default, 6, would show 6 attempts).
    const stderr = String(r.stderr);
    const failures = logLines(stderr).filter((l) => l.sidekick === 'lazy.re' && l.msg === 'sidekick boot failure');
    assert.deepEqual(
      failures.map((l) => l.attempt),
      [1],
      `one boot attempt of the new runtime\n${stderr}`,
    );
    const gaveUp = logLines(stderr).filter((l) => l.sidekick === 'lazy.re' && l.msg === 'sidekick gave up booting');
    assert.equal(gaveUp.length, 1, stderr);
    assert.match(String(gaveUp[0]!.err), /failed to boot 1 times in a row/);
  } finally {
    dir.cleanup();
  }
});
