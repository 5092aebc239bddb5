// B4: agent ingest, end to end. 200-byte NDJSON records from 8 concurrent client connections into `sidekick agent`
// (spool on, default sync), delivered to a local sink; records/s from the first write until the sink (or the
// agent's `exported` counter) has all of them. Median of N runs. Baseline in the same script: Debian's syslog-ng
// with a reliable disk-buffer (unix-stream in, tcp out to a local line counter), same load.
//
//   npm run build && node --import tsx bench/agent-b4.ts [--records-per-conn 50000] [--runs 3] [--conns 8]
//
// Variants: sink = file exporter (the embedded default) and http (a fake central on loopback, gzip on); batch size =
// the default 100 and 1000. Every load is bounded in records and every wait in time.
//
// This file also holds the child-process roles the agent benchmarks use (so `npm run bench` sees one module):
//   --role load SOCKET CONNS COUNT PREFIX [RATE]  the load generator (prints {"start"}, {"progress"}, {"done"} JSON
//                                                 lines; RATE = total records/s, 0 = as fast as possible)
//   --role sink http|tcp [PORT]             a counting sink (prints {"port"}; answers a stdin line with {"count"})
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { setTimeout as sleep } from 'node:timers/promises';
import { adminGet } from '../src/admin/client.ts';
import { report, skip, which } from './fixtures/runtime-util.ts';

const HERE = fileURLToPath(import.meta.url);
export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const BIN = join(ROOT, 'bin', 'sidekick.js');

// ------------------------------------------------------------------------------------------------ roles

function countLines(b: Buffer): number {
  let n = 0;
  let i = -1;
  while ((i = b.indexOf(10, i + 1)) !== -1) n++;
  return n;
}

async function roleLoad(args: string[]): Promise<void> {
  const [socketPath, connArg, countArg, prefix = 'b', rateArg = '0'] = args;
  const connections = Number(connArg);
  const count = Number(countArg);
  // Optional pacing: total records/s across all connections (0 = as fast as the socket takes them).
  const perConnRate = Number(rateArg) / connections;
  const record = (c: number, i: number): string => {
    const head = `{"k":"${prefix}-${c}-${i}","t":1700000000000,"pad":"`;
    return `${head}${'x'.repeat(200 - head.length - 3)}"}\n`;
  };
  const CHUNK = 320; // records per write (~64 KiB)
  let acked = 0;
  let error: string | undefined;
  const out = (o: unknown): boolean => process.stdout.write(`${JSON.stringify(o)}\n`);
  out({ start: Date.now() });
  const t0 = performance.now();
  const timer = setInterval(() => out({ progress: acked }), 100);
  await Promise.all(
    Array.from(
      { length: connections },
      (_, c) =>
        new Promise<void>((resolve) => {
          const s = net.connect(socketPath!);
          let i = 0;
          let finished = false;
          const finish = (): void => {
            if (!finished) {
              finished = true;
              resolve();
            }
          };
          s.on('error', (err: NodeJS.ErrnoException) => {
            error ??= err.code ?? err.message;
            finish();
          });
          s.on('close', finish);
          const pump = (): void => {
            while (i < count) {
              if (perConnRate > 0) {
                const due = Math.floor(((performance.now() - t0) / 1000) * perConnRate);
                if (i >= due) {
                  setTimeout(pump, 5);
                  return;
                }
              }
              const end = Math.min(count, i + CHUNK);
              let buf = '';
              for (let j = i; j < end; j++) buf += record(c, j);
              const n = end - i;
              i = end;
              // "acked by write": the write callback fired, the kernel has the bytes (what a client counts as sent)
              const ok = s.write(buf, (err) => {
                if (!err) acked += n;
              });
              if (!ok) {
                s.once('drain', pump);
                return;
              }
            }
            s.end();
          };
          s.on('connect', pump);
        }),
    ),
  );
  clearInterval(timer);
  out({ done: true, acked, ms: performance.now() - t0, error });
}

function roleSink(args: string[]): void {
  const [kind = 'http', portArg = '0'] = args;
  let count = 0;
  let server: net.Server;
  if (kind === 'http') {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        let body = Buffer.concat(chunks);
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        count += countLines(body);
        res.writeHead(200).end();
      });
    });
  } else {
    server = net.createServer((s) => s.on('data', (c: Buffer) => (count += countLines(c))));
  }
  server.listen(Number(portArg), '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: (server.address() as net.AddressInfo).port })}\n`);
  });
  process.stdin.on('data', () => process.stdout.write(`${JSON.stringify({ count })}\n`));
  process.stdin.on('end', () => process.exit(0));
}

// ------------------------------------------------------------------------------------------------ driver helpers

/** A child running one of the roles above; `lines` collects its parsed JSON stdout lines. */
export interface RoleChild {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  next(
    pred: (l: Record<string, unknown>) => boolean,
    timeoutMs: number,
    what: string,
  ): Promise<Record<string, unknown>>;
}

export function spawnRole(role: 'load' | 'sink', args: string[]): RoleChild {
  const child = spawn(process.execPath, ['--import', 'tsx', HERE, '--role', role, ...args], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines: Record<string, unknown>[] = [];
  const waiters: { pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }[] =
    [];
  let buf = '';
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith('{')) continue;
      const obj = JSON.parse(line) as Record<string, unknown>;
      lines.push(obj);
      for (const w of [...waiters])
        if (w.pred(obj)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(obj);
        }
    }
  });
  return {
    child,
    lines,
    next: (pred, timeoutMs, what) => {
      const seen = lines.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)),
          timeoutMs,
        );
        waiters.push({
          pred,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
      });
    },
  };
}

export async function sinkCount(sink: RoleChild): Promise<number> {
  const before = sink.lines.length;
  sink.child.stdin!.write('count\n');
  const l = await sink.next((x) => 'count' in x && sink.lines.indexOf(x) >= before, 5000, 'sink count');
  return Number(l.count);
}

export interface AgentRun {
  child: ChildProcess;
  dir: string;
  admin: string;
  status(): Promise<{
    counters: { exported: number; received: number; spooled: number; dropped: Record<string, number> };
    gauges: { spoolRecords: number; rssBytes: number };
    pid: number;
    worker?: { pid: number };
    pipeline?: { spool?: { recoveredRecords: number } };
  }>;
  stop(): Promise<void>;
  kill9(): Promise<void>;
}

export async function startAgentRun(dir: string, agent: Record<string, unknown>): Promise<AgentRun> {
  const admin = join(dir, 'admin.sock');
  const cfg = join(dir, 'sidekick.config.json');
  writeFileSync(cfg, JSON.stringify({ agent, admin: { socket: admin } }));
  const child = spawn(process.execPath, [BIN, 'agent', '-c', cfg], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
    env: { ...process.env, SIDEKICK_LOG_LEVEL: 'warn' },
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const run: AgentRun = {
    child,
    dir,
    admin,
    status: async () =>
      ((await adminGet(admin, '/status', 5000)) as { agent: Awaited<ReturnType<AgentRun['status']>> }).agent,
    stop: async () => {
      child.kill('SIGTERM');
      const done = await Promise.race([exited.then(() => true), sleep(60_000).then(() => false)]);
      if (!done) await run.kill9();
    },
    kill9: async () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
      await exited;
      await sleep(100);
    },
  };
  const until = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`agent exited: ${err}`);
    try {
      const s = (await adminGet(admin, '/status', 1000)) as { agent: { state: string } };
      if (s.agent.state === 'running') break;
    } catch {
      // not up yet
    }
    if (Date.now() > until) throw new Error(`agent did not start: ${err}`);
    await sleep(50);
  }
  return run;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function parseFlags(): { perConn: number; runs: number; conns: number } {
  const argv = process.argv.slice(2);
  const get = (name: string, dflt: number): number => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? Number(argv[i + 1]) : dflt;
  };
  return { perConn: get('records-per-conn', 50_000), runs: get('runs', 3), conns: get('conns', 8) };
}

// ------------------------------------------------------------------------------------------------ B4

async function runAgentOnce(
  sink: 'file' | 'http',
  maxRecords: number,
  conns: number,
  perConn: number,
): Promise<{ rate: number; ingestRate: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'sk-b4-'));
  let sinkChild: RoleChild | undefined;
  let agent: AgentRun | undefined;
  try {
    let exporter: Record<string, unknown> = { type: 'file', dir: join(dir, 'out') };
    if (sink === 'http') {
      sinkChild = spawnRole('sink', ['http']);
      const { port } = await sinkChild.next((l) => 'port' in l, 10_000, 'sink port');
      exporter = { type: 'http', url: `http://127.0.0.1:${port}/ingest`, gzip: true };
    }
    agent = await startAgentRun(dir, {
      socket: join(dir, 'agent.sock'),
      spool: { dir: join(dir, 'spool') },
      exporter,
      batch: { maxRecords, maxDelayMs: 100 },
    });
    const total = conns * perConn;
    const load = spawnRole('load', [join(dir, 'agent.sock'), String(conns), String(perConn), 'b4']);
    const start = Number((await load.next((l) => 'start' in l, 15_000, 'load start')).start);
    const done = await load.next((l) => 'done' in l, 300_000, 'load done');
    const until = Date.now() + 300_000;
    let t1 = 0;
    for (;;) {
      const s = await agent.status();
      if (s.counters.exported >= total) {
        t1 = Date.now();
        break;
      }
      if (Date.now() > until) throw new Error(`agent exported only ${s.counters.exported}/${total}`);
      await sleep(25);
    }
    if (sinkChild) {
      const c = await sinkCount(sinkChild);
      if (c < total) throw new Error(`sink counted ${c} < ${total}`);
    }
    return { rate: total / ((t1 - start) / 1000), ingestRate: total / (Number(done.ms) / 1000) };
  } finally {
    await agent?.stop();
    sinkChild?.child.stdin!.end();
    sinkChild?.child.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function runSyslogNgOnce(conns: number, perConn: number): Promise<{ rate: number; ingestRate: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'sk-b4-sng-'));
  const sinkChild = spawnRole('sink', ['tcp']);
  let sng: ChildProcess | undefined;
  try {
    const { port } = await sinkChild.next((l) => 'port' in l, 10_000, 'sink port');
    const sock = join(dir, 'in.sock');
    mkdirSync(join(dir, 'buf'));
    const conf = join(dir, 'syslog-ng.conf');
    writeFileSync(
      conf,
      `@version: 3.35
options { stats-freq(0); keep-hostname(yes); chain-hostnames(no); log-msg-size(65536); use-dns(no); };
source s_in { unix-stream("${sock}" max-connections(64) log-iw-size(100000) log-fetch-limit(1000) flags(no-parse)); };
destination d_out {
  network("127.0.0.1" port(${port}) transport("tcp")
    disk-buffer(reliable(yes) dir("${join(dir, 'buf')}") disk-buf-size(1073741824) mem-buf-size(67108864)));
};
log { source(s_in); destination(d_out); };
`,
    );
    sng = spawn(
      'syslog-ng',
      [
        '-F',
        '-f',
        conf,
        `--persist-file=${join(dir, 'persist')}`,
        `--pidfile=${join(dir, 'pid')}`,
        `--control=${join(dir, 'ctl')}`,
        '--no-caps',
      ],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    const until0 = Date.now() + 15_000;
    while (!existsSync(sock)) {
      if (Date.now() > until0 || sng.exitCode !== null) throw new Error('syslog-ng did not start');
      await sleep(50);
    }
    const total = conns * perConn;
    const load = spawnRole('load', [sock, String(conns), String(perConn), 'sng']);
    const start = Number((await load.next((l) => 'start' in l, 15_000, 'load start')).start);
    const done = await load.next((l) => 'done' in l, 300_000, 'load done');
    const until = Date.now() + 300_000;
    let t1 = 0;
    for (;;) {
      const c = await sinkCount(sinkChild);
      if (c >= total) {
        t1 = Date.now();
        break;
      }
      if (Date.now() > until) throw new Error(`syslog-ng delivered only ${c}/${total}`);
      await sleep(25);
    }
    return { rate: total / ((t1 - start) / 1000), ingestRate: total / (Number(done.ms) / 1000) };
  } finally {
    if (sng && sng.exitCode === null) {
      sng.kill('SIGTERM');
      await Promise.race([new Promise((r) => sng!.on('exit', r)), sleep(10_000)]);
    }
    sinkChild.child.stdin!.end();
    sinkChild.child.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { perConn, runs, conns } = parseFlags();
  console.log(
    `B4 agent ingest: ${conns} connections × ${perConn} records of 200 B, ${runs} runs each; ` +
      `${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}`,
  );
  const rows: { what: string; rates: number[]; ingest: number[] }[] = [];
  const measure = async (what: string, once: () => Promise<{ rate: number; ingestRate: number }>): Promise<number> => {
    const rates: number[] = [];
    const ingest: number[] = [];
    for (let i = 0; i < runs; i++) {
      const r = await once();
      rates.push(r.rate);
      ingest.push(r.ingestRate);
      console.log(
        `  ${what} run ${i + 1}: ${Math.round(r.rate)} records/s end to end (client writes ${Math.round(r.ingestRate)}/s)`,
      );
    }
    rows.push({ what, rates, ingest });
    return median(rates);
  };
  let baseline: number | undefined;
  if (which('syslog-ng')) {
    baseline = await measure('syslog-ng reliable disk-buffer → tcp', () => runSyslogNgOnce(conns, perConn));
    report({
      bench: 'B4',
      metric: 'syslog-ng reliable disk-buffer, records/s (median)',
      value: Math.round(baseline),
      unit: 'records/s',
    });
  } else {
    skip('B4', 'syslog-ng baseline', 'syslog-ng not found on PATH (apt-get install -y syslog-ng-core)');
  }
  const variants: [string, 'file' | 'http', number][] = [
    ['agent → file exporter, batch 100 (default size)', 'file', 100],
    ['agent → file exporter, batch 1000', 'file', 1000],
    ['agent → http central (gzip), batch 100 (default size)', 'http', 100],
    ['agent → http central (gzip), batch 1000', 'http', 1000],
  ];
  for (const [what, sink, maxRecords] of variants) {
    const m = await measure(what, () => runAgentOnce(sink, maxRecords, conns, perConn));
    report({
      bench: 'B4',
      metric: `${what}, records/s (median)`,
      value: Math.round(m),
      unit: 'records/s',
      ...(baseline ? { target: { op: '>=' as const, value: Math.round(2 * baseline) } } : {}),
    });
  }
  console.log('\n| variant | end-to-end records/s (median) | runs | client write rate (median) |');
  console.log('| --- | ---: | --- | ---: |');
  for (const r of rows)
    console.log(
      `| ${r.what} | ${Math.round(median(r.rates))} | ${r.rates.map((x) => Math.round(x)).join(', ')} | ${Math.round(median(r.ingest))} |`,
    );
}

const roleIdx = process.argv.indexOf('--role');
if (roleIdx >= 0) {
  const role = process.argv[roleIdx + 1];
  const rest = process.argv.slice(roleIdx + 2);
  if (role === 'load') await roleLoad(rest);
  else roleSink(rest);
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await main();
}
