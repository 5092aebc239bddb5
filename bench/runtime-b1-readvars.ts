// B1: readVars on an unchanged snapshot vs the floor for a read by name (Map.get + a property read), a plain object
// property read, and a Redis GET over loopback TCP against a real redis-server.
//
// Target (docs/DESIGN "Performance targets"): readVars ≤ 5× (Map.get + property read); Redis GET ≥ 1000× readVars.
//
// Method. Library mode (the same VarsStore.read as in an HTTP worker). In-process reads are a few ns, far below the
// cost of reading a clock, so every tinybench task runs an inner loop of INNER reads and reports ns per read; each
// read's value feeds a sink so nothing is dead code. Each task runs ROUNDS times, interleaved, and the median of the
// per-round medians is reported. Redis: raw RESP over node:net (no client library: the cheapest possible client,
// which favours Redis), REDIS_N sequential GET round trips after a warm-up, each timed with process.hrtime.bigint.
//
// Usage: node --import tsx bench/runtime-b1-readvars.ts [--rounds 5] [--redis-n 20000]
import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { Bench } from 'tinybench';
import {
  FIXTURES,
  arg,
  freePort,
  machine,
  median,
  percentile,
  report,
  skip,
  sleep,
  which,
} from './fixtures/runtime-util.ts';

const BENCH = 'B1';
const INNER = 10_000;
const ROUNDS = Math.max(1, Number(arg('rounds', '5')));
const REDIS_N = Math.min(200_000, Math.max(1000, Number(arg('redis-n', '20000'))));

/** A minimal RESP2 client: one request in flight; simple strings, errors, integers and bulk strings. */
class RespClient {
  private buf: Buffer = Buffer.alloc(0);
  private waiting: { resolve: (v: string | null) => void; reject: (e: Error) => void } | undefined;

  constructor(private readonly sock: Socket) {
    sock.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      this.drain();
    });
    sock.on('error', (err) => this.waiting?.reject(err));
  }

  call(args: string[]): Promise<string | null> {
    let req = `*${args.length}\r\n`;
    for (const a of args) req += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.sock.write(req);
    });
  }

  private drain(): void {
    const eol = this.buf.indexOf('\r\n');
    if (eol < 0 || !this.waiting) return;
    const type = String.fromCharCode(this.buf[0]!);
    const line = this.buf.toString('utf8', 1, eol);
    let value: string | null;
    let used: number;
    if (type === '$') {
      const len = Number(line);
      if (len < 0) {
        value = null;
        used = eol + 2;
      } else {
        if (this.buf.length < eol + 2 + len + 2) return; // incomplete
        value = this.buf.toString('utf8', eol + 2, eol + 2 + len);
        used = eol + 2 + len + 2;
      }
    } else if (type === '+' || type === ':') {
      value = line;
      used = eol + 2;
    } else {
      const w = this.waiting;
      this.waiting = undefined;
      w.reject(new Error(`redis: ${line}`));
      return;
    }
    this.buf = this.buf.subarray(used);
    const w = this.waiting;
    this.waiting = undefined;
    w.resolve(value);
  }
}

// Resolved at run time to dist/ (what ships); typed from the sources so typechecking does not need a build.
const SPEC = 'sidekick-runtime';
const sk = (await import(SPEC)) as typeof import('../src/index.js');
const { SNAPSHOT } = (await import(join(FIXTURES, 'cfg-sidekicks.mjs'))) as { SNAPSHOT: Record<string, string> };

console.log(`B1 readVars — ${machine()}`);
sk.configure({ entrypoint: join(FIXTURES, 'cfg-sidekicks.mjs') });
const published = await sk.getVars('cfg', { timeout: 10_000 });
if (sk.readVars('cfg') !== published || sk.readVars('cfg') !== sk.readVars('cfg')) {
  throw new Error('readVars did not return the identical snapshot object');
}

// The names are read from an array so that the compiler cannot treat them as constants.
const names = ['cfg', 'REDIS_HOST'];
const NAME = names[0]!;
const plain: Record<string, string> = { ...SNAPSHOT }; // an ordinary object literal: fast properties
const nullProto: Readonly<Record<string, string>> = Object.freeze(Object.assign(Object.create(null), SNAPSHOT));
const mapPlain = new Map<string, Record<string, string>>([[NAME, plain]]);
const mapNullProto = new Map<string, Readonly<Record<string, string>>>([[NAME, nullProto]]);
// What the snapshot would be if built with Object.setPrototypeOf({}, null) instead of Object.create(null): still no
// prototype (a "__proto__" key stays data) but V8 keeps fast properties (see docs/benchmarks.md, B1 finding).
const fastNullProto: Readonly<Record<string, string>> = Object.freeze(
  Object.assign(Object.setPrototypeOf({}, null) as Record<string, string>, SNAPSHOT),
);
const mapFastNullProto = new Map<string, Readonly<Record<string, string>>>([[NAME, fastNullProto]]);
let sink = 0;

const tasks: Record<string, () => void> = {
  'Map.get + prop (plain object) [floor]': () => {
    let s = 0;
    for (let i = 0; i < INNER; i++) s += mapPlain.get(NAME)!.REDIS_HOST!.length;
    sink += s;
  },
  'Map.get + prop (frozen null-proto, like a snapshot)': () => {
    let s = 0;
    for (let i = 0; i < INNER; i++) s += mapNullProto.get(NAME)!.REDIS_HOST!.length;
    sink += s;
  },
  'Map.get + prop (frozen setPrototypeOf({}, null))': () => {
    let s = 0;
    for (let i = 0; i < INNER; i++) s += mapFastNullProto.get(NAME)!.REDIS_HOST!.length;
    sink += s;
  },
  'plain object prop': () => {
    let s = 0;
    for (let i = 0; i < INNER; i++) s += plain.REDIS_HOST!.length;
    sink += s;
  },
  'readVars + prop': () => {
    let s = 0;
    for (let i = 0; i < INNER; i++) s += sk.readVars(NAME).REDIS_HOST!.length;
    sink += s;
  },
};

const perRound: Record<string, number[]> = Object.fromEntries(Object.keys(tasks).map((k) => [k, []]));
for (let round = 0; round < ROUNDS; round++) {
  const bench = new Bench({ time: 500, warmupTime: 200, timestampProvider: 'hrtimeNow' });
  // Rotate the order each round so no task always runs first (or last).
  const order = Object.keys(tasks);
  for (let i = 0; i < round % order.length; i++) order.push(order.shift()!);
  for (const name of order) bench.add(name, tasks[name]!);
  await bench.run();
  for (const t of bench.tasks) {
    const r = t.result;
    if (r.state !== 'completed') throw new Error(`task ${t.name} ${r.state}`);
    perRound[t.name]!.push((r.latency.p50 * 1e6) / INNER); // ms per call → ns per read
  }
}
if (sink === 0) throw new Error('sink is zero: reads were optimised away?');

const ns = Object.fromEntries(Object.entries(perRound).map(([k, v]) => [k, median(v)])) as Record<string, number>;
for (const [k, v] of Object.entries(perRound)) {
  console.log(
    `  ${k.padEnd(52)} median ${ns[k]!.toFixed(2)} ns/op  (rounds: ${v.map((x) => x.toFixed(2)).join(', ')})`,
  );
}
const floor = ns['Map.get + prop (plain object) [floor]']!;
const floorNullProto = ns['Map.get + prop (frozen null-proto, like a snapshot)']!;
const readVarsNs = ns['readVars + prop']!;
report({ bench: BENCH, metric: 'Map.get + prop (floor)', value: floor, unit: 'ns/op' });
report({ bench: BENCH, metric: 'Map.get + prop on a frozen null-proto object', value: floorNullProto, unit: 'ns/op' });
report({
  bench: BENCH,
  metric: 'Map.get + prop on a frozen setPrototypeOf({}, null) object',
  value: ns['Map.get + prop (frozen setPrototypeOf({}, null))']!,
  unit: 'ns/op',
});
report({ bench: BENCH, metric: 'plain object prop', value: ns['plain object prop']!, unit: 'ns/op' });
report({ bench: BENCH, metric: 'readVars + prop', value: readVarsNs, unit: 'ns/op' });
report({
  bench: BENCH,
  metric: 'readVars / (Map.get + prop)',
  value: readVarsNs / floor,
  unit: 'x',
  target: { op: '<=', value: 5 },
});
// This VM flips between a fast and a ~2x slower state (host contention, CPU steal) independently of the code under
// test, even within one round. The fastest round of each task is the least disturbed reading: report that ratio too.
const best = (k: string): number => Math.min(...perRound[k]!);
report({
  bench: BENCH,
  metric: 'best round: readVars + prop',
  value: best('readVars + prop'),
  unit: 'ns/op',
});
report({
  bench: BENCH,
  metric: 'best round: Map.get + prop (floor)',
  value: best('Map.get + prop (plain object) [floor]'),
  unit: 'ns/op',
});
report({
  bench: BENCH,
  metric: 'best round: readVars / (Map.get + prop)',
  value: best('readVars + prop') / best('Map.get + prop (plain object) [floor]'),
  unit: 'x',
});
report({
  bench: BENCH,
  metric: 'readVars / (Map.get + prop on null-proto)',
  value: readVarsNs / floorNullProto,
  unit: 'x',
});
await sk.shutdown();

// ---- Redis GET over loopback ----
const redisBin = which('redis-server');
if (!redisBin) {
  skip(BENCH, 'redis GET baseline', 'redis-server not found on PATH (apt-get install -y redis-server)');
} else {
  const redisNs = await redisGetNs(redisBin);
  console.log(
    `  redis GET (loopback, raw RESP, ${REDIS_N} sequential)      median ${(redisNs.p50 / 1000).toFixed(1)} µs, p99 ${(redisNs.p99 / 1000).toFixed(1)} µs, mean ${(redisNs.mean / 1000).toFixed(1)} µs`,
  );
  report({ bench: BENCH, metric: 'redis GET round trip (median)', value: redisNs.p50, unit: 'ns/op' });
  report({ bench: BENCH, metric: 'redis GET round trip (p99)', value: redisNs.p99, unit: 'ns/op' });
  report({
    bench: BENCH,
    metric: 'redis GET / readVars',
    value: redisNs.p50 / readVarsNs,
    unit: 'x',
    target: { op: '>=', value: 1000 },
  });
}

async function redisGetNs(bin: string): Promise<{ p50: number; p99: number; mean: number }> {
  const port = await freePort();
  const child = spawn(
    bin,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'],
    { stdio: 'ignore' },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    const sock = await connectWithRetry(port, 5000);
    sock.setNoDelay(true);
    const client = new RespClient(sock);
    const value = SNAPSHOT.REDIS_HOST!;
    const set = await client.call(['SET', 'REDIS_HOST', value]);
    if (set !== 'OK') throw new Error(`redis SET answered ${set}`);
    for (let i = 0; i < 1000; i++) await client.call(['GET', 'REDIS_HOST']); // warm-up
    const lat = new Float64Array(REDIS_N);
    const t0 = process.hrtime.bigint();
    const deadline = Date.now() + 60_000; // bounded in time as well as in count
    let n = 0;
    for (; n < REDIS_N && Date.now() < deadline; n++) {
      const a = process.hrtime.bigint();
      const got = await client.call(['GET', 'REDIS_HOST']);
      lat[n] = Number(process.hrtime.bigint() - a);
      if (got !== value) throw new Error(`redis GET answered ${got}`);
    }
    const total = Number(process.hrtime.bigint() - t0);
    sock.destroy();
    const sorted = Array.from(lat.subarray(0, n)).sort((x, y) => x - y);
    return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), mean: total / n };
  } finally {
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(5000)]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

async function connectWithRetry(port: number, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(port, '127.0.0.1');
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(20);
    }
  }
}
