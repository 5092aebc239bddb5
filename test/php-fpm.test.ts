// PHP-FPM hosts lose no record, proven with the real neighbours: Debian's nginx and php-fpm (one pool, pm = static,
// 4 children, clients/php/sidekick-agent.php as auto_prepend_file), a real `sidekick agent` with the http exporter,
// and a fake central on loopback; every case runs once per client variant (test/helpers/php-ext.ts: the userland
// prepend, and the extension loaded by the pool instead). Load: keep-alive HTTP loops against nginx; request n is `/<case>/<n>`, and the
// client's record carries that path as `route`, so every request maps to exactly one record.
//
// The same configuration, written for production, is deploy/README.md "nginx + PHP-FPM + agent: a complete recipe".
//
// Accounting (docs/agent.md "Counters and status"): every request nginx logged with 200 ran the page and the
// client, so it must end as exactly one delivered record (deduplicated by X-Sidekick-Batch-Id, as central does), or
// be counted by the agent as `clientDropped` (a client reported it lost) or `invalid`. Nothing else. Records the
// client could not hand over while the agent restarted go to its spill file and are replayed by the next agent
// (docs/clients.md "Spill"), so with a healthy spill dir even `clientDropped` stays 0.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  agentConfig,
  dedupedByBatchId,
  startAgent,
  startCentral,
  tmpDir,
  waitFor,
  writeConfig,
  type AgentProcess,
  type AgentStatus,
  type CentralReply,
  type CentralRequest,
  type FakeCentral,
} from './helpers/agent.ts';
import {
  PHP_FPM_MISSING,
  PHP_FPM_SKIP,
  ROOT,
  runLoad,
  startPhpStack,
  type LoadRun,
  type PhpStack,
} from './helpers/php-fpm.ts';
import { PHP_CLIENT_VARIANTS, type PhpClientVariant } from './helpers/php-ext.ts';
import { PHP_ONE_RUN } from './helpers/ci-split.ts';

// Skipped outside CI without php-fpm/nginx (under CI the first test fails instead), and in .ci/run's Node 24 run.
const SKIP = PHP_FPM_SKIP || PHP_ONE_RUN;

const CONCURRENCY = 16;
/** A page served by a pool without the client: the client's pool-wide APCu counters (dropped, unreported). */
const APCU_PAGE = join(ROOT, 'test', 'fixtures', 'php-fpm', 'apcu-drops.php');

type Counters = AgentStatus['counters'];

/**
 * SIGTERM an agent and wait (bounded) for its exit; SIGKILL its group after the deadline. Unlike AgentProcess.stop(),
 * leaves no timer behind (a pending 30 s timer would keep this file's process alive after the last test).
 */
async function terminate(
  a: AgentProcess,
  timeoutMs = 30_000,
): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
  if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([
    a.exited,
    new Promise<undefined>((res) => (timer = setTimeout(() => res(undefined), timeoutMs))),
  ]);
  clearTimeout(timer);
  if (!r) await a.crash();
  return r;
}

function invalidOf(c: Counters): number {
  return Object.values(c.invalid).reduce((a, b) => a + b, 0);
}

function droppedOf(c: Counters): number {
  return Object.values(c.dropped).reduce((a, b) => a + b, 0);
}

/** One case's world: a temp dir, central, the agent (replaced on restart) and the nginx + FPM stack. */
class World {
  readonly tmp = tmpDir('sk-fpm-');
  constructor(readonly variant: PhpClientVariant) {}
  central!: FakeCentral;
  config = '';
  agent!: AgentProcess;
  /** Every agent process started (stopped at the end whatever happened). */
  readonly agents: AgentProcess[] = [];
  /** Final counters of agents that were stopped (one entry per agent lifetime). */
  readonly retired: Counters[] = [];
  stack!: PhpStack;

  get socket(): string {
    return join(this.tmp.dir, 'agent.sock');
  }

  async start(
    reply?: (req: CentralRequest, n: number) => CentralReply,
    overrides: Record<string, unknown> = {},
    stackEnv: Record<string, string> = {},
  ): Promise<void> {
    this.central = await startCentral(reply);
    this.config = writeConfig(
      this.tmp.dir,
      agentConfig(this.tmp.dir, {
        // a loaded 2-core CI machine must not turn a slow answer into a retry the assertions do not expect
        exporter: { type: 'http', url: this.central.url, timeoutMs: 10_000 },
        ...overrides,
      }),
    );
    await this.startAgent();
    this.stack = await startPhpStack({
      agentSocket: this.socket,
      children: 4,
      env: stackEnv,
      extension: this.variant.so,
    });
  }

  async startAgent(): Promise<void> {
    this.agent = await startAgent(this.config);
    this.agents.push(this.agent);
  }

  /**
   * SIGTERM the agent and wait for its exit, reading its status until the admin socket closes: the last answer
   * holds its final counters (the supervisor folds the stopped worker's last counters into its totals).
   */
  async stopAgent(): Promise<Counters> {
    const agent = this.agent;
    let last = (await agent.status()).counters;
    let reads = 0;
    let polling = true;
    const poll = (async () => {
      while (polling) {
        try {
          last = (await agent.status()).counters;
          reads++;
        } catch {
          return; // admin socket gone: the agent is closing up
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const exit = await terminate(agent);
    polling = false;
    await poll;
    assert.ok(exit, `the agent exits within 30 s of SIGTERM\n${agent.stderr().slice(-4000)}`);
    assert.equal(exit.code, 0, `the agent exits 0 on SIGTERM (got ${exit.signal ?? exit.code})`);
    this.retired.push(last);
    console.log(
      `[php-fpm] stopped agent ${agent.pid}: ${reads} status reads while stopping; last counters ${JSON.stringify(last)}`,
    );
    return last;
  }

  async close(): Promise<void> {
    await this.stack?.cleanup().catch(() => undefined);
    for (const a of this.agents) await terminate(a);
    await this.central?.close().catch(() => undefined);
    this.tmp.cleanup();
  }
}

/**
 * What is in the client spill dir (default: the socket's directory + /spill): spill.ndjson (records and drop-count
 * control lines the clients appended while the agent was unreachable) and the files the agent set aside while
 * replaying them. For messages.
 */
function spillLeftovers(w: World): string {
  const dir = join(w.tmp.dir, 'spill');
  if (!existsSync(dir)) return 'no spill dir';
  const files = readdirSync(dir);
  if (files.length === 0) return 'spill dir empty';
  return files
    .map((f) => {
      const text = readFileSync(join(dir, f), 'utf8');
      const lines = text.split('\n').filter(Boolean);
      const control = lines.filter((l) => l.startsWith('{"_sidekick":')).length;
      return `${f} (${lines.length} lines, ${control} control)`;
    })
    .join(', ');
}

/** `/b/3..7 /b/9` for a set of `/<prefix>/<n>` routes: where the missing requests sit in the load. */
function ranges(routes: string[]): string {
  const ns = routes.map((r) => Number(r.slice(r.lastIndexOf('/') + 1))).sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < ns.length;) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j]! + 1) j++;
    out.push(i === j ? `${ns[i]}` : `${ns[i]}..${ns[j]}`);
    i = j + 1;
  }
  return out.length > 12 ? `${out.slice(0, 12).join(' ')} … (${out.length} runs)` : out.join(' ');
}

interface Outcome {
  /** Requests nginx logged with status 200 under this case's prefix. */
  logged: number;
  /** Distinct routes delivered (deduplicated by batch id). */
  delivered: number;
  /** Extra deliveries of a route after dedup (must be 0). */
  duplicates: number;
  /** Extra records central received in 2xx answers, before dedup (retries central would drop). */
  rawExtra: number;
  missing: string[];
  unknown: string[];
}

function outcome(w: World, prefix: string): Outcome {
  const logged = new Set(
    w.stack
      .accessLogLines()
      .filter((l) => l.status === 200 && l.uri.startsWith(`/${prefix}/`))
      .map((l) => l.uri),
  );
  const seen = new Map<string, number>();
  for (const line of dedupedByBatchId(w.central)) {
    const route = String((JSON.parse(line) as { route?: unknown }).route);
    if (!route.startsWith(`/${prefix}/`)) continue;
    seen.set(route, (seen.get(route) ?? 0) + 1);
  }
  let duplicates = 0;
  for (const n of seen.values()) duplicates += n - 1;
  const ours = w.central.delivered.filter((l) => l.includes(`"route":"/${prefix}/`)).length;
  return {
    logged: logged.size,
    delivered: seen.size,
    duplicates,
    rawExtra: ours - (seen.size + duplicates),
    missing: [...logged].filter((r) => !seen.has(r)),
    unknown: [...seen.keys()].filter((r) => !logged.has(r)),
  };
}

/** Waits (bounded) until nginx has logged every answered request: it writes the line after sending the response. */
async function nginxLogged(w: World, load: LoadRun, prefix: string): Promise<void> {
  await waitFor(
    () => w.stack.accessLogLines().filter((l) => l.uri.startsWith(`/${prefix}/`)).length >= load.completed,
    `nginx to log all ${load.completed} answered requests`,
    10_000,
  );
}

/**
 * Waits (bounded) until every logged request is delivered, or the agent has nothing left to do: spool empty and no
 * new record received for a while (then the comparison shows what is missing instead of a timeout).
 */
async function settled(w: World, prefix: string, timeoutMs = 30_000): Promise<void> {
  let lastReceived = -1;
  let quietPolls = 0;
  await waitFor(
    async () => {
      const o = outcome(w, prefix);
      if (o.delivered >= o.logged) return true;
      const s = await w.agent.status();
      const idle =
        s.gauges.spoolRecords === 0 &&
        (s.pipeline?.spool?.pendingRecords ?? 0) === 0 &&
        s.gauges.spillPendingBytes === 0; // client spill files replayed too
      quietPolls = idle && s.counters.received === lastReceived ? quietPolls + 1 : 0;
      lastReceived = s.counters.received;
      return quietPolls >= 4;
    },
    'every logged request to be delivered, or the agent to go idle',
    timeoutMs,
    250,
  );
}

function assertAllOk(load: LoadRun): void {
  const other = [...load.statuses].filter(([s]) => s !== 200);
  assert.equal(load.errorCount, 0, `transport errors: ${load.errors.join('; ')}`);
  assert.deepEqual(other, [], 'every PHP request answered 200');
  assert.equal(load.ok.length, load.completed);
}

function describeRun(name: string, load: LoadRun, o: Outcome, extra = ''): void {
  const statuses = [...load.statuses].map(([s, n]) => `${s}×${n}`).join(' ');
  console.log(
    `[php-fpm ${name}] ${load.completed} requests in ${(load.ms / 1000).toFixed(1)} s ` +
      `(${Math.round(load.completed / (load.ms / 1000))}/s; ${statuses}; errors ${load.errorCount}); ` +
      `nginx logged ${o.logged}, delivered ${o.delivered}, missing ${o.missing.length}, duplicates ${o.duplicates}, ` +
      `unknown ${o.unknown.length}, retried copies central dropped ${o.rawExtra}${extra}`,
  );
}

for (const variant of PHP_CLIENT_VARIANTS)
  describe(`nginx + PHP-FPM + agent [${variant.name}]`, { skip: SKIP || variant.skip }, () => {
    test('php-fpm and nginx are installed (a CI machine must not skip these tests)', () => {
      assert.equal(PHP_FPM_MISSING, false, String(PHP_FPM_MISSING));
    });
    test('the client variant is available (CI builds the extension)', () => assert.equal(variant.missing, false));

    // Properties of the agent alone (steady delivery, the exporter's retries) run with the userland client only: the
    // cases below run the same accounting with both clients, under an agent restart, recycle and outage (CI time).
    const agentOnly = variant.name === 'extension' ? 'an agent-side property, proven with the userland client' : false;

    describe('agent healthy', { skip: agentOnly }, () => {
      const w = new World(variant);
      before(() => w.start());
      after(() => w.close());

      test('every request nginx logged is delivered exactly once; the counters balance', async () => {
        const load = runLoad({
          url: w.stack.url,
          prefix: 'a',
          concurrency: CONCURRENCY,
          maxRequests: 20_000,
          maxMs: 15_000,
        });
        await load.done;
        assertAllOk(load);
        await nginxLogged(w, load, 'a');
        await settled(w, 'a');
        const o = outcome(w, 'a');
        const c = (await w.agent.status()).counters;
        describeRun('healthy', load, o, `; agent ${JSON.stringify(c)}`);

        assert.equal(o.logged, load.completed, 'nginx logged every answered request');
        assert.deepEqual(o.missing.slice(0, 10), [], `${o.missing.length} logged requests have no record`);
        assert.deepEqual(o.unknown, [], 'no record without a logged request');
        assert.equal(o.duplicates, 0, 'no record delivered twice');
        assert.equal(o.delivered, o.logged);
        // The agent's own books: what came in, went out; nothing dropped on either side.
        assert.equal(c.clientDropped, 0, 'no client reported a drop');
        assert.equal(c.truncated, 0, 'no cut line');
        assert.equal(invalidOf(c), 0, 'no invalid line');
        assert.equal(c.received, o.logged, 'one line received per request (socket, or replayed from a spill file)');
        assert.equal(c.spooled, c.received - invalidOf(c));
        assert.equal(c.exported, w.central.delivered.length, 'exported = records central acknowledged');
        assert.equal(c.deadLettered, 0);
        assert.equal(droppedOf(c), 0);
        assert.equal(
          c.spooled,
          c.exported + c.deadLettered + droppedOf(c) + (await w.agent.status()).gauges.spoolRecords,
        );
        assert.equal(w.stack.phpErrors(), '', 'PHP logged no warning, notice or error');
      });
    });

    describe('agent restarted mid-load', () => {
      const w = new World(variant);
      before(() => w.start());
      after(() => w.close());

      test('every request still 200; delivered + client_dropped + invalid = requests logged; no duplicates', async () => {
        const load = runLoad({
          url: w.stack.url,
          prefix: 'b',
          concurrency: CONCURRENCY,
          maxRequests: 20_000,
          maxMs: 20_000,
          // paced so that the load outlasts the restart (a stop drains for a while) on a fast machine too
          ratePerSec: 2500,
        });
        let atUp = 0;
        try {
          await waitFor(() => load.completed >= 3000 || load.started >= 20_000, 'load to be under way', 15_000, 10);
          const atStop = load.completed;
          await w.stopAgent();
          const atDown = load.completed;
          await w.startAgent();
          atUp = load.completed;
          // keep the load on the new agent for a while (bounded by the load's own limits too)
          await waitFor(
            () => load.completed >= atUp + 3000 || load.finished,
            'load to go on after the restart',
            60_000,
            10,
          );
          console.log(
            `[php-fpm restart] SIGTERM at request ${atStop}, agent gone at ${atDown}, new agent running at ${atUp}`,
          );
        } finally {
          load.stop();
          await load.done;
        }
        assertAllOk(load);
        assert.ok(load.completed > atUp, 'requests went on after the new agent was running');
        await nginxLogged(w, load, 'b');
        await settled(w, 'b');
        const o = outcome(w, 'b');
        const now = (await w.agent.status()).counters;
        const lifetimes = [...w.retired, now];
        const clientDropped = lifetimes.reduce((a, c) => a + c.clientDropped, 0);
        const invalid = lifetimes.reduce((a, c) => a + invalidOf(c), 0);
        const truncated = lifetimes.reduce((a, c) => a + c.truncated, 0);
        describeRun(
          'restart',
          load,
          o,
          `; client_dropped ${clientDropped}, invalid ${invalid}, truncated ${truncated} (not added: already client drops); ` +
            `per agent received ${lifetimes.map((c) => c.received).join(' + ')}, ` +
            `client_dropped ${lifetimes.map((c) => c.clientDropped).join(' + ')}, ` +
            `replayed from client spill files ${lifetimes.map((c) => c.spillReplayed).join(' + ')}; ` +
            `missing ${o.missing.length}: ${ranges(o.missing)}; client spill dir: ${spillLeftovers(w)}`,
        );

        assert.equal(o.logged, load.completed, 'nginx logged every answered request');
        assert.deepEqual(o.unknown, [], 'no record without a logged request');
        assert.equal(o.duplicates, 0, 'no record delivered twice');
        assert.equal(
          o.delivered + clientDropped + invalid,
          o.logged,
          `delivered ${o.delivered} + client_dropped ${clientDropped} + invalid ${invalid} = logged ${o.logged} ` +
            `(missing: ${ranges(o.missing)}; client spill dir: ${spillLeftovers(w)})`,
        );
        // The contract goes further than the balance: while the agent restarts, clients spill what they cannot send
        // and the agent replays it, so nothing is dropped at all.
        assert.equal(
          clientDropped,
          0,
          'no record dropped: the client spilled what the restarting agent could not take',
        );
        assert.equal(w.stack.phpErrors(), '', 'PHP logged no warning, notice or error');
      });
    });

    describe('agent recycled and reloaded mid-load, PHP clients holding their connections', () => {
      const w = new World(variant);
      // The property under test is the agent's: a hand-over passes every connection on, nothing read twice or cut.
      // Clients write into the kernel socket buffer meanwhile; give them a wait budget (10 s, not 500 µs) longer than
      // any hand-over, so that a hand-over slowed down by a loaded machine is not mistaken for a lost connection (the
      // client spilling after a short wait is tested in agent-spill and in the suite below).
      before(() => w.start(undefined, { recycle: { maxRecords: 4000 } }, { SIDEKICK_AGENT_MAX_WAIT_US: '10000000' }));
      after(() => w.close());

      test('every request delivered exactly once across worker recycles and a SIGHUP; nothing spilled or dropped', async () => {
        const load = runLoad({
          url: w.stack.url,
          prefix: 'd',
          concurrency: CONCURRENCY,
          maxRequests: 14_000,
          maxMs: 20_000,
        });
        try {
          await waitFor(() => load.completed >= 6000 || load.finished, 'load to be under way', 60_000, 10);
          w.agent.child.kill('SIGHUP'); // a reload with the same file: applied in the running worker
        } finally {
          await load.done;
        }
        assertAllOk(load);
        await nginxLogged(w, load, 'd');
        await settled(w, 'd');
        const o = outcome(w, 'd');
        const st = await w.agent.status();
        const c = st.counters;
        const handovers = [...w.agent.stderr().matchAll(/"ms":(\d+)[^\n]*agent worker recycled/g)].map((m) => m[1]);
        describeRun(
          'recycle',
          load,
          o,
          `; recycles ${st.recycles} (each took ${handovers.join(', ')} ms from the standby fork to the new worker running), agent ${JSON.stringify(c)}`,
        );
        assert.ok(
          st.recycles >= 1,
          `the worker was recycled while PHP clients held their connections (${st.recycles})`,
        );
        assert.equal(c.connections, 4, 'one connection per FPM child, handed from worker to worker, never re-made');
        assert.equal(o.logged, load.completed, 'nginx logged every answered request');
        assert.deepEqual(o.missing.slice(0, 10), [], `${o.missing.length} logged requests have no record`);
        assert.equal(o.duplicates, 0, 'no record delivered twice');
        assert.equal(o.delivered, o.logged);
        assert.equal(c.clientDropped, 0);
        assert.equal(c.spillReplayed, 0, 'no client had to spill: the hand-over kept every connection');
        assert.equal(c.truncated, 0, 'no line cut by a hand-over');
      });
    });

    describe('central down (503), then up', { skip: agentOnly }, () => {
      let down = true;
      const w = new World(variant);
      before(() => w.start(() => (down ? { status: 503, body: 'down' } : { status: 200 })));
      after(() => w.close());

      test('after recovery every logged request is delivered exactly once', async () => {
        const load = runLoad({
          url: w.stack.url,
          prefix: 'c',
          concurrency: CONCURRENCY,
          maxRequests: 10_000,
          maxMs: 10_000,
        });
        await load.done;
        assertAllOk(load);
        await nginxLogged(w, load, 'c');
        // Every record reached the agent and waits in its spool; central has refused every batch so far.
        await waitFor(
          async () => (await w.agent.status()).counters.received >= load.completed,
          'the agent to receive a line per request',
          15_000,
          100,
        );
        const during = await w.agent.status();
        assert.ok(during.counters.retried.http_5xx > 0, 'the agent saw the 503s and retries');
        assert.equal(outcome(w, 'c').delivered, 0, 'nothing delivered while central answers 503');
        down = false;
        await settled(w, 'c', 45_000); // the breaker half-opens after 300 ms (test config), then the spool drains
        const o = outcome(w, 'c');
        const c = (await w.agent.status()).counters;
        describeRun(
          'central-down',
          load,
          o,
          `; 503 answers ${w.central.requests.filter((r) => r.status === 503).length}, ` +
            `breaker was ${during.pipeline?.breaker?.state}, client_dropped ${c.clientDropped}`,
        );

        assert.equal(o.logged, load.completed, 'nginx logged every answered request');
        assert.deepEqual(o.missing.slice(0, 10), [], `${o.missing.length} logged requests have no record`);
        assert.deepEqual(o.unknown, [], 'no record without a logged request');
        assert.equal(o.duplicates, 0, 'no record delivered twice (after dedup by batch id)');
        assert.equal(o.delivered, o.logged);
        assert.equal(c.clientDropped, 0);
        assert.equal(c.deadLettered, 0);
        assert.equal(droppedOf(c), 0);
      });
    });

    describe('agent down under load past a 64 KiB spill cap, then up (issue 16, item 11)', () => {
      const SPILL_CAP = 65536;
      const w = new World(variant);
      after(() => w.close());

      /** The client's pool-wide APCu counters, read by a page of a pool without the client (same FPM master). */
      async function apcu(): Promise<{ enabled: boolean; dropped: number; unreported: number }> {
        const res = await fetch(`${w.stack.urls.apcu}drops`, { signal: AbortSignal.timeout(10_000) });
        return (await res.json()) as { enabled: boolean; dropped: number; unreported: number };
      }

      test('requests sent = delivered + client_dropped, exactly: every drop reported once, whatever the cap', async () => {
        w.central = await startCentral();
        w.config = writeConfig(
          w.tmp.dir,
          agentConfig(w.tmp.dir, { exporter: { type: 'http', url: w.central.url, timeoutMs: 10_000 } }),
        );
        w.stack = await startPhpStack({
          agentSocket: w.socket,
          children: 4,
          env: { SIDEKICK_AGENT_SPILL_MAX_BYTES: String(SPILL_CAP) },
          extension: variant.so,
          pools: [{ name: 'app' }, { name: 'apcu', client: false, page: APCU_PAGE, children: 1 }],
        });
        assert.equal((await apcu()).enabled, true, 'APCu is enabled under FPM (php-apcu)');

        // No agent: the first ~300 records fill the spill file to its cap, every later one is dropped. Far more drops
        // than control lines fit in the 64 KiB allowance past the cap (~1,800 when each drop wrote its own line).
        const down = runLoad({
          url: w.stack.url,
          prefix: 'e',
          concurrency: CONCURRENCY,
          maxRequests: 5000,
          maxMs: 60_000,
        });
        await down.done;
        assertAllOk(down);
        const whileDown = await apcu();
        const spillFile = join(w.tmp.dir, 'spill', 'spill.ndjson');
        const spillBytes = statSync(spillFile).size;
        assert.ok(
          spillBytes >= SPILL_CAP - 1024 && spillBytes <= SPILL_CAP + 65536 + 1024,
          `the spill file took records up to its cap, and stays near it (${spillBytes})`,
        );
        assert.ok(whileDown.dropped > 4000, `most records were dropped past the cap (${whileDown.dropped})`);

        // The agent comes up: it replays the spill file; the next requests' sends carry the drops not reported yet.
        await w.startAgent();
        const up = runLoad({
          url: w.stack.url,
          prefix: 'f',
          concurrency: CONCURRENCY,
          maxRequests: 400,
          maxMs: 30_000,
        });
        await up.done;
        assertAllOk(up);
        await nginxLogged(w, down, 'e');
        await nginxLogged(w, up, 'f');

        // Until the books balance, or the agent has had nothing to do for a while (then the assertions show the gap).
        let quiet = 0;
        let lastReceived = -1;
        const books = async () => {
          const e = outcome(w, 'e');
          const f = outcome(w, 'f');
          const s = await w.agent.status();
          return { e, f, s, c: s.counters };
        };
        await waitFor(
          async () => {
            const { e, f, s, c } = await books();
            if (e.delivered + f.delivered + c.clientDropped >= e.logged + f.logged) return true;
            const idle = s.gauges.spoolRecords === 0 && s.gauges.spillPendingBytes === 0;
            quiet = idle && c.received === lastReceived ? quiet + 1 : 0;
            lastReceived = c.received;
            return quiet >= 8;
          },
          'the books to balance, or the agent to go idle',
          45_000,
          250,
        );
        const { e, f, c } = await books();
        const end = await apcu();
        const sent = e.logged + f.logged;
        const delivered = e.delivered + f.delivered;
        console.log(
          `[php-fpm spill-cap] requests ${sent} (agent down ${e.logged}, up ${f.logged}); spill file ${spillBytes} bytes ` +
            `(cap ${SPILL_CAP}); delivered ${delivered} (replayed from the spill ${c.spillReplayed}); ` +
            `client_dropped ${c.clientDropped}; APCu drops ${end.dropped} (unreported ${end.unreported}); ` +
            `invalid ${invalidOf(c)}; truncated ${c.truncated}`,
        );
        assert.equal(e.logged, down.completed, 'nginx logged every answered request');
        assert.equal(f.logged, up.completed);
        assert.deepEqual([...e.unknown, ...f.unknown], [], 'no record without a logged request');
        assert.equal(e.duplicates + f.duplicates, 0, 'no record delivered twice');
        assert.equal(invalidOf(c), 0, 'no invalid line');
        assert.equal(f.delivered, f.logged, 'with the agent up every record is delivered');
        assert.ok(c.spillReplayed > 0 && e.delivered === c.spillReplayed, 'what was spilled while down was replayed');
        assert.equal(
          delivered + c.clientDropped,
          sent,
          `delivered ${delivered} + client_dropped ${c.clientDropped} = requests ${sent} (APCu counted ${end.dropped} drops)`,
        );
        assert.equal(c.clientDropped, end.dropped, "the agent's client_dropped is the pool's APCu drop count");
        assert.equal(end.unreported, 0, 'nothing left unreported');
        assert.equal(w.stack.phpErrors(), '', 'PHP logged no warning, notice or error');
      });
    });
  });
