// B8 (loss) — what a graceful Redis Sentinel failover does to writes the old master acknowledged, and what an app can
// do about it (README, "redis-sentinel" → "Writes during a failover"; docs/benchmarks.md).
//
// Why any are lost: in a `SENTINEL FAILOVER` the leader sends `REPLICAOF NO ONE` to the replica, waits until the
// replica reports itself a master, and only then announces `+switch-master` and turns the old master into a replica
// of the new one (which discards whatever the old master had that the new one does not). Until that announcement
// nothing tells a client to move, and the old master, still a master with no replica, keeps acknowledging writes.
// A client that follows `+switch-master` (this source, ioredis' own Sentinel mode) cannot avoid it.
//
// Method. A real group (test/helpers/redis.ts: a master, a replica and three sentinels, quorum 2, on free loopback
// ports) and the redis-sentinel source running in this process (loadSource, as a declared source runs), whose
// MASTER_HOST/MASTER_PORT decide where each write goes. A paced writer sends RATE writes/s (each `SET <unique key> 1`
// on one of 16 connections to the master the source publishes at that moment), from ~1 s before a `SENTINEL FAILOVER`
// until the group has settled again (the old master a healthy replica of the new one) plus 0.5 s. Then every
// acknowledged key is looked up on the final master: an acknowledged write that is not there is lost. Three modes,
// FAILOVERS failovers each:
//   plain         SET; acknowledged = OK.
//   wait          SET then `WAIT 1 <WAIT_MS>` on the same connection; acknowledged = WAIT says 1 replica has it (0 =
//                 not confirmed: the app knows, and can retry or report it).
//   min-replicas  `min-replicas-to-write 1` (`min-replicas-max-lag 10`) on both servers; SET; acknowledged = OK (a
//                 master without a connected replica answers NOREPLICAS).
//
//   node --import tsx bench/source-sentinel-loss.ts [--failovers 5] [--rate 2000] [--wait-ms 100] [--mode plain,wait]
//   npm run bench -- --only sentinel-loss
//
// Needs redis-server and redis-sentinel (apt-get install redis-server redis-sentinel): without them it prints SKIP.
import { execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { Redis } from 'ioredis';
import { redisSentinelSourceSchema } from '../src/config/sources.ts';
import type { SidekickContext } from '../src/sidekicks/context.ts';
import { loadSource } from '../src/sources/index.ts';
import {
  REDIS_SERVER,
  masterPort,
  redisCall,
  redisMissing,
  startSentinelGroup,
  waitSettled,
  watchSwitches,
} from '../test/helpers/redis.ts';
import { waitFor } from '../test/helpers/serve.ts';
import { arg, machine, median, report, skip, sleep } from './fixtures/runtime-util.ts';

const BENCH = 'B8';
const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, Number.isFinite(v) ? v : lo));
const FAILOVERS = clamp(Number(arg('failovers', '5')), 1, 20);
const RATE = clamp(Number(arg('rate', '2000')), 100, 20_000);
const WAIT_MS = clamp(Number(arg('wait-ms', '100')), 1, 5000);
const MODES = arg('mode', 'plain,wait,min-replicas')
  .split(',')
  .filter((m): m is Mode => m === 'plain' || m === 'wait' || m === 'min-replicas');
const CONNECTIONS = 16;
/** Writes in flight at most; past it the writer falls behind its schedule (counted) instead of piling up. */
const MAX_IN_FLIGHT = 4000;
/** No writer runs longer than this, whatever happens to the group. */
const MAX_WRITE_MS = 120_000;
const now = (): number => Number(process.hrtime.bigint()) / 1e6;

type Mode = 'plain' | 'wait' | 'min-replicas';

interface Ack {
  seq: number;
  port: number;
  at: number;
}

interface Round {
  mode: Mode;
  from: number;
  to: number;
  sent: number;
  acked: Ack[];
  /** wait mode: WAIT said 0 replicas have it. */
  unconfirmed: number[];
  /** Errors by their first word (READONLY, NOREPLICAS, …). */
  failed: Map<string, number>;
  durationMs: number;
  /** Longest time the writer was behind its schedule by more than 50 ms (in-flight cap reached). */
  behind: number;
  /** SENTINEL FAILOVER sent, +switch-master seen, the group settled again (monotonic ms). */
  sentAt: number;
  switchAt: number;
  settledAt: number;
}

/** Where writes go: the master the source published last. */
let current: { host: string; port: number } | undefined;

/** CONNECTIONS connections per master address, used in turn (each pipelines; WAIT blocks only its own). */
const pools = new Map<string, Redis[]>();
let turn = 0;
function connection(host: string, port: number): Redis {
  const key = `${host}:${port}`;
  let pool = pools.get(key);
  if (!pool) {
    pool = Array.from({ length: CONNECTIONS }, () => {
      const c = new Redis({
        host,
        port,
        connectTimeout: 1000,
        commandTimeout: WAIT_MS + 10_000,
        maxRetriesPerRequest: 0,
        retryStrategy: (n) => Math.min(n * 100, 1000),
        enableReadyCheck: false,
        disableClientInfo: true,
        protocol: 2,
      });
      c.on('error', () => undefined);
      return c;
    });
    pools.set(key, pool);
  }
  return pool[turn++ % pool.length]!;
}

async function writeRound(
  mode: Mode,
  prefix: string,
  failover: () => Promise<Pick<Round, 'sentAt' | 'switchAt' | 'settledAt' | 'from' | 'to'>>,
): Promise<Round> {
  const round: Round = {
    mode,
    from: 0,
    to: 0,
    sent: 0,
    acked: [],
    unconfirmed: [],
    failed: new Map(),
    durationMs: 0,
    behind: 0,
    sentAt: 0,
    switchAt: 0,
    settledAt: 0,
  };
  let inFlight = 0;
  let stop = false;
  const fail = (err: unknown): void => {
    const word = String((err as Error)?.message ?? err)
      .split(/[\s:.]+/)
      .slice(0, 3)
      .join(' ');
    round.failed.set(word, (round.failed.get(word) ?? 0) + 1);
  };
  const one = async (seq: number): Promise<void> => {
    const { host, port } = current!;
    const c = connection(host, port);
    const key = `${prefix}:${seq}`;
    inFlight++;
    try {
      if (mode === 'wait') {
        // Both on the same connection, back to back: WAIT covers this SET (and any earlier write on it).
        const set = c.set(key, '1');
        const wait = c.call('WAIT', '1', String(WAIT_MS)) as Promise<number>;
        const [ok, replicas] = await Promise.all([set, wait]);
        if (ok !== 'OK') fail(new Error(String(ok)));
        else if (replicas >= 1) round.acked.push({ seq, port, at: now() });
        else round.unconfirmed.push(seq);
      } else {
        const ok = await c.set(key, '1');
        if (ok === 'OK') round.acked.push({ seq, port, at: now() });
        else fail(new Error(String(ok)));
      }
    } catch (err) {
      fail(err);
    } finally {
      inFlight--;
    }
  };
  const writes: Promise<void>[] = [];
  const t0 = now();
  const pacer = (async () => {
    let behindSince: number | undefined;
    while (!stop && now() - t0 < MAX_WRITE_MS) {
      const due = Math.floor(((now() - t0) * RATE) / 1000);
      while (round.sent < due && inFlight < MAX_IN_FLIGHT) writes.push(one(round.sent++));
      const late = ((due - round.sent) * 1000) / RATE;
      if (late > 50) behindSince ??= now();
      else if (behindSince !== undefined) {
        round.behind = Math.max(round.behind, now() - behindSince);
        behindSince = undefined;
      }
      await sleep(2);
    }
  })();
  try {
    await sleep(1000);
    const sw = await failover();
    Object.assign(round, sw);
    await sleep(500);
  } finally {
    stop = true;
    await pacer;
    round.durationMs = now() - t0;
    await Promise.race([Promise.all(writes), sleep(30_000)]);
  }
  return round;
}

/** The acknowledged writes of `round` that the final master does not have. */
async function missing(round: Round, prefix: string, finalPort: number): Promise<Ack[]> {
  const c = connection('127.0.0.1', finalPort);
  const lost: Ack[] = [];
  for (let i = 0; i < round.acked.length; i += 500) {
    const batch = round.acked.slice(i, i + 500);
    const values = await c.mget(...batch.map((a) => `${prefix}:${a.seq}`));
    values.forEach((v, j) => {
      if (v === null) lost.push(batch[j]!);
    });
  }
  return lost;
}

async function setMinReplicas(ports: number[], n: number): Promise<void> {
  for (const p of ports) {
    await redisCall(p, ['CONFIG', 'SET', 'min-replicas-to-write', String(n)]);
    await redisCall(p, ['CONFIG', 'SET', 'min-replicas-max-lag', '10']);
  }
}

const why = redisMissing();
if (why) {
  skip(BENCH, 'Sentinel failover write loss', why);
  process.exit(0);
}

const redisVersion = execFileSync(REDIS_SERVER, ['--version'], { encoding: 'utf8' }).trim();
console.log(
  `B8 (loss) acknowledged writes lost in a graceful SENTINEL FAILOVER — ${machine()}; ${redisVersion}; ` +
    `load average ${loadavg().map((l) => l.toFixed(2))}; ${RATE} writes/s, ${FAILOVERS} failovers per mode, ` +
    `WAIT 1 ${WAIT_MS}`,
);
const group = await startSentinelGroup({ name: 'b8loss', downAfterMs: 1000, failoverTimeoutMs: 2000 });
const switches = await watchSwitches(group, now);
const source = new AbortController();
let sourceDone: Promise<void> | undefined;
try {
  const config = redisSentinelSourceSchema.parse({
    type: 'redis-sentinel',
    sentinels: group.sentinelAddrs,
    name: group.name,
  });
  const ctx: SidekickContext = {
    app: 'bench',
    name: 'redis',
    generation: 0,
    thread: 0,
    signal: source.signal,
    previousVars: undefined,
    setVars: (vars) => {
      current = { host: vars.MASTER_HOST!, port: Number(vars.MASTER_PORT) };
    },
    shouldStop: () => source.signal.aborted,
    handleTasks: () => undefined,
  };
  sourceDone = (await loadSource(config))(ctx);
  sourceDone.catch((err: Error) => console.error(`source failed: ${err.message}`));
  await waitFor('the source to publish the master', () => current !== undefined, { timeoutMs: 15_000 });

  const ports = group.servers.map((s) => s.port);
  let n = 0;
  const results: Record<string, { lost: number[]; rounds: Round[] }> = {};
  for (const mode of MODES) {
    await setMinReplicas(ports, mode === 'min-replicas' ? 1 : 0);
    const res = (results[mode] = { lost: [] as number[], rounds: [] as Round[] });
    for (let i = 0; i < FAILOVERS; i++, n++) {
      const from = await masterPort(group);
      const to = ports.find((p) => p !== from)!;
      await waitSettled(group, from, to, 60_000);
      await waitFor(`the source on ${from}`, () => current?.port === from, { timeoutMs: 10_000 });
      const prefix = `loss:${mode}:${i}`;
      const round = await writeRound(mode, prefix, async () => {
        const before = switches.switches.length;
        const sentAt = now();
        await redisCall(group.sentinels[n % group.sentinels.length]!.port, ['SENTINEL', 'FAILOVER', group.name]);
        const sw = await waitFor(
          `+switch-master ${from} → ${to}`,
          () => switches.switches.slice(before).find((s) => s.from === from && s.to === to),
          { timeoutMs: 30_000 },
        );
        // Until the old master is a healthy replica of the new one: its own writes are gone by then.
        await waitSettled(group, to, from, 60_000);
        return { sentAt, switchAt: sw.at, settledAt: now(), from, to };
      });
      const lost = await missing(round, prefix, await masterPort(group));
      const lostBefore = lost.filter((a) => a.at <= round.switchAt).length;
      const span = lost.length ? Math.max(...lost.map((a) => a.at)) - Math.min(...lost.map((a) => a.at)) : 0;
      const onOld = round.acked.filter((a) => a.port === from && a.at > round.switchAt).length;
      const rate = (round.sent * 1000) / round.durationMs;
      const failed = [...round.failed].map(([w, c]) => `${c} ${w}`).join(', ') || '0';
      console.log(
        `  ${mode} ${i + 1}/${FAILOVERS} ${from} → ${to}: ${round.sent} writes in ${(round.durationMs / 1000).toFixed(1)} s ` +
          `(${rate.toFixed(0)}/s), ${round.acked.length} acknowledged, LOST ${lost.length} of them ` +
          `(over ${span.toFixed(0)} ms; ${lostBefore} acknowledged before +switch-master, ${lost.length - lostBefore} after; ` +
          `${onOld} acknowledged by the old master after it)` +
          (mode === 'wait' ? `, ${round.unconfirmed.length} not confirmed by WAIT` : '') +
          `, failed: ${failed}` +
          (round.behind > 0 ? `; writer behind schedule up to ${round.behind.toFixed(0)} ms` : '') +
          `; +switch-master ${(round.switchAt - round.sentAt).toFixed(0)} ms after SENTINEL FAILOVER, settled ` +
          `${((round.settledAt - round.switchAt) / 1000).toFixed(1)} s after it`,
      );
      res.lost.push(lost.length);
      res.rounds.push(round);
      await redisCall(await masterPort(group), ['FLUSHALL']);
    }
    const sorted = [...res.lost].sort((a, b) => a - b);
    const sent = res.rounds.reduce((s, r) => s + r.sent, 0);
    const secs = res.rounds.reduce((s, r) => s + r.durationMs, 0) / 1000;
    const note = `${res.rounds.length} failovers at ${(sent / secs).toFixed(0)} writes/s; each: ${res.lost.join(', ')}`;
    report({
      bench: BENCH,
      metric: `acknowledged writes lost per failover (${mode}) median`,
      value: median(sorted),
      unit: 'writes',
      note,
    });
    report({
      bench: BENCH,
      metric: `acknowledged writes lost per failover (${mode}) max`,
      value: sorted.at(-1)!,
      unit: 'writes',
    });
  }
  await setMinReplicas(ports, 0);
} finally {
  source.abort();
  await sourceDone?.catch(() => undefined);
  switches.close();
  for (const pool of pools.values()) for (const c of pool) c.disconnect();
  await group.stop();
}
