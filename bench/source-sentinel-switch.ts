// B8 — Redis Sentinel failover: Sentinel's `+switch-master` → every HTTP worker reads the new master
// (docs/benchmarks.md "B8"). Target (DESIGN "Performance targets"): p99 ≤ 50 ms.
//
// Method. A real group (test/helpers/redis.ts: a master, a replica and three sentinels, quorum 2, on free loopback
// ports) and a real `sidekick serve` with WORKERS HTTP workers whose `redis` sidekick is the redis-sentinel source and
// whose handler is test/fixtures/redis-sentinel/app.mjs: each worker's onVars listener records when a new master
// landed, with process.hrtime (CLOCK_MONOTONIC: one clock for every process of the machine; checked first, as in B2),
// and answers on its own control port. A separate subscriber here, on all three sentinels, timestamps the first
// `+switch-master` of each failover with the same clock. FAILOVERS times: wait until the group is settled (the old
// master turned into a healthy replica, every sentinel agreeing), send SENTINEL FAILOVER to a sentinel taken in turn,
// wait for the switch and for every worker to read the new master; the sample is (latest worker's landing) − (first
// announcement), i.e. until *every* worker has it. Per-worker latencies are reported too. Optionally a steady write
// load (--load) on the shared port while it happens.
// Cross-check: the subscriber is a process like the others, so on a loaded machine it can be woken later than the
// source's thread (a negative sample). Each failover is also timed from the time the sentinels' own logs give the
// switch (the earliest `+switch-master` line, wall clock with ms resolution, mapped onto the monotonic clock by an
// offset read at the same moment; truncation to the ms makes these up to 1 ms longer than the truth).
//
//   node --import tsx bench/source-sentinel-switch.ts [--failovers 10] [--workers 2] [--load]
//   npm run bench -- --only sentinel
//
// Needs redis-server and redis-sentinel (apt-get install redis-server redis-sentinel): without them it prints SKIP.
import http from 'node:http';
import { readFileSync, readdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import {
  masterPort,
  redisCall,
  redisMissing,
  startSentinelGroup,
  waitSettled,
  watchSwitches,
} from '../test/helpers/redis.ts';
import { ROOT, startServe, tempDir, waitFor, type ServeProcess } from '../test/helpers/serve.ts';
import { arg, machine, median, percentile, report, skip, sleep } from './fixtures/runtime-util.ts';

const BENCH = 'B8';
const FAILOVERS = Math.min(50, Math.max(1, Number(arg('failovers', '10'))));
const WORKERS = Math.min(8, Math.max(1, Number(arg('workers', '2'))));
const LOAD = process.argv.includes('--load');
const HANDLER = join(ROOT, 'test', 'fixtures', 'redis-sentinel', 'app.mjs');
const now = (): number => Number(process.hrtime.bigint()) / 1e6;

interface View {
  pid: number;
  master: string | null;
  seen: { master: string; at: number }[];
}

function getJson<T>(port: number, path: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString('utf8')));
      res.on('end', () => resolve(JSON.parse(body) as T));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
  });
}

/**
 * Wall clock − monotonic clock, in ms. Date.now() is whole ms (truncated): the largest difference over a couple of
 * ms of samples is the one read just after a tick, within ~0.01 ms of the true offset.
 */
function wallOffset(): number {
  let best = -Infinity;
  const until = now() + 3;
  while (now() < until) best = Math.max(best, Date.now() - now());
  return best;
}

/** The earliest `+switch-master name … from … to` logged at or after `sinceWall`, as a monotonic-clock ms. */
function loggedSwitch(from: number, to: number, sinceWall: number): number | undefined {
  const needle = `+switch-master ${group.name} 127.0.0.1 ${from} 127.0.0.1 ${to}`;
  let earliest: number | undefined;
  for (const s of group.sentinels) {
    for (const line of readFileSync(s.log, 'utf8').split('\n')) {
      if (!line.endsWith(needle)) continue;
      // `<pid>:X 28 Nov 2026 07:48:58.720 # +switch-master …`, local time like Date's parser.
      const m = /^\d+:X (.+?) [#*.-] /.exec(line);
      const wall = m ? new Date(m[1]!).getTime() : NaN;
      if (wall >= sinceWall && (earliest === undefined || wall < earliest)) earliest = wall;
    }
  }
  return earliest === undefined ? undefined : earliest - wallOffset();
}

function controlPorts(dir: string): number[] {
  return readdirSync(dir)
    .filter((f) => /^worker-\d+\.json$/.test(f))
    .map((f) => (JSON.parse(readFileSync(join(dir, f), 'utf8')) as { port: number }).port);
}

/** As in B2: each worker's clock reading lies between two of ours, or the latencies below would mean nothing. */
async function checkClock(ports: number[]): Promise<void> {
  for (const port of ports) {
    for (let i = 0; i < 20; i++) {
      const before = now();
      const { now: theirs } = await getJson<{ now: number }>(port, '/clock');
      const after = now();
      if (theirs < before || theirs > after) throw new Error(`clock check failed: ${before} ≤ ${theirs} ≤ ${after}`);
    }
  }
}

/** A paced keep-alive write load on the shared port (--load): 4 loops, a request every ~3 ms each. */
function writeLoad(port: number): { stop(): Promise<{ ok: number; failed: number }> } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  let stopped = false;
  let ok = 0;
  let failed = 0;
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/write', agent, timeout: 5000 }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode === 200) ok++;
          else failed++;
          resolve();
        });
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', () => {
        failed++;
        resolve();
      });
    });
  const started = Date.now();
  const loops = Array.from({ length: 4 }, async () => {
    while (!stopped && Date.now() - started < 30 * 60_000) {
      await one();
      await sleep(3);
    }
  });
  return {
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      agent.destroy();
      return { ok, failed };
    },
  };
}

const missing = redisMissing();
if (missing) {
  skip(BENCH, 'Sentinel switch time', missing);
  process.exit(0);
}

console.log(`B8 +switch-master → every worker — ${machine()}; load average ${loadavg().map((l) => l.toFixed(2))}`);
const group = await startSentinelGroup({ name: 'b8', downAfterMs: 1000, failoverTimeoutMs: 2000 });
const { dir, cleanup } = tempDir('sk-b8-');
let serve: ServeProcess | undefined;
const switches = await watchSwitches(group, now);
try {
  const started = await startServe(
    dir,
    [
      {
        name: 'b8',
        workers: WORKERS,
        handler: HANDLER,
        sidekicks: {
          declare: {
            redis: {
              start: 'boot',
              source: { type: 'redis-sentinel', sentinels: group.sentinelAddrs, name: group.name },
            },
          },
        },
      },
    ],
    { SIDEKICK_LOG_LEVEL: 'warn' },
  );
  serve = started.serve;
  await serve.waitReady((s) => serve!.sidekick(s, 'b8', 'redis')?.ready === true);
  const ports = await waitFor('every worker to report a control port', () => {
    const p = controlPorts(dir);
    return p.length === WORKERS ? p : undefined;
  });
  await checkClock(ports);
  const load = LOAD ? writeLoad(started.ports.b8!) : undefined;

  const all: number[] = []; // per failover: until every worker has the new master
  const perWorker: number[] = [];
  const fromLog: number[] = []; // the same, from the sentinels' logged switch time
  for (let i = 0; i < FAILOVERS; i++) {
    const from = await masterPort(group);
    const to = group.servers.map((s) => s.port).find((p) => p !== from)!;
    await waitSettled(group, from, to, 60_000);
    const sentinel = group.sentinels[i % group.sentinels.length]!;
    const before = switches.switches.length;
    const sentWall = Math.floor(Date.now());
    await redisCall(sentinel.port, ['SENTINEL', 'FAILOVER', group.name]);
    const sw = await waitFor(
      `+switch-master ${from} → ${to}`,
      () => switches.switches.slice(before).find((s) => s.from === from && s.to === to),
      { timeoutMs: 30_000 },
    );
    const addr = `127.0.0.1:${to}`;
    const views = await waitFor(
      `every worker on ${addr}`,
      async () => {
        const v = await Promise.all(ports.map((p) => getJson<View>(p, '/view')));
        return v.every((w) => w.master === addr) ? v : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 20 },
    );
    const lat = views.map((w) => w.seen.filter((s) => s.master === addr).at(-1)!.at - sw.at);
    perWorker.push(...lat);
    all.push(Math.max(...lat));
    const logged = loggedSwitch(from, to, sentWall);
    const last = Math.max(...views.map((w) => w.seen.filter((s) => s.master === addr).at(-1)!.at));
    if (logged !== undefined) fromLog.push(last - logged);
    console.log(
      `  failover ${i + 1}/${FAILOVERS} ${from} → ${to} (SENTINEL FAILOVER on ${sentinel.port}): every worker after ` +
        `${Math.max(...lat).toFixed(2)} ms (${lat.map((l) => l.toFixed(2)).join(', ')}); from the logged switch ` +
        `${logged === undefined ? '?' : (last - logged).toFixed(2)} ms`,
    );
  }
  if (load) {
    const { ok, failed } = await load.stop();
    console.log(`  write load: ${ok} ok, ${failed} failed (503 while a master was switching, or READONLY)`);
  }
  const s = [...all].sort((a, b) => a - b);
  const w = [...perWorker].sort((a, b) => a - b);
  const m = `${WORKERS} workers${LOAD ? ', write load' : ''}`;
  report({ bench: BENCH, metric: `+switch-master → every worker (${m}) p50`, value: percentile(s, 50), unit: 'ms' });
  report({
    bench: BENCH,
    metric: `+switch-master → every worker (${m}) p99`,
    value: percentile(s, 99),
    unit: 'ms',
    target: { op: '<=', value: 50 },
    note: `${s.length} failovers`,
  });
  report({ bench: BENCH, metric: `+switch-master → every worker (${m}) max`, value: s[s.length - 1]!, unit: 'ms' });
  report({ bench: BENCH, metric: `+switch-master → one worker (${m}) median`, value: median(w), unit: 'ms' });
  const l = [...fromLog].sort((a, b) => a - b);
  report({ bench: BENCH, metric: `logged switch → every worker (${m}) p50`, value: percentile(l, 50), unit: 'ms' });
  report({
    bench: BENCH,
    metric: `logged switch → every worker (${m}) p99`,
    value: percentile(l, 99),
    unit: 'ms',
    target: { op: '<=', value: 50 },
    note: `${l.length} failovers`,
  });
} finally {
  switches.close();
  if (serve) {
    await serve.stop().catch(() => undefined);
    await serve.kill();
  }
  await group.stop();
  cleanup();
}
