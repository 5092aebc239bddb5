// Tasks (issue 21): requestTask → handler → result round trip of an empty task, p50/p99, for
//   one   — a sidekick without `tasks` (one thread, every task posted at once)
//   pool  — a task pool (declare.NAME.tasks, threads = --threads, default availableParallelism)
//   piscina — piscina, the pool users would pick instead, tuned as its README advises: its own default thread counts
//             (min availableParallelism, max 1.5×), atomics 'sync' (its default), an explicit idleTimeout so threads
//             are not torn down between tasks, maxQueue 'auto'; and piscina with atomics 'disabled' (postMessage
//             only, as Sidekick does)
// all in this process (library mode), one task at a time, variants interleaved in blocks of --block round trips.
// Then 4 CPU-bound tasks at once: wall time with a pool of 4 threads vs one thread (median of --cpu-rounds,
// interleaved), and their ratio (the ideal is 1/min(4, cores)).
//
//   npm run build && node --import tsx bench/tasks-pool.ts [--rounds 20000] [--block 500] [--spin 150000000]
//                                                          [--cpu-rounds 5] [--threads N]
// Beside each latency: the CPU time of this whole process (main thread and every worker thread) per round trip,
// which carries across machines better than a latency on a shared 2-core VM.
import { availableParallelism, cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { configure, requestTask, shutdown } from 'sidekick-runtime';
import { report } from './fixtures/runtime-util.ts';

const arg = (name: string, def: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const ROUNDS = arg('rounds', 20_000);
const BLOCK = arg('block', 500);
const SPIN = arg('spin', 150_000_000);
const CPU_ROUNDS = arg('cpu-rounds', 5);
const THREADS = arg('threads', availableParallelism());
const entry = (f: string): string => fileURLToPath(new URL(`./fixtures/${f}`, import.meta.url));

configure({
  entrypoint: entry('tasks-sidekick.mjs'),
  app: 'bench',
  taskQueue: 100_000,
  declare: {
    one: {},
    pool: { tasks: { threads: THREADS, queue: 100_000 } },
    pool4: { tasks: { threads: 4, queue: 100_000 } },
  },
});
const piscina = new Piscina({ filename: entry('tasks-piscina-worker.mjs'), idleTimeout: 60_000, maxQueue: 'auto' });
const piscinaNoAtomics = new Piscina({
  filename: entry('tasks-piscina-worker.mjs'),
  idleTimeout: 60_000,
  maxQueue: 'auto',
  atomics: 'disabled',
});

type Variant = { name: string; run: (payload: unknown) => Promise<unknown> };
const variants: Variant[] = [
  { name: 'one', run: (p) => requestTask('one', p) },
  { name: 'pool', run: (p) => requestTask('pool', p) },
  { name: 'piscina', run: (p) => piscina.run(p) },
  { name: 'piscina-noatomics', run: (p) => piscinaNoAtomics.run(p) },
];

const pct = (sorted: number[], p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;

console.log(
  `node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model}), load ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}, pool threads ${THREADS}, piscina threads ${piscina.options.minThreads}–${piscina.options.maxThreads}`,
);

// Warm-up: every thread started and JIT-warm.
for (const v of variants) for (let i = 0; i < 2000; i++) await v.run(null);
await Promise.all(Array.from({ length: 8 }, () => requestTask('pool4', null)));

const samples = new Map<string, number[]>(variants.map((v) => [v.name, []]));
const cpuMicros = new Map<string, number>(variants.map((v) => [v.name, 0]));
for (let done = 0; done < ROUNDS; done += BLOCK) {
  for (const v of variants) {
    const out = samples.get(v.name)!;
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < BLOCK; i++) {
      const t0 = process.hrtime.bigint();
      await v.run(null);
      out.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    const cpu = process.cpuUsage(cpu0);
    cpuMicros.set(v.name, cpuMicros.get(v.name)! + cpu.user + cpu.system);
  }
}
for (const v of variants) {
  const s = samples.get(v.name)!.sort((a, b) => a - b);
  const p50 = pct(s, 0.5);
  const p99 = pct(s, 0.99);
  const cpu = cpuMicros.get(v.name)! / s.length;
  console.log(
    `empty task round trip  ${v.name.padEnd(18)} p50 ${p50.toFixed(1)} µs  p99 ${p99.toFixed(1)} µs  CPU ${cpu.toFixed(1)} µs/task  (n=${s.length})`,
  );
  report({ bench: 'tasks', metric: `empty round trip CPU ${v.name}`, value: Number(cpu.toFixed(1)), unit: 'µs/task' });
  report({ bench: 'tasks', metric: `empty round trip p50 ${v.name}`, value: Number(p50.toFixed(1)), unit: 'µs' });
  report({ bench: 'tasks', metric: `empty round trip p99 ${v.name}`, value: Number(p99.toFixed(1)), unit: 'µs' });
}

// 4 CPU-bound tasks at once.
const wall = { pool4: [] as number[], one: [] as number[] };
// Cores the process kept busy during the round (CPU time of all its threads / wall time): what the pool buys when
// other processes share the cores, where the wall-time ratio alone mostly measures the neighbours.
const cores = { pool4: [] as number[], one: [] as number[] };
for (let r = 0; r < CPU_ROUNDS; r++) {
  for (const name of ['pool4', 'one'] as const) {
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    await Promise.all(Array.from({ length: 4 }, () => requestTask(name, { spin: SPIN }, { timeout: 600_000 })));
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    wall[name].push(ms);
    cores[name].push((cpu.user + cpu.system) / 1000 / ms);
  }
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const w4 = median(wall.pool4);
const w1 = median(wall.one);
console.log(
  `4 CPU-bound tasks: pool of 4 ${w4.toFixed(0)} ms (${wall.pool4.map((x) => x.toFixed(0)).join(', ')}), one thread ${w1.toFixed(0)} ms (${wall.one.map((x) => x.toFixed(0)).join(', ')}), ratio ${(w4 / w1).toFixed(2)} (ideal ${(1 / Math.min(4, cpus().length)).toFixed(2)} on ${cpus().length} CPUs)`,
);
console.log(
  `cores busy during the round: pool of 4 ${median(cores.pool4).toFixed(2)} (${cores.pool4.map((x) => x.toFixed(2)).join(', ')}), one thread ${median(cores.one).toFixed(2)} (${cores.one.map((x) => x.toFixed(2)).join(', ')})`,
);
report({
  bench: 'tasks',
  metric: '4 CPU tasks cores busy, pool of 4',
  value: Number(median(cores.pool4).toFixed(2)),
  unit: 'cores',
});
report({
  bench: 'tasks',
  metric: '4 CPU tasks cores busy, one thread',
  value: Number(median(cores.one).toFixed(2)),
  unit: 'cores',
});
report({ bench: 'tasks', metric: '4 CPU tasks wall, pool of 4', value: Math.round(w4), unit: 'ms' });
report({ bench: 'tasks', metric: '4 CPU tasks wall, one thread', value: Math.round(w1), unit: 'ms' });
report({ bench: 'tasks', metric: '4 CPU tasks wall ratio pool4/one', value: Number((w4 / w1).toFixed(3)), unit: 'x' });
console.log(
  `load after: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`,
);

await Promise.all([piscina.destroy(), piscinaNoAtomics.destroy(), shutdown()]);
