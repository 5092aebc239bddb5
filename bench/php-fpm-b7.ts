// B7 — nginx + PHP-FPM at saturation with the PHP client → agent → central (docs/benchmarks.md "B7").
//
// One run, side by side: one nginx (worker_processes 1) with two server blocks, each in front of its own FPM pool of
// 4 children (pm = static, the same trivial page test/fixtures/php-fpm/index.php): pool "client" loads
// clients/php/sidekick-agent.php as auto_prepend_file, pool "bare" does not. The agent (http exporter, gzip, spool on)
// runs during every round of both pools, shipping to a counting central in this process. Debian's `wrk -t2 -c16
// -d<N>s` hits one pool, then the other, alternating which goes first, for a few rounds. The stack is the one
// test/php-fpm.test.ts runs (test/helpers/php-fpm.ts).
//
// Reports (RESULT lines, see bench/run.ts): PHP req/s with and without the client (medians), their ratio (median of
// the per-round ratios; target >= 0.85), the FPM CPU per request the client adds (median of the per-round differences
// client − bare, from /proc; target <= 5 µs), and records lost = requests the client pool's nginx logged with 200 minus
// records central received (deduplicated by X-Sidekick-Batch-Id; target 0), after the agent has drained. Also FPM CPU
// per request of each pool (less noisy than req/s on a shared machine) and the load average per run.
//
//   node --import tsx bench/php-fpm-b7.ts [--rounds 5] [--seconds 8] [--threads 2] [--connections 16] [--diagnose]
//                                         [--coalesce-ms N]   (agent.ingest.coalesceMs; default: the agent's)
//                                         [--variant NAME=FILE]... (one more pool per flag, FILE as its prepend: another
//                                          version of the client, measured in the same rounds; e.g. the last commit's)
//   npm run bench -- --only b7
//
// Needs php-fpm, nginx and wrk (apt-get install php-fpm nginx-light wrk): without them it prints SKIP and exits 0.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { type AddressInfo } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { adminGet } from '../src/admin/client.ts';
import type { AgentCounterValues, AgentGaugeValues } from '../src/agent/metrics.ts';
import { tmpDir } from '../test/helpers/agent.ts';
import { PHP_FPM_MISSING, startPhpStack, type PhpStack } from '../test/helpers/php-fpm.ts';
import { SIDEKICK_BIN, arg, median, report, run, skip, sleep, treeCpuSeconds, which } from './fixtures/runtime-util.ts';

const BENCH = 'B7';
const ROUNDS = Math.max(1, Number(arg('rounds', '5')));
const SECONDS = Math.max(1, Number(arg('seconds', '8')));
const THREADS = Math.max(1, Number(arg('threads', '2')));
const CONNECTIONS = Math.max(THREADS, Number(arg('connections', '16')));
/** agent.ingest.coalesceMs for this run (default: the agent's default). */
const COALESCE_MS = arg('coalesce-ms', '');
const CHILDREN = 4;
/**
 * --diagnose: two more pools in every round, to split the client's cost: "off" loads the client with
 * SIDEKICK_AGENT_DISABLE=1 (the include and its boot, no send), "down" points it at a socket nobody listens on (connect
 * fails, the drop goes to its own ledger). Not in the ratio or the records balance.
 */
const DIAGNOSE = process.argv.includes('--diagnose');
/** --variant NAME=FILE (repeatable): a pool that prepends FILE instead of the repo's client, in every round. */
const VARIANTS = process.argv.flatMap((a, i) => {
  if (a !== '--variant') return [];
  const m = /^([a-z0-9_-]+)=(.+)$/.exec(process.argv[i + 1] ?? '');
  if (!m || ['client', 'bare', 'off', 'down'].includes(m[1]!))
    throw new Error('--variant NAME=FILE (NAME: [a-z0-9_-]+)');
  return [{ name: m[1]!, file: m[2]! }];
});

function load(): string {
  return loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
}

// ------------------------------------------------------------------------------------------------ central

interface Central {
  url: string;
  /** Records in 2xx answers, first time per batch id. */
  records: number;
  /** The same, per FPM child pid (the record's "pid" field), to tell the pools apart. */
  byPid: Map<number, number>;
  /** Records in repeated batch ids (retries central drops). */
  repeated: number;
  posts: number;
  close(): Promise<void>;
}

async function startCountingCentral(): Promise<Central> {
  const seen = new Set<string>();
  const c: Central = { url: '', records: 0, byPid: new Map(), repeated: 0, posts: 0, close: async () => undefined };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (b: Buffer) => chunks.push(b));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
      const text = body.toString('latin1');
      const pids: number[] = [];
      for (let at = text.indexOf('"pid":'); at >= 0; at = text.indexOf('"pid":', at + 6))
        pids.push(Number.parseInt(text.slice(at + 6, at + 16), 10));
      let n = 0;
      for (let i = body.indexOf(10); i >= 0; i = body.indexOf(10, i + 1)) n++;
      if (body.length > 0 && body[body.length - 1] !== 10) n++;
      const id = String(req.headers['x-sidekick-batch-id'] ?? '');
      c.posts++;
      if (id && seen.has(id)) c.repeated += n;
      else {
        seen.add(id);
        c.records += n;
        for (const pid of pids) c.byPid.set(pid, (c.byPid.get(pid) ?? 0) + 1);
      }
      res.writeHead(200).end();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  c.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ingest`;
  c.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return c;
}

// ------------------------------------------------------------------------------------------------ agent

interface Agent {
  child: ChildProcess;
  status(): Promise<{ counters: AgentCounterValues; gauges: AgentGaugeValues }>;
  stop(): Promise<void>;
}

/** `sidekick agent` in this process's group (bench/run.ts kills the group on timeout), log level warn. */
async function startAgentProc(dir: string, centralUrl: string): Promise<Agent> {
  const admin = join(dir, 'admin.sock');
  const cfg = join(dir, 'sidekick.config.json');
  const agent = {
    socket: join(dir, 'agent.sock'),
    spool: { dir: join(dir, 'spool') },
    exporter: { type: 'http', url: centralUrl, gzip: true, timeoutMs: 10_000 },
    // defaults otherwise; a short batch delay so the last partial batch does not wait 5 s after the last round
    batch: { maxRecords: 100, maxDelayMs: 200 },
    ...(COALESCE_MS !== '' ? { ingest: { coalesceMs: Number(COALESCE_MS) } } : {}),
  };
  writeFileSync(cfg, JSON.stringify({ agent, admin: { socket: admin } }, null, 2));
  const child = spawn(process.execPath, [SIDEKICK_BIN, 'agent', '-c', cfg], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, SIDEKICK_LOG_LEVEL: 'warn' },
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err = (err + c.toString('utf8')).slice(-16384)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const status = async (): Promise<{ counters: AgentCounterValues; gauges: AgentGaugeValues; state: string }> =>
    (
      (await adminGet(admin, '/status', 5000)) as {
        agent: { counters: AgentCounterValues; gauges: AgentGaugeValues; state: string };
      }
    ).agent;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const done = await Promise.race([exited.then(() => true), sleep(30_000).then(() => false)]);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  };
  const until = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`agent exited during start:\n${err}`);
    try {
      if ((await status()).state === 'running') break;
    } catch {
      // not up yet
    }
    if (Date.now() > until) {
      await stop();
      throw new Error(`agent not running after 30 s:\n${err}`);
    }
    await sleep(50);
  }
  return { child, status, stop };
}

// ------------------------------------------------------------------------------------------------ measurements

/** Pids of the FPM children of one pool ("php-fpm: pool <name>"), from /proc. */
function poolPids(pool: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0+$/, '').trim() === `php-fpm: pool ${pool}`)
        out.push(Number(e));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** CPU seconds (user + system) of the FPM children of one pool ("php-fpm: pool <name>"), from /proc. */
function poolCpuSeconds(pool: string): number {
  let total = 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0+$/, '');
      if (cmd.trim() !== `php-fpm: pool ${pool}`) continue;
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total += Number(f[11]) + Number(f[12]);
    } catch {
      // exited meanwhile, or not ours to read
    }
  }
  return total / 100; // clock ticks (sysconf(_SC_CLK_TCK) = 100 on Linux)
}

interface WrkRun {
  pool: string;
  round: number;
  rps: number;
  requests: number;
  errors: string;
  non2xx: number;
  cpuUsPerReq: number;
  /** CPU of the agent (supervisor + worker) and of this process (the counting central) per request of the run. */
  agentUsPerReq: number;
  centralUsPerReq: number;
  loadBefore: string;
  loadAfter: string;
}

async function wrk(stack: PhpStack, agentPid: number, pool: string, round: number, seconds: number): Promise<WrkRun> {
  const loadBefore = load();
  const cpu0 = poolCpuSeconds(pool);
  const agent0 = treeCpuSeconds(agentPid) ?? NaN;
  const self0 = process.cpuUsage();
  const out = await run(
    which('wrk')!,
    [`-t${THREADS}`, `-c${CONNECTIONS}`, `-d${seconds}s`, '--timeout', '10s', stack.urls[pool]!],
    (seconds + 20) * 1000,
  );
  const cpu = poolCpuSeconds(pool) - cpu0;
  const agentCpu = (treeCpuSeconds(agentPid) ?? NaN) - agent0;
  const self = process.cpuUsage(self0);
  const rps = Number(/Requests\/sec:\s*([\d.]+)/.exec(out)?.[1]);
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
  if (!Number.isFinite(rps)) throw new Error(`could not parse wrk output:\n${out}`);
  const sock = /Socket errors: (.*)/.exec(out)?.[1] ?? 'none';
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  return {
    pool,
    round,
    rps,
    requests,
    errors: sock,
    non2xx,
    cpuUsPerReq: requests > 0 ? (cpu * 1e6) / requests : NaN,
    agentUsPerReq: requests > 0 ? (agentCpu * 1e6) / requests : NaN,
    centralUsPerReq: requests > 0 ? (self.user + self.system) / requests : NaN,
    loadBefore,
    loadAfter: load(),
  };
}

// ------------------------------------------------------------------------------------------------ main

async function main(): Promise<void> {
  const missing = [PHP_FPM_MISSING || '', which('wrk') ? '' : 'wrk not installed (apt-get install wrk)'].filter(
    Boolean,
  );
  if (missing.length) {
    skip(BENCH, 'nginx + PHP-FPM with the client', missing.join('; '));
    return;
  }
  console.log(
    `B7 nginx + PHP-FPM + client → agent → central: 2 pools × ${CHILDREN} children (pm = static), one nginx worker, ` +
      `wrk -t${THREADS} -c${CONNECTIONS} -d${SECONDS}s, ${ROUNDS} rounds alternating; ` +
      `${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}; load avg ${load()}`,
  );
  const tmp = tmpDir('sk-b7-');
  let central: Central | undefined;
  let agent: Agent | undefined;
  let stack: PhpStack | undefined;
  const cleanup = async (): Promise<void> => {
    await stack?.cleanup().catch(() => undefined);
    await agent?.stop().catch(() => undefined);
    await central?.close().catch(() => undefined);
    tmp.cleanup();
  };
  const onSignal = (): void => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    central = await startCountingCentral();
    agent = await startAgentProc(tmp.dir, central.url);
    stack = await startPhpStack({
      agentSocket: join(tmp.dir, 'agent.sock'),
      children: CHILDREN,
      pools: [
        { name: 'client', client: true },
        { name: 'bare', client: false },
        ...(DIAGNOSE
          ? [
              { name: 'off', client: true, env: { SIDEKICK_AGENT_DISABLE: '1' } },
              {
                name: 'down',
                client: true,
                // a dir of its own, away from the agent's spill dir (<socket dir>/spill): nothing of it is replayed
                env: {
                  SIDEKICK_AGENT_SOCKET: join(tmp.dir, 'down', 'nobody.sock'),
                  SIDEKICK_AGENT_SPILL_DIR: join(tmp.dir, 'down', 'spill'),
                },
              },
            ]
          : []),
        ...VARIANTS.map((v) => ({ name: v.name, client: true, prepend: v.file })),
      ],
      detached: false,
    });

    // warm-up (opcache, FPM children, the agent's connections): not reported, but counted in the records balance
    await wrk(stack, agent.child.pid!, 'client', 0, 2);
    await wrk(stack, agent.child.pid!, 'bare', 0, 2);
    const pools = [
      ...(DIAGNOSE ? ['client', 'bare', 'off', 'down'] : ['client', 'bare']),
      ...VARIANTS.map((v) => v.name),
    ];
    for (const pool of pools.slice(2)) await wrk(stack, agent.child.pid!, pool, 0, 2);

    const runs: WrkRun[] = [];
    const ratios: number[] = [];
    const added: number[] = [];
    for (let r = 1; r <= ROUNDS; r++) {
      // alternate which pool goes first (and, with --diagnose or variants, rotate them all)
      const order =
        pools.length > 2
          ? [...pools.slice((r - 1) % pools.length), ...pools.slice(0, (r - 1) % pools.length)]
          : r % 2 === 1
            ? ['client', 'bare']
            : ['bare', 'client'];
      const got: Record<string, WrkRun> = {};
      for (const pool of order) {
        const w = await wrk(stack, agent.child.pid!, pool, r, SECONDS);
        got[pool] = w;
        runs.push(w);
        console.log(
          `  round ${r} ${pool.padEnd(6)} ${w.rps.toFixed(0).padStart(6)} req/s  ${w.requests} requests  ` +
            `CPU µs/req: FPM ${w.cpuUsPerReq.toFixed(1)} agent ${w.agentUsPerReq.toFixed(1)} ` +
            `central ${w.centralUsPerReq.toFixed(1)}  non-2xx ${w.non2xx}  socket errors ${w.errors}  ` +
            `load ${w.loadBefore} → ${w.loadAfter}`,
        );
      }
      const ratio = got.client!.rps / got.bare!.rps;
      ratios.push(ratio);
      added.push(got.client!.cpuUsPerReq - got.bare!.cpuUsPerReq);
      const others = pools
        .slice(2)
        .map(
          (p) =>
            `, ${p} ${(got[p]!.rps / got.bare!.rps).toFixed(3)} (+${(got[p]!.cpuUsPerReq - got.bare!.cpuUsPerReq).toFixed(1)} µs)`,
        )
        .join('');
      console.log(
        `  round ${r} ratio with/without client ${ratio.toFixed(3)}, FPM CPU added ${added.at(-1)!.toFixed(1)} µs/req${others}`,
      );
    }

    // Drain: every record of the client pool reaches central, or the agent goes idle with nothing left to send.
    // Every line nginx logged for the client pool ran PHP: 200s, and 499s (wrk closed the connection at the end of a
    // run while the request was in FastCGI; PHP still ran it to the end, shutdown functions and the send included).
    const logged = (): number => stack!.accessLogLines('client').length;
    const until = Date.now() + 60_000;
    let lastReceived = -1;
    let quiet = 0;
    let st = await agent.status();
    const clientPids = poolPids('client'); // pm = static, no max_requests: the same children all along
    const delivered = (): number => clientPids.reduce((a, pid) => a + (central!.byPid.get(pid) ?? 0), 0);
    while (Date.now() < until) {
      if (delivered() >= logged()) break;
      st = await agent.status();
      quiet = st.gauges.spoolRecords === 0 && st.counters.received === lastReceived ? quiet + 1 : 0;
      lastReceived = st.counters.received;
      if (quiet >= 8) break;
      await sleep(250);
    }
    st = await agent.status();
    const nginxLogged = logged();
    const non200 = stack.accessLogLines('client').filter((l) => l.status !== 200).length;
    const lost = nginxLogged - delivered();
    const others = central.records - delivered();
    const c = st.counters;
    const invalid = Object.values(c.invalid).reduce((a, b) => a + b, 0);

    const withC = runs.filter((w) => w.pool === 'client');
    const without = runs.filter((w) => w.pool === 'bare');
    const medWith = median(withC.map((w) => w.rps));
    const medWithout = median(without.map((w) => w.rps));
    const cpuWith = median(withC.map((w) => w.cpuUsPerReq));
    const cpuWithout = median(without.map((w) => w.cpuUsPerReq));
    const agentWith = median(withC.map((w) => w.agentUsPerReq));
    const agentWithout = median(without.map((w) => w.agentUsPerReq));
    const centralWith = median(withC.map((w) => w.centralUsPerReq));
    console.log(
      `\nclient pool: nginx logged ${nginxLogged} (of which ${non200} not 200); central received ${delivered()} ` +
        `from its ${clientPids.length} children (+${others} from other pools, +${central.repeated} in repeated ` +
        `batch ids, ${central.posts} POSTs); agent received ${c.received}, ` +
        `exported ${c.exported}, via the spill ${c.spillReplayed}, client_dropped ${c.clientDropped}, ` +
        `truncated ${c.truncated}, invalid ${invalid}, ` +
        `spool ${st.gauges.spoolRecords}; bare pool logged ${stack.accessLogLines('bare').length}`,
    );
    console.log(
      `req/s median: with client ${medWith.toFixed(0)}, without ${medWithout.toFixed(0)}; ` +
        `ratio (median of rounds) ${median(ratios).toFixed(3)} [${ratios.map((x) => x.toFixed(3)).join(', ')}]; ` +
        `CPU µs/req with client: FPM ${cpuWith.toFixed(1)}, agent ${agentWith.toFixed(1)}, central ${centralWith.toFixed(1)}; ` +
        `without: FPM ${cpuWithout.toFixed(1)}, agent (idle) ${agentWithout.toFixed(1)}; load avg ${load()}`,
    );
    report({ bench: BENCH, metric: 'PHP req/s with the client (median)', value: Math.round(medWith), unit: 'req/s' });
    report({
      bench: BENCH,
      metric: 'PHP req/s without the client (median)',
      value: Math.round(medWithout),
      unit: 'req/s',
    });
    report({
      bench: BENCH,
      metric: 'req/s ratio with / without the client (median of rounds)',
      value: Number(median(ratios).toFixed(3)),
      unit: 'x',
      target: { op: '>=', value: 0.85 },
    });
    report({
      bench: BENCH,
      metric: 'FPM CPU per request added by the client (median of rounds, client − bare)',
      value: Number(median(added).toFixed(1)),
      unit: 'µs',
      target: { op: '<=', value: 5 },
      note: `rounds ${added.map((x) => x.toFixed(1)).join(', ')}`,
    });
    report({
      bench: BENCH,
      metric: 'FPM CPU per request, with the client (median)',
      value: Number(cpuWith.toFixed(1)),
      unit: 'µs',
    });
    report({
      bench: BENCH,
      metric: 'FPM CPU per request, without the client (median)',
      value: Number(cpuWithout.toFixed(1)),
      unit: 'µs',
    });
    report({
      bench: BENCH,
      metric: 'agent CPU per record (median of client rounds)',
      value: Number(agentWith.toFixed(1)),
      unit: 'µs',
    });
    report({
      bench: BENCH,
      metric: 'records lost (nginx-logged − delivered)',
      value: lost,
      unit: 'records',
      target: { op: '<=', value: 0 },
      note:
        `logged ${nginxLogged} (${non200} not 200), delivered ${delivered()}, client_dropped ${c.clientDropped}` +
        (lost > 0 && lost <= non200 ? '; within the non-200 count: those may not have reached PHP' : ''),
    });
    report({
      bench: BENCH,
      metric: 'records lost and not counted by the agent (lost − client_dropped)',
      value: lost - c.clientDropped,
      unit: 'records',
      target: { op: '<=', value: 0 },
    });
    if (pools.length > 2)
      for (const pool of pools) {
        const rs = runs.filter((w) => w.pool === pool);
        const bare = (round: number): WrkRun => runs.find((w) => w.pool === 'bare' && w.round === round)!;
        console.log(
          `pool ${pool.padEnd(8)}: ${median(rs.map((w) => w.rps)).toFixed(0)} req/s, ` +
            `FPM CPU ${median(rs.map((w) => w.cpuUsPerReq)).toFixed(1)} µs/req, ` +
            `ratio to bare ${median(rs.map((w) => w.rps / bare(w.round).rps)).toFixed(3)}, ` +
            `added ${median(rs.map((w) => w.cpuUsPerReq - bare(w.round).cpuUsPerReq)).toFixed(1)} µs/req ` +
            `(medians of ${rs.length} rounds)`,
        );
      }
    console.log(`\nload avg at the end ${load()}`);
  } finally {
    await cleanup();
  }
}

await main();
