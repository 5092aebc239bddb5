// `sidekick serve` with the top-level metrics.listen: Prometheus text at /metrics for the whole instance. The series
// move with what happens (a publish, a sidekick crash, a SIGHUP reload), counters never go back, every sample line
// parses; with an agent inside serve its sidekick_agent_* series are on the same endpoint, and agent.metrics.listen
// keeps serving the agent's own series alone.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { agentConfig, record, sendOnce } from './helpers/agent.ts';
import { ServeProcess, freePort, httpGet, tempDir, waitFor, writeServeConfig, type AppSpec } from './helpers/serve.ts';

const tmp = tempDir('sk-serve-metrics-');
const serves: ServeProcess[] = [];

after(async () => {
  for (const s of serves) await s.kill();
  tmp.cleanup();
});

/** Starts `sidekick serve` on a config with `apps` plus top-level fields (metrics, agent). */
async function startWith(
  dir: string,
  apps: AppSpec[],
  top: Record<string, unknown>,
): Promise<{ serve: ServeProcess; ports: Record<string, number> }> {
  const { file, ports, adminSocket } = await writeServeConfig(dir, apps);
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeFileSync(file, JSON.stringify({ ...config, ...top }, null, 2));
  const serve = new ServeProcess(
    file,
    adminSocket,
    Object.fromEntries(apps.map((a) => [a.name, a.workers])),
    { SIDEKICK_LOG_LEVEL: 'info', SK_TEST_DIR: dir },
    dir,
  );
  serves.push(serve);
  return { serve, ports };
}

type Samples = Map<string, number>;

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"$/;

/** Every non-comment line must be `name{labels} value` (value a number); returns name{sorted labels} → value. */
function parse(text: string): Samples {
  const out: Samples = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = SAMPLE.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const value = Number(m[3]);
    assert.ok(!Number.isNaN(value) || m[3] === 'NaN', `not a number: ${JSON.stringify(line)}`);
    const labels = m[2] ? m[2].split(/,(?=[a-zA-Z_][a-zA-Z0-9_]*=")/) : [];
    for (const l of labels) assert.ok(LABEL.test(l), `bad label ${JSON.stringify(l)} in ${JSON.stringify(line)}`);
    out.set(key(m[1]!, Object.fromEntries(labels.map((l) => LABEL.exec(l)!.slice(1, 3) as [string, string]))), value);
  }
  return out;
}

function key(name: string, labels: Record<string, string> = {}): string {
  const l = Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${v}"`)
    .join(',');
  return l ? `${name}{${l}}` : name;
}

async function scrape(port: number): Promise<{ samples: Samples; text: string }> {
  const r = await httpGet(port, '/metrics', { timeoutMs: 10_000 });
  assert.equal(r.status, 200, r.text);
  assert.match(String(r.headers['content-type']), /^text\/plain/);
  return { samples: parse(r.text), text: r.text };
}

function get(samples: Samples, name: string, labels: Record<string, string> = {}): number {
  const v = samples.get(key(name, labels));
  assert.ok(v !== undefined, `no sample ${key(name, labels)}`);
  return v;
}

/** Scrapes until `ok(samples)` holds (bounded), returns those samples. */
function scrapeUntil(port: number, what: string, ok: (s: Samples) => boolean, timeoutMs = 15_000): Promise<Samples> {
  return waitFor(
    what,
    async () => {
      const { samples } = await scrape(port);
      return ok(samples) ? samples : undefined;
    },
    { timeoutMs, intervalMs: 50 },
  );
}

test('runtime metrics: publishes, a crash and a reload move the series; counters stay monotonic; the text parses', async () => {
  const dir = join(tmp.dir, 'a');
  mkdirSync(dir);
  const metricsPort = await freePort();
  const { serve, ports } = await startWith(
    dir,
    [{ name: 'm', workers: 2, sidekicks: { stopGraceMs: 2000, declare: { 'tasks.m': { start: 'boot' } } } }],
    { metrics: { listen: metricsPort } }, // a bare port binds 127.0.0.1
  );
  const port = ports.m!;
  await serve.waitReady((s) => serve.sidekick(s, 'm', 'tasks.m')?.ready === true);
  const sk = { app: 'm', sidekick: 'tasks.m' };
  const task = async (payload: unknown): Promise<unknown> => {
    const r = await httpGet(port, `/task?name=tasks.m&payload=${encodeURIComponent(JSON.stringify(payload))}`);
    return (JSON.parse(r.text) as { value: unknown }).value;
  };

  const s0 = await scrapeUntil(
    metricsPort,
    'both HTTP workers listening',
    (s) => s.get(key('sidekick_http_workers', { app: 'm', state: 'listening' })) === 2,
  );
  assert.equal(get(s0, 'sidekick_ready', sk), 1);
  assert.equal(get(s0, 'sidekick_state', { ...sk, state: 'running' }), 1);
  assert.equal(get(s0, 'sidekick_state', { ...sk, state: 'backoff' }), 0);
  assert.equal(get(s0, 'sidekick_starts_total', sk), 1);
  for (const reason of ['crash', 'boot_failure', 'clean_exit', 'reload'])
    assert.equal(get(s0, 'sidekick_restarts_total', { ...sk, reason }), 0, reason);
  assert.equal(get(s0, 'sidekick_generation', sk), 0);
  assert.equal(get(s0, 'sidekick_serve_reloads_total'), 0);
  assert.equal(get(s0, 'sidekick_http_worker_restarts_total', { app: 'm' }), 0);
  assert.ok(get(s0, 'sidekick_vars_bytes', sk) > 0);
  assert.ok(!s0.has(key('sidekick_agent_received_records_total')), 'no agent series without an agent');
  // The app's sidekick host process: its RSS (as the host reports it) and its restarts (issue 17).
  assert.equal(get(s0, 'sidekick_host_restarts_total', { app: 'm' }), 0);
  const hostRss = get(
    await scrapeUntil(
      metricsPort,
      "the sidekick host's RSS",
      (s) => (s.get(key('sidekick_host_rss_bytes', { app: 'm' })) ?? 0) > 0,
    ),
    'sidekick_host_rss_bytes',
    { app: 'm' },
  );
  assert.ok(hostRss > 10 * 2 ** 20 && hostRss < 2 ** 30, `a process's RSS in bytes: ${hostRss}`);
  const published0 = get(s0, 'sidekick_publishes_total', sk);
  const at0 = get(s0, 'sidekick_last_publish_timestamp_seconds', sk);
  assert.ok(published0 >= 1);
  assert.ok(Math.abs(at0 - Date.now() / 1000) < 120, `a Unix time in seconds: ${at0}`);

  // A publish with new content: publishes_total + 1, the timestamp moves, the bytes follow the snapshot.
  assert.equal(await task({ op: 'set', vars: { x: 'y'.repeat(1000) } }), 'set');
  const s1 = await scrapeUntil(
    metricsPort,
    'the publish',
    (s) => get(s, 'sidekick_publishes_total', sk) === published0 + 1,
  );
  assert.ok(get(s1, 'sidekick_last_publish_timestamp_seconds', sk) > at0, 'the last publish timestamp moved');
  assert.ok(get(s1, 'sidekick_vars_bytes', sk) >= 1001);
  assert.ok(get(s1, 'sidekick_tasks_sent_total', sk) >= 1);
  assert.ok(get(s1, 'sidekick_tasks_completed_total', sk) >= 1);
  assert.equal(get(s1, 'sidekick_tasks_in_flight', sk), 0);

  // A crash after its first publish: restarts{reason="crash"} + 1, starts + 1; it publishes again as generation 1.
  assert.equal(await task({ op: 'crash' }), 'crashing');
  const s2 = await scrapeUntil(
    metricsPort,
    'the crash restart and the next publish',
    (s) =>
      get(s, 'sidekick_restarts_total', { ...sk, reason: 'crash' }) === 1 &&
      get(s, 'sidekick_generation', sk) === 1 &&
      get(s, 'sidekick_publishes_total', sk) === published0 + 2,
  );
  assert.equal(get(s2, 'sidekick_starts_total', sk), 2);
  assert.equal(get(s2, 'sidekick_restarts_total', { ...sk, reason: 'reload' }), 0);
  assert.equal(get(s2, 'sidekick_ready', sk), 1, 'ready stays 1 across the restart');

  // SIGHUP: restarts{reason="reload"} + 1, reloads + 1, the workers are replaced (worker restarts are deaths, not rolls).
  serve.signal('SIGHUP');
  const s3 = await scrapeUntil(
    metricsPort,
    'the reload restart',
    (s) =>
      get(s, 'sidekick_restarts_total', { ...sk, reason: 'reload' }) === 1 &&
      get(s, 'sidekick_serve_reloads_total') === 1 &&
      get(s, 'sidekick_state', { ...sk, state: 'running' }) === 1,
    20_000,
  );
  assert.equal(get(s3, 'sidekick_starts_total', sk), 3);
  assert.equal(
    get(s3, 'sidekick_restarts_total', { ...sk, reason: 'crash' }),
    1,
    'the crash count survives the reload',
  );
  assert.equal(get(s3, 'sidekick_generation', sk), 2);
  assert.equal(get(s3, 'sidekick_http_worker_restarts_total', { app: 'm' }), 0);
  for (const [k, v] of s2)
    if (k.split('{')[0]!.endsWith('_total')) assert.ok((s3.get(k) ?? -1) >= v, `${k} went back: ${v} → ${s3.get(k)}`);

  const other = await httpGet(metricsPort, '/', { timeoutMs: 5_000 });
  assert.equal(other.status, 404);
  assert.deepEqual(await serve.stop(), { code: 0, signal: null });
});

test('with the agent inside serve: its sidekick_agent_* series are on /metrics too; agent.metrics.listen serves only them', async () => {
  const dir = join(tmp.dir, 'b');
  mkdirSync(dir);
  const [metricsPort, agentMetricsPort] = [await freePort(), await freePort()];
  const { serve } = await startWith(
    dir,
    [{ name: 'w', workers: 1, sidekicks: { declare: { 'gen.w': { start: 'boot' } } } }],
    {
      metrics: { listen: `127.0.0.1:${metricsPort}` },
      agent: agentConfig(dir, { metrics: { listen: `127.0.0.1:${agentMetricsPort}` } }),
    },
  );
  await serve.waitReady((s) => serve.sidekick(s, 'w', 'gen.w')?.ready === true);
  await sendOnce(join(dir, 'agent.sock'), record('a') + record('b'));
  const all = await scrapeUntil(
    metricsPort,
    'the agent to count two records',
    (s) => s.get(key('sidekick_agent_received_records_total')) === 2,
  );
  assert.equal(get(all, 'sidekick_ready', { app: 'w', sidekick: 'gen.w' }), 1, 'serve series on the same scrape');
  assert.equal(get(all, 'sidekick_agent_breaker_state'), 0);
  assert.ok(all.has(key('sidekick_agent_spool_bytes')));

  const { samples: agentOnly, text } = await scrape(agentMetricsPort);
  assert.equal(get(agentOnly, 'sidekick_agent_received_records_total'), 2);
  assert.ok(!/^sidekick_(?!agent_)/m.test(text), 'agent.metrics.listen carries only the agent series');
  assert.deepEqual(await serve.stop(), { code: 0, signal: null });
});

test('metrics.listen on a taken address: serve does not start (exit 1, SK_ERR_LISTEN naming metrics.listen)', async () => {
  const dir = join(tmp.dir, 'c');
  mkdirSync(dir);
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  try {
    const taken = (holder.address() as net.AddressInfo).port;
    const { serve } = await startWith(dir, [{ name: 'x', workers: 1 }], { metrics: { listen: `127.0.0.1:${taken}` } });
    let timer: NodeJS.Timeout | undefined;
    const exit = await Promise.race([
      serve.exited,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`serve still running\n${serve.logs()}`)), 20_000);
      }),
    ]).finally(() => clearTimeout(timer));
    assert.deepEqual(exit, { code: 1, signal: null }, serve.logs());
    assert.match(serve.stderr, new RegExp(`metrics\\.listen 127\\.0\\.0\\.1:${taken}: .*EADDRINUSE`));
  } finally {
    await new Promise<void>((resolve) => holder.close(() => resolve()));
  }
});
