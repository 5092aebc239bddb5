// B3: hello-world req/s under `sidekick serve` (N HTTP workers reading vars on every request) vs a bare node:cluster
// server with the same N and the same handler minus readVars.
//
// Target (DESIGN "Performance targets"): sidekick serve ≥ 95% of bare node:cluster.
//
// Method. Both servers run side by side on their own ports (each idle while the other is measured), are warmed up,
// then measured alternately A B A B A B with the same generator and the same duration (wrk -t2 -c64 -d8s, or the Node
// fallback when wrk is missing); the medians of the 3 runs each are compared. The response bytes are identical
// ("hello world\n", text/plain). The load generator shares the machine's cores with the servers (2 cores here): the
// absolute req/s are therefore those of a contended box, but both sides see the same contention. As a second view
// that other processes on a shared machine disturb much less, the servers' own CPU time per request (user + system,
// all processes and threads of each server, from /proc) is reported too: bare / sidekick CPU per request in %, with
// the same ≥ 95% reading.
//
// Usage: node --import tsx bench/runtime-b3-throughput.ts [--workers 2,4] [--runs 3] [--seconds 8] [--order abab|abba]
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FIXTURES,
  SIDEKICK_BIN,
  arg,
  freePort,
  load,
  machine,
  median,
  report,
  startServer,
  treeCpuSeconds,
  which,
  type Server,
} from './fixtures/runtime-util.ts';

const BENCH = 'B3';
const WORKER_COUNTS = arg('workers', '2,4')
  .split(',')
  .map(Number)
  .filter((n) => Number.isInteger(n) && n > 0 && n <= 16);
const RUNS = Math.min(9, Math.max(1, Number(arg('runs', '3'))));
const SECONDS = Math.min(60, Math.max(1, Number(arg('seconds', '8'))));
const WARMUP_S = 5;
const ORDER = arg('order', 'abab') === 'abba' ? 'abba' : 'abab';
const LOAD = { threads: 2, connections: 64 };

console.log(`B3 throughput — ${machine()}; load: ${which('wrk') ? 'wrk' : 'Node fallback (wrk not found)'}`);

for (const n of WORKER_COUNTS) {
  const dir = mkdtempSync(join(tmpdir(), 'sidekick-b3-'));
  const servers: Server[] = [];
  try {
    const skPort = await freePort();
    const sk = await startServer(
      [SIDEKICK_BIN, 'serve', '-c', join(FIXTURES, 'b3.config.mjs')],
      { BENCH_PORT: String(skPort), BENCH_WORKERS: String(n), BENCH_ADMIN_SOCKET: join(dir, 'admin.sock') },
      `http://127.0.0.1:${skPort}/`,
    );
    servers.push(sk);
    const barePort = await freePort();
    const bare = await startServer(
      [join(FIXTURES, 'b3-bare-cluster.mjs')],
      { BENCH_PORT: String(barePort), BENCH_WORKERS: String(n) },
      `http://127.0.0.1:${barePort}/`,
    );
    servers.push(bare);
    const urls = { sidekick: `http://127.0.0.1:${skPort}/`, bare: `http://127.0.0.1:${barePort}/` };

    // Warm-up (JIT, connection setup in both clusters); not counted.
    await load(urls.sidekick, { ...LOAD, seconds: WARMUP_S });
    await load(urls.bare, { ...LOAD, seconds: WARMUP_S });

    const pids = { sidekick: sk.pid, bare: bare.pid };
    const rps: Record<'sidekick' | 'bare', number[]> = { sidekick: [], bare: [] };
    const cpuUs: Record<'sidekick' | 'bare', number[]> = { sidekick: [], bare: [] };
    for (let i = 0; i < RUNS; i++) {
      // abab (default): sidekick first in every pair; abba: the first side alternates, cancelling a drift in time.
      const sides = ORDER === 'abba' && i % 2 ? (['bare', 'sidekick'] as const) : (['sidekick', 'bare'] as const);
      for (const side of sides) {
        const cpu0 = treeCpuSeconds(pids[side]);
        const r = await load(urls[side], { ...LOAD, seconds: SECONDS });
        const cpu1 = treeCpuSeconds(pids[side]);
        if (r.errors > 0) throw new Error(`${side}: ${r.errors} errors during the run`);
        rps[side].push(r.rps);
        const perReq =
          cpu0 !== undefined && cpu1 !== undefined && r.requests > 0 ? ((cpu1 - cpu0) * 1e6) / r.requests : NaN;
        cpuUs[side].push(perReq);
        console.log(
          `  workers=${n} run ${i + 1} ${side.padEnd(8)} ${r.rps.toFixed(0).padStart(6)} req/s (${r.requests} requests, server CPU ${perReq.toFixed(1)} µs/req, load avg ${loadavg()[0]!.toFixed(2)})`,
        );
      }
    }
    const a = median(rps.sidekick);
    const b = median(rps.bare);
    console.log(
      `  workers=${n}: sidekick serve ${a.toFixed(0)} req/s vs bare ${b.toFixed(0)} req/s → ${((a / b) * 100).toFixed(1)}%`,
    );
    const ca = median(cpuUs.sidekick);
    const cb = median(cpuUs.bare);
    if (Number.isFinite(ca) && Number.isFinite(cb)) {
      report({ bench: BENCH, metric: `workers=${n} sidekick serve server CPU per request`, value: ca, unit: 'µs' });
      report({ bench: BENCH, metric: `workers=${n} bare node:cluster server CPU per request`, value: cb, unit: 'µs' });
      report({
        bench: BENCH,
        metric: `workers=${n} bare / sidekick CPU per request`,
        value: (cb / ca) * 100,
        unit: '%',
      });
    }
    report({ bench: BENCH, metric: `workers=${n} sidekick serve (median of ${RUNS})`, value: a, unit: 'req/s' });
    report({ bench: BENCH, metric: `workers=${n} bare node:cluster (median of ${RUNS})`, value: b, unit: 'req/s' });
    // Adjacent runs share the machine's state most closely: the median of the per-pair ratios is a second,
    // noise-robust view of the same comparison (informational; the target is read on the ratio of medians).
    const paired = median(rps.sidekick.map((x, i) => (x / rps.bare[i]!) * 100));
    report({ bench: BENCH, metric: `workers=${n} sidekick / bare, median of paired runs`, value: paired, unit: '%' });
    report({
      bench: BENCH,
      metric: `workers=${n} sidekick / bare`,
      value: (a / b) * 100,
      unit: '%',
      target: { op: '>=', value: 95 },
    });
  } finally {
    for (const s of servers.reverse()) await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
