// Logging never blocks an event loop (issue 16, item 1). `sidekick serve` and `sidekick agent` write their stderr into
// a FIFO that the test stops reading and fills: every further write to it would wait for a reader. Under load,
// through a reload, a sidekick crash loop, a file source publishing from its thread and an agent breaker flap, the
// processes go on: requests are answered, publishes reach the HTTP workers, the agent delivers every record, memory
// stays small. Their log lines are buffered (SIDEKICK_LOG_BUFFER_BYTES, small here) and then dropped and counted.
// When the FIFO is read again, each process writes one line saying how many lines it dropped, and for every live
// process: lines read + lines dropped = lines logged (status), and the notices add up to the dropped count.
import assert from 'node:assert/strict';
import { unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { agentScope } from './helpers/agent-scope.ts';
import { dedupedByBatchId, keysOf, sendLoad, type AgentStatus } from './helpers/agent.ts';
import {
  FIXTURES,
  freePort,
  getJson,
  httpGet,
  readEvents,
  startLoad,
  startServe,
  tempDir,
  waitFor,
  type LoadResult,
  type StatusJson,
} from './helpers/serve.ts';
import { StderrFifo, linesOf, rssOf, type LogLine } from './helpers/stderr-fifo.ts';

/** The app's sidekick host in a status (its pid and log counts). */
function hostOf(s: StatusJson): { pid: number | undefined; log: Logged } {
  return (s.apps.find((a) => a.name === 'web') as unknown as { sidekickHost: { pid: number; log: Logged } })
    .sidekickHost;
}

/** Small, so a few dozen lines fill it: the drops happen within the test's bounded load. */
const BUFFER_BYTES = 4096;
const RSS_LIMIT = 300 * 1024 * 1024;

interface Logged {
  lines: number;
  dropped: number;
}

/** The last lines read from the FIFO, for an assertion message. */
function tail(fifo: StderrFifo, n = 40): string {
  return fifo
    .lines()
    .slice(-n)
    .map((l) => JSON.stringify(l).slice(0, 300))
    .join('\n');
}

/** Waits until what the FIFO gave for `pid` matches its counts: read + dropped = logged, notices sum to dropped. */
async function countsAddUp(fifo: StderrFifo, what: string, pid: number, counts: () => Promise<Logged>): Promise<void> {
  let last = '';
  await waitFor(
    `${what} (pid ${pid}): lines read + dropped = logged, notices = dropped`,
    async () => {
      const c = await counts();
      const got = linesOf(fifo.lines(), pid);
      const noticed = got.notices.reduce((a, b) => a + b, 0);
      last =
        `logged ${c.lines}, dropped ${c.dropped}, read ${got.logged}, notices ${JSON.stringify(got.notices)}; ` +
        `read: ${JSON.stringify(
          fifo
            .lines()
            .filter((l) => l.pid === pid)
            .map((l) => l.msg),
        )}`;
      return got.logged + c.dropped === c.lines && noticed === c.dropped;
    },
    { timeoutMs: 20_000, intervalMs: 100 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last: ${last}`);
  });
}

test('serve with a blocked stderr: requests, publishes, a reload and a crash loop go on; drops are counted', async (t) => {
  const tmp = tempDir('sk-stderr-serve-');
  const fifo = new StderrFifo(tmp.dir);
  const flagsFile = join(tmp.dir, 'flags.json');
  const metricsPort = await freePort();
  writeFileSync(flagsFile, JSON.stringify({ v: '0' }));
  const { serve, ports } = await startServe(
    tmp.dir,
    [
      {
        name: 'web',
        workers: 2,
        handler: join(FIXTURES, 'faults.mjs'),
        sidekicks: {
          declare: {
            flags: { start: 'boot', source: { type: 'file', path: flagsFile } },
            'crashswitch.c': { start: 'boot' },
          },
        },
      },
    ],
    // debug: the file source logs each publish from its thread
    { SIDEKICK_LOG_LEVEL: 'debug', SIDEKICK_LOG_BUFFER_BYTES: String(BUFFER_BYTES) },
    { metrics: { listen: metricsPort } },
    { stderrTo: fifo.writeFd },
  );
  t.after(async () => {
    await serve.kill();
    fifo.close();
    tmp.cleanup();
  });
  const port = ports.web!;
  const crashloop = (s: StatusJson): number => serve.sidekick(s, 'web', 'crashswitch.c')?.generation ?? -1;
  const ready = await serve.waitReady(
    (s) =>
      serve.sidekick(s, 'web', 'flags')?.ready === true && serve.sidekick(s, 'web', 'crashswitch.c')?.ready === true,
  );
  const firstWorkers = serve.app(ready, 'web').workers.map((w) => w.pid!);

  fifo.block();
  const hello = startLoad({ port, path: '/hello', concurrency: 2, maxMs: 120_000, requestTimeoutMs: 5_000 });
  // Each /throw makes its HTTP worker log an error (with a stack): plenty of lines to drop. Its 500s close their
  // connection, so it runs before and after the reload, not across it: new connections during a roll are another
  // matter (issue 16, item 2; serve-reload.test.ts).
  const throwLoad = (): ReturnType<typeof startLoad> =>
    startLoad({ port, path: '/throw', concurrency: 2, maxMs: 120_000, requestTimeoutMs: 5_000 });
  const throwsDone: Promise<LoadResult>[] = [];
  let throws = throwLoad();
  try {
    // Publishes keep flowing: each new file content reaches the HTTP workers. Bad content in between makes the source
    // log from its thread (a warning, then "applied again"): lines that go through the sidekick host's writer.
    const sourceError = async (): Promise<boolean> =>
      Boolean(
        (serve.sidekick(await serve.status(), 'web', 'flags') as { sourceError?: string } | undefined)?.sourceError,
      );
    for (let v = 1; v <= 20; v++) {
      writeFileSync(flagsFile, '{ not json');
      await waitFor(`the flags source to report bad content (${v})`, sourceError);
      writeFileSync(flagsFile, JSON.stringify({ v: String(v) }));
      await waitFor(
        `flags v=${v} in the HTTP workers`,
        async () => (await getJson<{ v?: string }>(port, '/vars?name=flags')).v === String(v),
        { timeoutMs: 10_000 },
      );
    }
    await waitFor(
      'drops counted in the first HTTP workers',
      async () => serve.app(await serve.status(), 'web').logDropped > 0,
    );
    throws.stop();
    throwsDone.push(throws.done);
    // A reload: new HTTP workers start (their stderr is the same blocked FIFO) and listen, the old ones leave.
    serve.signal('SIGHUP');
    const reloaded = await serve.waitReady(
      (s) => s.reloads === 1 && serve.app(s, 'web').workers.every((w) => !firstWorkers.includes(w.pid!)),
      { what: 'the reload to replace both HTTP workers' },
    );
    const newWorkers = serve.app(reloaded, 'web').workers.map((w) => w.pid!);
    const answeredAtReload = new Map(newWorkers.map((p) => [p, hello.result.byPid.get(p) ?? 0]));
    throws = throwLoad();
    // A crash loop, after the reload (a reload or a stop that meets a crash loop is issue 16, items 3 and 4): each
    // crash is logged by the app's sidekick host, each new generation publishes.
    const gen = crashloop(await serve.status());
    writeFileSync(join(tmp.dir, 'crashloop.on'), '');
    await waitFor('three more crash-loop generations', async () => crashloop(await serve.status()) >= gen + 3, {
      timeoutMs: 30_000,
    });
    await waitFor('the HTTP workers to see a crash-loop generation published', async () => {
      const v = await getJson<{ generation?: string }>(port, '/vars?name=crashswitch.c');
      return Number(v.generation) >= gen + 3;
    });
    unlinkSync(join(tmp.dir, 'crashloop.on'));
    const stays = await waitFor('the crash loop to end', () =>
      readEvents(tmp.dir).find((e) => e.name === 'crashswitch.c' && e.event === 'stays' && Number(e.generation) > gen),
    );
    await waitFor('the last crash-loop generation to run', async () => {
      const s = serve.sidekick(await serve.status(), 'web', 'crashswitch.c');
      return s?.state === 'running' && String(s.generation) === stays.generation;
    });
    await waitFor('the new workers to answer', () =>
      newWorkers.every((p) => (hello.result.byPid.get(p) ?? 0) > answeredAtReload.get(p)! + 5),
    );
    // Lines were dropped (and counted) in the sidekick host and in the HTTP workers, not queued without bound.
    let seen: unknown;
    const blocked = await waitFor('drops counted in the sidekick host and the new workers', async () => {
      const s = await serve.status();
      const w = serve.app(s, 'web').workers;
      const host = hostOf(s);
      seen = { supervisor: s.log, host: host.log, workers: w.map((x) => x.log) };
      return host.log.dropped > 0 && w.every((x) => (x.log?.dropped ?? 0) > 0) ? s : undefined;
    }).catch((err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(seen)}`);
    });
    for (const pid of [serve.pid, hostOf(blocked).pid!, ...newWorkers])
      assert.ok(rssOf(pid) < RSS_LIMIT, `pid ${pid} RSS ${rssOf(pid)} bytes with stderr blocked`);
    t.diagnostic(
      `while blocked: supervisor logged ${blocked.log.lines}, dropped ${blocked.log.dropped}; sidekick host logged ` +
        `${hostOf(blocked).log.lines}, dropped ${hostOf(blocked).log.dropped}; ` +
        `HTTP workers dropped ${serve.app(blocked, 'web').logDropped} (gone ones included)`,
    );
  } finally {
    hello.stop();
    throws.stop();
    throwsDone.push(throws.done);
  }
  const h = await hello.done;
  assert.deepEqual(h.failures, [], 'every /hello was answered');
  assert.deepEqual(Object.keys(h.statuses), ['200']);
  let thrown = 0;
  for (const th of await Promise.all(throwsDone)) {
    assert.deepEqual(th.failures, [], 'every /throw was answered');
    assert.deepEqual(Object.keys(th.statuses), ['500']);
    thrown += th.total;
  }
  t.diagnostic(`answered while blocked: ${h.ok} /hello, ${thrown} /throw`);

  // Read stderr again: the counts add up for the supervisor and each live HTTP worker.
  fifo.unblock();
  const status = await serve.status();
  await countsAddUp(fifo, 'supervisor', serve.pid, async () => (await serve.status()).log);
  await countsAddUp(fifo, 'sidekick host', hostOf(status).pid!, async () => hostOf(await serve.status()).log);
  for (const w of serve.app(status, 'web').workers)
    await countsAddUp(fifo, 'HTTP worker', w.pid!, async () => {
      const now = serve.app(await serve.status(), 'web').workers.find((x) => x.pid === w.pid);
      return now?.log ?? { lines: -1, dropped: -1 };
    });
  const final = await serve.status();
  t.diagnostic(
    `after draining: supervisor ${final.log.lines} lines, ${final.log.dropped} dropped; workers ` +
      serve
        .app(final, 'web')
        .workers.map((w) => `${w.pid}: ${w.log?.lines} lines, ${w.log?.dropped} dropped`)
        .join('; '),
  );

  // The same counts on /metrics.
  const text = (await httpGet(metricsPort, '/metrics')).text;
  const dropped = await serve.status();
  assert.match(text, new RegExp(`^sidekick_log_dropped_lines_total ${dropped.log.dropped}$`, 'm'));
  assert.match(
    text,
    new RegExp(`^sidekick_host_log_dropped_lines_total\\{app="web"\\} ${hostOf(dropped).log.dropped}$`, 'm'),
  );
  const http = /^sidekick_http_log_dropped_lines_total\{app="web"\} (\d+)$/m.exec(text);
  assert.ok(http && Number(http[1]) > 0, `HTTP workers' drops on /metrics: ${http?.[0]}`);

  // The last line of a stop reaches a stderr that is read.
  const stopped = await serve.stop().catch((err: Error) => {
    throw new Error(`${err.message}\n${tail(fifo)}`);
  });
  assert.deepEqual(stopped, { code: 0, signal: null });
  await waitFor('the stop line', () => fifo.lines().some((l: LogLine) => l.pid === serve.pid && l.msg === 'stopped'));
});

test('agent with a blocked stderr and a flapping central: every record is delivered; drops are counted', async (t) => {
  const scope = agentScope(t);
  const fifo = new StderrFifo(scope.dir);
  t.after(() => fifo.close());
  // 503 and 200 in turns: the breaker opens at each failure and closes again at the next success (each logged).
  const central = await scope.startCentral((_req, n) => ({ status: n % 2 === 0 ? 503 : 200 }));
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs: 2_000 },
    batch: { maxRecords: 50, maxDelayMs: 50 },
    retry: { initialDelayMs: 10, maxDelayMs: 50 },
    breaker: { failures: 1, halfOpenAfterMs: 50 },
    metrics: { listen: `127.0.0.1:${await freePort()}` },
  });
  const agent = await scope.startAgent({
    stderrTo: fifo.writeFd,
    env: { SIDEKICK_LOG_LEVEL: 'debug', SIDEKICK_LOG_BUFFER_BYTES: String(BUFFER_BYTES) },
  });
  const workerPid = (await agent.status()).worker!.pid;

  fifo.block();
  const sent = await sendLoad(scope.sock, { connections: 4, count: 275, prefix: 'blocked' });
  assert.equal(sent.length, 1_100);
  await waitFor(
    'all 1,100 records delivered while stderr is blocked',
    () => {
      const got = new Set(keysOf(dedupedByBatchId(central)));
      return sent.every((k) => got.has(k));
    },
    { timeoutMs: 60_000 },
  );
  const flaps = central.requests.filter((r) => r.status === 503).length;
  assert.ok(flaps >= 2, `central answered 503 ${flaps} times`);
  for (const pid of [agent.pid, workerPid])
    assert.ok(rssOf(pid) < RSS_LIMIT, `pid ${pid} RSS ${rssOf(pid)} bytes with stderr blocked`);
  const blocked = await agent.status();
  t.diagnostic(
    `while blocked: ${flaps} answers 503; agent logged ${blocked.counters.logLines} lines, dropped ${blocked.counters.logDropped}`,
  );

  fifo.unblock();
  const supervisorLog = async (): Promise<Logged> => (await agent.status()).log!;
  const workerLog = async (): Promise<Logged> => {
    const s: AgentStatus = await agent.status();
    return { lines: s.counters.logLines - s.log!.lines, dropped: s.counters.logDropped - s.log!.dropped };
  };
  await countsAddUp(fifo, 'agent supervisor', agent.pid, supervisorLog);
  await countsAddUp(fifo, 'agent worker', workerPid, workerLog);
  const final = await agent.status();
  assert.ok(final.counters.logDropped > 0, 'the agent dropped lines while stderr was blocked');
  const metrics = (await httpGet(final.metrics!.port!, '/metrics')).text;
  assert.match(metrics, new RegExp(`^sidekick_agent_log_dropped_lines_total ${final.counters.logDropped}$`, 'm'));
  t.diagnostic(
    `after draining: supervisor ${final.log!.lines} lines, ${final.log!.dropped} dropped; worker ` +
      `${final.counters.logLines - final.log!.lines} lines, ${final.counters.logDropped - final.log!.dropped} dropped`,
  );

  assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  await waitFor('the stop line', () =>
    fifo.lines().some((l) => l.pid === agent.pid && l.msg === 'sidekick agent stopped'),
  );
});
