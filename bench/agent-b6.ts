// B6: agent memory under B4-style load with central DOWN (everything piles up in the spool), and the loss window
// on SIGKILL at the default sync setting.
//
//   npm run build && node --import tsx bench/agent-b6.ts [--seconds 40] [--rate 60000] [--kills 3]
//
// 1. RSS: 8 connections of 200-byte records at a fixed total rate (default 60 000 records/s, bounded to --seconds
//    seconds), exporter http to a port nobody listens on (breaker opens, retries forever). RSS of the worker and of
//    the supervisor sampled every second from /proc; reported: max, and the slope (least squares, MiB/min) over the
//    second half of the load (and from 10 s on). Target: worker ≤ 128 MB and flat.
// 2. Loss window: the same load at full speed, SIGKILL of the whole agent process group after ~1.5 s, restart with
//    a local central up; "acked by write" (records whose client write() completed, i.e. the kernel took them) versus
//    records found at central after the replay. Repeated --kills times.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { report } from './fixtures/runtime-util.ts';
import { median, sinkCount, spawnRole, startAgentRun, type RoleChild } from './agent-b4.ts';

function flag(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

function rssOf(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Least-squares slope of y over x. */
function slope(points: [number, number][]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((a, p) => a + p[0], 0) / n;
  const my = points.reduce((a, p) => a + p[1], 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

async function deadPort(): Promise<number> {
  const sink = spawnRole('sink', ['http']);
  const { port } = await sink.next((l) => 'port' in l, 10_000, 'port');
  sink.child.stdin!.end();
  sink.child.kill();
  await new Promise((r) => sink.child.on('exit', r));
  return Number(port);
}

const MiB = 1024 * 1024;

async function rssUnderOutage(seconds: number, rate: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sk-b6-'));
  const port = await deadPort();
  const agent = await startAgentRun(dir, {
    socket: join(dir, 'agent.sock'),
    spool: { dir: join(dir, 'spool') },
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest` },
  });
  try {
    const s0 = await agent.status();
    const workerPid = s0.worker?.pid;
    const perConn = Math.ceil((rate * seconds) / 8);
    const load = spawnRole('load', [join(dir, 'agent.sock'), '8', String(perConn), 'b6', String(rate)]);
    await load.next((l) => 'start' in l, 15_000, 'load start');
    const t0 = Date.now();
    const samples: { t: number; worker: number; supervisor: number }[] = [];
    while (Date.now() - t0 < (seconds + 5) * 1000) {
      await sleep(1000);
      const w = rssOf(workerPid);
      const sup = rssOf(agent.child.pid);
      if (w === undefined || sup === undefined) throw new Error('agent process vanished');
      samples.push({ t: (Date.now() - t0) / 1000, worker: w, supervisor: sup });
    }
    const done = await load.next((l) => 'done' in l, 60_000, 'load done');
    const st = await agent.status();
    // "Flat": the slope over the second half of the load (after heap sizing settled), and over all of it after 10 s.
    const steady = samples.filter((s) => s.t >= seconds / 2 && s.t <= seconds);
    const afterWarmup = samples.filter((s) => s.t >= 10 && s.t <= seconds);
    const maxWorker = Math.max(...samples.map((s) => s.worker));
    const maxSup = Math.max(...samples.map((s) => s.supervisor));
    const slopeWorker = slope(steady.map((s) => [s.t / 60, s.worker / MiB]));
    const slopeWarm = slope(afterWarmup.map((s) => [s.t / 60, s.worker / MiB]));
    console.log(
      `RSS under outage: ${Number(done.acked)} records written in ${Math.round(Number(done.ms))} ms ` +
        `(${Math.round(Number(done.acked) / (Number(done.ms) / 1000))}/s), spooled ${st.counters.spooled}, ` +
        `spool ${Math.round(st.gauges.spoolRecords)} records pending`,
    );
    console.log(`  samples (s: worker MiB / supervisor MiB):`);
    console.log(
      `  ${samples.map((s) => `${Math.round(s.t)}: ${(s.worker / MiB).toFixed(0)}/${(s.supervisor / MiB).toFixed(0)}`).join('  ')}`,
    );
    console.log(
      `  worker max ${(maxWorker / MiB).toFixed(1)} MiB, slope over the 2nd half of the load ${slopeWorker.toFixed(2)} ` +
        `MiB/min (from 10 s: ${slopeWarm.toFixed(2)} MiB/min); ` +
        `supervisor max ${(maxSup / MiB).toFixed(1)} MiB`,
    );
    report({
      bench: 'B6',
      metric: 'agent worker max RSS, central down',
      value: Math.round((maxWorker / 1e6) * 10) / 10,
      unit: 'MB',
      target: { op: '<=', value: 128 },
    });
    report({
      bench: 'B6',
      metric: 'agent worker RSS slope, 2nd half of the load',
      value: Math.round(slopeWorker * 100) / 100,
      unit: 'MiB/min',
    });
    report({
      bench: 'B6',
      metric: 'agent supervisor max RSS',
      value: Math.round((maxSup / 1e6) * 10) / 10,
      unit: 'MB',
    });
  } finally {
    await agent.kill9();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function lossWindow(kills: number): Promise<void> {
  const results: { acked: number; found: number; lost: number; rate: number }[] = [];
  for (let k = 0; k < kills; k++) {
    const dir = mkdtempSync(join(tmpdir(), 'sk-b6-kill-'));
    let sink: RoleChild | undefined;
    try {
      const port = await deadPort();
      const cfg = {
        socket: join(dir, 'agent.sock'),
        spool: { dir: join(dir, 'spool') },
        exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest` },
        breaker: { halfOpenAfterMs: 500 },
        retry: { maxDelayMs: 500 },
      };
      let agent = await startAgentRun(dir, cfg);
      const load = spawnRole('load', [join(dir, 'agent.sock'), '8', '400000', `k${k}`]);
      await load.next((l) => 'start' in l, 15_000, 'load start');
      await sleep(1500);
      await agent.kill9();
      const done = await load.next((l) => 'done' in l, 30_000, 'load done');
      const acked = Number(done.acked);
      sink = spawnRole('sink', ['http', String(port)]);
      await sink.next((l) => 'port' in l, 10_000, 'sink port');
      agent = await startAgentRun(dir, cfg);
      const recovered = (await agent.status()).pipeline?.spool?.recoveredRecords ?? 0;
      const until = Date.now() + 120_000;
      let found = 0;
      for (;;) {
        const s = await agent.status();
        found = await sinkCount(sink);
        if (s.gauges.spoolRecords === 0 && found >= recovered) break;
        if (Date.now() > until) throw new Error(`replay did not finish: found ${found}, recovered ${recovered}`);
        await sleep(100);
      }
      await agent.stop();
      const lost = acked - found;
      const rate = acked / 1.5;
      results.push({ acked, found, lost, rate });
      console.log(
        `  kill ${k + 1}: acked by write ${acked}, found after restart ${found}, lost ${lost} ` +
          `(≈ ${((lost / rate) * 1000).toFixed(1)} ms of ingest at ${Math.round(rate)}/s)`,
      );
    } finally {
      sink?.child.stdin!.end();
      sink?.child.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  report({
    bench: 'B6',
    metric: 'records lost on SIGKILL (median of kills)',
    value: median(results.map((r) => r.lost)),
    unit: 'records',
  });
  report({
    bench: 'B6',
    metric: 'loss window on SIGKILL (median, ms of ingest)',
    value: Math.round(median(results.map((r) => (r.lost / r.rate) * 1000)) * 10) / 10,
    unit: 'ms',
  });
}

const seconds = flag('seconds', 40);
const rate = flag('rate', 60_000);
const kills = flag('kills', 3);
console.log(`B6: ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}`);
await rssUnderOutage(seconds, rate);
console.log('Loss window on SIGKILL (default syncIntervalMs 100):');
await lossWindow(kills);
