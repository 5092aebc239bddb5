// Spool throughput: 200-byte NDJSON records appended + read back + acked, plain wall-clock timing.
//   node --import tsx bench/spool.ts [records=1000000] [runs=3]
//   node --import tsx bench/spool.ts --soak [records=20000000]   one long live run, RSS/heap sampled every 2 s
// Scenarios (each on a fresh temp dir, median of `runs`):
//   live      appender and exporter-like reader (batches of 100, ack each) at the same time — the agent's steady state
//   live-1k   same with batches of 1000
//   backlog   append everything, flush, then read back + ack (a replay after an outage)
//   sync0     live, with syncIntervalMs 0 (fsync after every write)
//   restart   backlog written, spool closed and reopened (recovery scan), then read back + ack
//   crc32     MB/s of the CRC in use and of the JS fallback (what Node 20.0-20.14, without zlib.crc32, would use)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../src/agent/queue/spool.ts';
import { crc32, crc32Impl, crc32Js } from '../src/agent/queue/crc32.ts';
import { pino } from 'pino';

const SOAK = process.argv[2] === '--soak';
const args = process.argv.slice(SOAK ? 3 : 2);
const N = Number(args[0] ?? (SOAK ? 20_000_000 : 1_000_000));
const RUNS = Number(args[1] ?? 3);
const log = pino({ level: 'silent' });

// 1000 distinct 200-byte lines, reused (the spool copies on append)
const LINES: Buffer[] = [];
for (let i = 0; i < 1000; i++) {
  const head = `{"t":"req","i":${i},"dur_us":${i * 7},"uri":"/p/`;
  LINES.push(Buffer.from(`${head}${'a'.repeat(200 - head.length - 3)}"}\n`));
}

interface Result {
  ms: number;
  rps: number;
}

async function withSpool<T>(syncIntervalMs: number, fn: (s: Spool, dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'sk-spool-bench-'));
  const s = await Spool.open({ dir, maxBytes: 4 * 1024 ** 3, segmentBytes: 8 * 1024 * 1024, syncIntervalMs, log });
  try {
    return await fn(s, dir);
  } finally {
    await s.close();
    await rm(dir, { recursive: true, force: true });
  }
}

let maxBuffered = 0;

async function produce(s: Spool): Promise<void> {
  for (let i = 0; i < N; i++) {
    // honour back-pressure like the receiver does (false = unwritten data over the high-water mark)
    if (!s.append(LINES[i % 1000]!, 1)) await new Promise((r) => s.once('drain', r));
    // yield like a socket receiver would between reads (one 'data' event ≈ 64 KiB ≈ 300 lines)
    if (i % 300 === 299) {
      maxBuffered = Math.max(maxBuffered, s.stats().bufferedBytes);
      await new Promise((r) => setImmediate(r));
    }
  }
}

async function consume(s: Spool, batch: number): Promise<number> {
  let got = 0;
  while (got < N) {
    const b = await s.nextBatch(batch);
    if (!b) {
      await new Promise((r) => s.once('data', r));
      continue;
    }
    got += b.records;
    await s.ack(b.id);
  }
  return got;
}

async function live(batch: number, syncIntervalMs = 100): Promise<Result> {
  return withSpool(syncIntervalMs, async (s) => {
    const t0 = performance.now();
    await Promise.all([produce(s), consume(s, batch)]);
    const ms = performance.now() - t0;
    return { ms, rps: N / (ms / 1000) };
  });
}

async function backlog(): Promise<Result> {
  return withSpool(100, async (s) => {
    const t0 = performance.now();
    await produce(s);
    await s.flush();
    await consume(s, 100);
    const ms = performance.now() - t0;
    return { ms, rps: N / (ms / 1000) };
  });
}

async function restart(): Promise<Result & { openMs: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'sk-spool-bench-'));
  const o = { dir, maxBytes: 4 * 1024 ** 3, segmentBytes: 8 * 1024 * 1024, syncIntervalMs: 100, log };
  try {
    let s = await Spool.open(o);
    await produce(s);
    await s.close();
    const t0 = performance.now();
    s = await Spool.open(o);
    const openMs = performance.now() - t0;
    await consume(s, 100);
    const ms = performance.now() - t0;
    await s.close();
    return { ms, rps: N / (ms / 1000), openMs };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function median<T extends Result>(rs: T[]): T {
  return [...rs].sort((a, b) => a.rps - b.rps)[Math.floor(rs.length / 2)]!;
}

async function runs<T extends Result>(f: () => Promise<T>): Promise<T> {
  const out: T[] = [];
  for (let i = 0; i < RUNS; i++) out.push(await f());
  return median(out);
}

const fmt = (r: Result): string => `${Math.round(r.rps).toLocaleString('en-US')} records/s (${r.ms.toFixed(0)} ms)`;

if (SOAK) {
  const mib = (n: number): number => Math.round(n / 1024 / 1024);
  const samples: string[] = [];
  const timer = setInterval(() => {
    const m = process.memoryUsage();
    samples.push(`${mib(m.rss)}/${mib(m.heapUsed)}/${mib(m.external)}`);
  }, 2000);
  const r = await live(100);
  clearInterval(timer);
  console.log(`soak: ${N} records live, batch 100: ${fmt(r)}; node ${process.version}`);
  console.log(`rss/heapUsed/external MiB every 2 s: ${samples.join(' ')}`);
  process.exit(0);
}

console.log(`spool bench: ${N} records x 200 B, median of ${RUNS}; node ${process.version}, crc32=${crc32Impl}`);
console.log(`live     batch 100 : ${fmt(await runs(() => live(100)))}`);
console.log(`live-1k  batch 1000: ${fmt(await runs(() => live(1000)))}`);
console.log(`backlog  batch 100 : ${fmt(await runs(backlog))}`);
console.log(`sync0    batch 100 : ${fmt(await runs(() => live(100, 0)))}`);
const r = await runs(restart);
console.log(`restart  batch 100 : ${fmt(r)}, reopen scan ${r.openMs.toFixed(0)} ms for ${N * 200} bytes`);
console.log(
  `rss ${Math.round(process.memoryUsage().rss / 1024 / 1024)} MiB, max unwritten ${Math.round(maxBuffered / 1024)} KiB`,
);
const crcBuf = Buffer.alloc(64 * 1024 * 1024, 7);
for (const [name, f] of [
  [crc32Impl, crc32],
  ['js', crc32Js],
] as const) {
  const t0 = performance.now();
  f(crcBuf);
  console.log(`crc32 ${name.padEnd(4)}: ${Math.round(64 / ((performance.now() - t0) / 1000))} MB/s`);
}
