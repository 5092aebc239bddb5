// The redis-sentinel source against a real Sentinel group (test/helpers/redis.ts: a master, a replica and three
// sentinels, quorum 2, down-after 1 s, on free loopback ports in a temp dir).
// Library level: the source publishes the master and replicas through a dead sentinel listed first, relinks to a
// sentinel that restarts, closes every connection at abort, and fails its start naming every sentinel tried.
// End to end: a real `sidekick serve` with 2 HTTP workers whose handler (test/fixtures/redis-sentinel/app.mjs) writes
// to the master its vars name, under a steady write load; a graceful SENTINEL FAILOVER, then a SIGKILL of the master:
// every worker follows, and no write succeeds on a demoted master once the worker has the new one; then every
// sentinel killed: the last master stays served and status shows the sidekick's sourceError until one is back.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { redisSentinelSourceSchema } from '../src/config/sources.ts';
import type { SidekickContext } from '../src/sidekicks/context.ts';
import { loadSource } from '../src/sources/index.ts';
import { createSource } from '../src/sources/redis-sentinel.ts';
import {
  masterPort,
  redisCall,
  redisMissing,
  replicationInfo,
  startSentinelGroup,
  waitSettled,
  watchSwitches,
  type SentinelGroup,
} from './helpers/redis.ts';
import { ROOT, freePort, startServe, tempDir, waitFor, type ServeProcess } from './helpers/serve.ts';

const MISSING = redisMissing();
// The source logs its link changes; the library-mode tests run it in this process.
process.env.SIDEKICK_LOG_LEVEL ??= 'error';
const HANDLER = join(ROOT, 'test', 'fixtures', 'redis-sentinel', 'app.mjs');
const now = (): number => Number(process.hrtime.bigint()) / 1e6;

let group: SentinelGroup | undefined;
before(async () => {
  if (!MISSING) group = await startSentinelGroup({ name: 'shop', downAfterMs: 1000, failoverTimeoutMs: 2000 });
});
after(async () => {
  await group?.stop();
});

function runSource(options: Record<string, unknown>, main = createSource) {
  const config = redisSentinelSourceSchema.parse({ type: 'redis-sentinel', ...options });
  const published: Record<string, string>[] = [];
  const ac = new AbortController();
  const ctx: SidekickContext = {
    app: 'test',
    name: 'redis',
    generation: 0,
    thread: 0,
    signal: ac.signal,
    previousVars: undefined,
    setVars: (vars) => published.push({ ...vars }),
    shouldStop: () => ac.signal.aborted,
    handleTasks: () => undefined,
  };
  const done = main(config)(ctx);
  done.catch(() => undefined);
  return { published, stop: () => ac.abort(), done };
}

/** Connections in subscriber mode on a sentinel (flag P): the source's subscriber, nobody else's here. */
async function subscribers(port: number): Promise<number> {
  const list = String(await redisCall(port, ['CLIENT', 'LIST']));
  return list.split('\n').filter((l) => /\bflags=\S*P/.test(l)).length;
}

test('library mode: publishes master and replicas, relinks, closes at abort', { skip: MISSING }, async () => {
  const g = group!;
  const master = await masterPort(g);
  const replica = g.servers.map((s) => s.port).find((p) => p !== master)!;
  const dead = `127.0.0.1:${await freePort()}`;
  const src = runSource({ sentinels: [dead, ...g.sentinelAddrs], name: g.name, replicas: true, connectTimeoutMs: 500 });
  try {
    await waitFor('the first publish', () => src.published.length > 0, { timeoutMs: 5000 });
    assert.deepEqual(src.published[0], {
      MASTER_HOST: '127.0.0.1',
      MASTER_PORT: String(master),
      REPLICAS: `127.0.0.1:${replica}`,
    });
    for (const s of g.sentinels) {
      await waitFor(`the source's subscriber on sentinel ${s.port}`, async () => (await subscribers(s.port)) === 1);
    }
    // A sentinel that goes away and comes back is linked again (and queried again).
    await g.kill(g.sentinels[0]!);
    const back = await g.restart(g.sentinels[0]!);
    await waitFor('the source to relink to the restarted sentinel', async () => (await subscribers(back.port)) === 1, {
      timeoutMs: 10_000,
    });
  } finally {
    src.stop();
  }
  await waitFor('the source to end after abort', () => Promise.race([src.done.then(() => true), sleep(100)]), {
    timeoutMs: 5000,
  });
  for (const s of g.sentinels) {
    await waitFor(`no subscriber left on sentinel ${s.port}`, async () => (await subscribers(s.port)) === 0, {
      timeoutMs: 5000,
    });
  }
  assert.ok(
    src.published.every((v) => v.MASTER_PORT === String(master)),
    JSON.stringify(src.published),
  );
});

// No Redis needed: nothing listens on the sentinels' ports.
test('a refused sentinel is reported as its cause (connect ECONNREFUSED host:port), under one source prefix', async () => {
  const a = `127.0.0.1:${await freePort()}`;
  const b = `127.0.0.1:${await freePort()}`;
  // Through loadSource, as a declared source runs: its wrapper gives every failure the SK_ERR_SOURCE code.
  const options = { sentinels: [a, b], name: 'shop', connectTimeoutMs: 2000 };
  const wrapped = await loadSource(redisSentinelSourceSchema.parse({ type: 'redis-sentinel', ...options }));
  const src = runSource(options, () => wrapped);
  await assert.rejects(src.done, (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_SOURCE');
    for (const s of [a, b]) assert.ok(err.message.includes(`${s} (connect ECONNREFUSED ${s})`), err.message);
    assert.doesNotMatch(err.message, /Connection is closed/);
    assert.equal(
      err.message,
      `SK_ERR_SOURCE: redis-sentinel source: no sentinel could tell the master of "shop"; tried ${a} (connect ECONNREFUSED ${a}), ${b} (connect ECONNREFUSED ${b})`,
    );
    return true;
  });
});

test('library mode: a start with no usable sentinel fails, naming each one tried', { skip: MISSING }, async () => {
  const a = `127.0.0.1:${await freePort()}`;
  const b = `127.0.0.1:${await freePort()}`;
  const started = Date.now();
  const none = runSource({ sentinels: [a, b], name: 'shop', connectTimeoutMs: 300 });
  await assert.rejects(none.done, (err: Error) => {
    assert.match(err.message, /no sentinel could tell the master of "shop"/);
    assert.ok(err.message.includes(a) && err.message.includes(b), err.message);
    return true;
  });
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);

  const unknown = runSource({ sentinels: [group!.sentinelAddrs[1]!], name: 'nosuch', connectTimeoutMs: 300 });
  await assert.rejects(unknown.done, /does not monitor a master named "nosuch"/);

  const noEnv = runSource({ sentinels: group!.sentinelAddrs, name: 'shop', sentinelPasswordEnv: 'SK_TEST_UNSET_PW' });
  await assert.rejects(noEnv.done, (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_CONFIG_INVALID');
    assert.match(err.message, /sentinelPasswordEnv.*SK_TEST_UNSET_PW is not set/);
    return true;
  });
});

interface Write {
  pid: number;
  port: number;
  ok: boolean;
  error?: string;
  tRead: number;
}

interface View {
  pid: number;
  master: string | null;
  seen: { master: string; at: number }[];
}

/** Bounded write load: `loops` keep-alive loops POSTing nothing but GET /write, paced, until stop() or maxMs. */
function writeLoad(port: number, { loops = 4, paceMs = 3, maxMs = 80_000 } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: loops });
  const writes: Write[] = [];
  const errors: string[] = [];
  let stopped = false;
  const started = Date.now();
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/write', agent, timeout: 5000 }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString('utf8')));
        res.on('end', () => {
          try {
            const r = JSON.parse(body) as { master: string; ok: boolean; error?: string; tRead: number };
            const pid = Number(res.headers['x-pid']);
            writes.push({ pid, port: Number(r.master.split(':')[1]), ok: r.ok, error: r.error, tRead: r.tRead });
          } catch {
            errors.push(`status ${res.statusCode}: ${body.slice(0, 200)}`);
          }
          resolve();
        });
      });
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) => {
        errors.push(err.message);
        resolve();
      });
    });
  const loop = async (): Promise<void> => {
    while (!stopped && Date.now() - started < maxMs) {
      await one();
      await sleep(paceMs);
    }
  };
  const done = Promise.all(Array.from({ length: loops }, loop)).then(() => agent.destroy());
  return { writes, errors, stop: () => (stopped = true), done };
}

async function views(dir: string): Promise<View[]> {
  const files = readdirSync(dir).filter((f) => /^worker-\d+\.json$/.test(f));
  return Promise.all(
    files.map(async (f) => {
      const { port } = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { port: number };
      return new Promise<View>((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port, path: '/view', agent: false, timeout: 2000 }, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString('utf8')));
            res.on('end', () => resolve(JSON.parse(body) as View));
          })
          .on('error', reject);
      });
    }),
  );
}

/** Waits until every worker reads `master`; returns when each one got it (0: it had it from its start). */
async function waitWorkersOn(dir: string, master: number, what: string): Promise<Map<number, number>> {
  const addr = `127.0.0.1:${master}`;
  const vs = await waitFor(
    what,
    async () => {
      const v = await views(dir);
      return v.length === 2 && v.every((w) => w.master === addr) ? v : undefined;
    },
    { timeoutMs: 20_000, intervalMs: 20 },
  );
  return new Map(vs.map((w) => [w.pid, w.seen.filter((s) => s.master === addr).at(-1)?.at ?? 0]));
}

test(
  'sidekick serve: every HTTP worker follows a graceful failover and a killed master',
  { skip: MISSING },
  async (t) => {
    const g = group!;
    const { dir, cleanup } = tempDir('sk-sentinel-serve-');
    let serve: ServeProcess | undefined;
    let load: ReturnType<typeof writeLoad> | undefined;
    const switches = await watchSwitches(g, now);
    try {
      const m0 = await masterPort(g);
      const r0 = g.servers.map((s) => s.port).find((p) => p !== m0)!;
      await waitSettled(g, m0, r0);
      const started = await startServe(dir, [
        {
          name: 'shop',
          workers: 2,
          handler: HANDLER,
          sidekicks: {
            declare: {
              redis: { start: 'boot', source: { type: 'redis-sentinel', sentinels: g.sentinelAddrs, name: g.name } },
            },
          },
        },
      ]);
      serve = started.serve;
      await serve.waitReady((s) => serve!.sidekick(s, 'shop', 'redis')?.ready === true);
      await waitFor(
        'both workers to report a control port',
        () => readdirSync(dir).filter((f) => f.startsWith('worker-')).length === 2,
      );
      await waitWorkersOn(dir, m0, `both workers on the first master ${m0}`);

      load = writeLoad(started.ports.shop!);
      const l = load;
      const okOn = (port: number, pid: number, after: number): boolean =>
        l.writes.some((w) => w.ok && w.port === port && w.pid === pid && w.tRead > after);
      const pids = (await views(dir)).map((v) => v.pid);
      await waitFor('writes from both workers on the first master', () => pids.every((p) => okOn(m0, p, 0)));

      // (1) Graceful: SENTINEL FAILOVER. The old master stays up and is turned into a read-only replica.
      assert.equal(await redisCall(g.sentinels[1]!.port, ['SENTINEL', 'FAILOVER', g.name]), 'OK');
      const sw1 = await waitFor(
        '+switch-master after SENTINEL FAILOVER',
        () => switches.switches.find((s) => s.from === m0 && s.to === r0),
        { timeoutMs: 30_000 },
      );
      const landed1 = await waitWorkersOn(dir, r0, `both workers on the new master ${r0}`);
      for (const [pid, at] of landed1) {
        t.diagnostic(`graceful: worker ${pid} had the new master ${(at - sw1.at).toFixed(1)} ms after +switch-master`);
        assert.ok(at - sw1.at < 2000, `worker ${pid} took ${at - sw1.at} ms`);
      }
      await waitFor('writes from both workers on the new master', () =>
        [...landed1].every(([pid, at]) => okOn(r0, pid, at)),
      );
      // The old master becomes a replica (writes there now fail READONLY); wait for it, so the kill below has a replica.
      await waitSettled(g, r0, m0);
      const late = l.writes.filter((w) => w.ok && w.port === m0 && w.tRead >= landed1.get(w.pid)!);
      assert.deepEqual(late, [], 'writes succeeded on the demoted master after the worker had the new one');
      const readonly = l.writes.filter((w) => !w.ok && /READONLY/.test(w.error ?? '')).length;
      t.diagnostic(
        `graceful: ${readonly} writes refused READONLY, ${l.writes.filter((w) => !w.ok).length} failed in all`,
      );
      assert.equal((await replicationInfo(m0)).role, 'slave');

      // (2) Hard: SIGKILL the master by pid. The sentinels agree it is down, elect a leader, promote the replica.
      const victim = g.servers.find((s) => s.port === r0)!;
      const killedAt = now();
      await g.kill(victim);
      const sw2 = await waitFor(
        '+switch-master after the master was killed',
        () => switches.switches.find((s) => s.from === r0 && s.to === m0),
        { timeoutMs: 30_000 },
      );
      const landed2 = await waitWorkersOn(dir, m0, `both workers back on ${m0}`);
      for (const [pid, at] of landed2) {
        t.diagnostic(`kill: worker ${pid} had the new master ${(at - sw2.at).toFixed(1)} ms after +switch-master`);
        assert.ok(at - sw2.at < 2000, `worker ${pid} took ${at - sw2.at} ms`);
      }
      t.diagnostic(`kill: +switch-master ${(sw2.at - killedAt).toFixed(0)} ms after SIGKILL`);
      await waitFor('writes from both workers on the promoted master', () =>
        [...landed2].every(([pid, at]) => okOn(m0, pid, at)),
      );
      assert.deepEqual(
        l.writes.filter((w) => w.ok && w.port === r0 && w.tRead > killedAt),
        [],
        'a write succeeded on the killed master',
      );

      // (3) Every sentinel gone: the last master stays published (writes go on), status says why; one back clears it.
      for (const s of g.sentinels) await g.kill(s);
      const sourceError = async (): Promise<string | undefined> =>
        (serve!.sidekick(await serve!.status(), 'shop', 'redis') as { sourceError?: string } | undefined)?.sourceError;
      const why = await waitFor('sourceError with every sentinel gone', sourceError, { timeoutMs: 15_000 });
      assert.match(why, new RegExp(`no sentinel reachable, still serving master 127\\.0\\.0\\.1:${m0}`));
      for (const a of g.sentinelAddrs) assert.ok(why.includes(a), why);
      // Each sentinel with the cause of its failed link once it is refused, not "Connection is closed.".
      const refused = await waitFor(
        'sourceError naming each refused sentinel',
        async () => {
          const text = await sourceError();
          return text && g.sentinelAddrs.every((s) => text.includes(`${s} (connect ECONNREFUSED ${s})`)) && text;
        },
        { timeoutMs: 15_000 },
      );
      assert.doesNotMatch(refused, /Connection is closed/);
      const mark = now();
      await waitFor('writes go on to the last master', () => [...landed2.keys()].every((pid) => okOn(m0, pid, mark)));
      await g.restart(g.sentinels[2]!);
      await waitFor('sourceError cleared once a sentinel is back', async () => (await sourceError()) === undefined, {
        timeoutMs: 15_000,
      });
      assert.equal((await views(dir)).filter((v) => v.master === `127.0.0.1:${m0}`).length, 2);

      load.stop();
      await load.done;
      assert.deepEqual(load.errors, [], 'every request was answered');
      t.diagnostic(`${load.writes.length} writes, ${load.writes.filter((w) => w.ok).length} ok`);
      // The source's restart count: it followed both failovers without crashing.
      const s = await serve.status();
      assert.equal(serve.sidekick(s, 'shop', 'redis')?.crashes, 0);
    } finally {
      load?.stop();
      await load?.done;
      switches.close();
      if (serve) {
        await serve.stop().catch(() => undefined);
        await serve.kill();
      }
      if (existsSync(dir)) cleanup();
    }
  },
);
