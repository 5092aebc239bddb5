// B4: agent ingest, end to end. 200-byte NDJSON records from 8 concurrent client connections into `sidekick agent`
// (spool on, default sync), delivered to a local sink; records/s from the first write until the sink (or the
// agent's `exported` counter) has all of them. Median of N runs, the variants interleaved run by run. Baseline in the
// same script: Debian's syslog-ng with a reliable disk-buffer (unix-stream in, tcp out to a local line counter),
// tuned for throughput as its documentation advises (see syslogNgConf), same load. Every sink checks that it got
// exactly every record (no loss, no duplicate; the tcp and http sinks also that each line is a bare record).
//
//   npm run build && node --import tsx bench/agent-b4.ts [--records-per-conn 50000] [--runs 3] [--conns 8]
//                     [--pattern fpm --rate 5000,10000,20000 --seconds 10]   (B7's arrival pattern, see fpmLoad)
//                     [--agent-bin before=/path/to/other/bin/sidekick.js --agent-bin after=bin/sidekick.js]
//                     [--coalesce-ms N]
//                     [--warmup 25000] [--only sng,sng-untuned,file-100,file-1000,http-100,http-1000,
//                                            http-100-oldspace64,otlp-100,http-100-php,otlp-100-php]
//                     [--agent-node-arg --cpu-prof --agent-node-arg --cpu-prof-dir=DIR]   (node options of the agent)
//
// Warm-up: before the timed load, every daemon (agent or syslog-ng alike) first takes --warmup records per
// connection, untimed, and delivers them: B4 measures the steady state of a long-running daemon, not its first
// seconds (the agent's JIT compiles its hot paths then; syslog-ng has no such phase, it loses nothing by it).
// --warmup 0 measures from a cold start.
//
// Variants: sink = file exporter (the embedded default) and http (a fake central on loopback, gzip on); batch size =
// the default 100 and 1000. otlp-100: the otlp exporter (http/protobuf, gzip, batch 100) into a counting OTLP sink;
// B4's records are not request records, so it sends LogRecords only. http-100-php / otlp-100-php: the same two with
// php_request-shaped records (~230 B, what clients/php/sidekick-agent.php sends), so otlp also sends a SERVER span
// per record (two POSTs per part, /v1/logs and /v1/traces). `sng-untuned` (the first baseline configuration) and `http-100-oldspace64` (the agent
// started with node --initial-old-space-size=64) run only when named in --only. Every load is bounded in records and
// every wait in time. Besides the rate, each run reports the daemon's CPU time per record (agent: supervisor +
// worker; syslog-ng: its process; from /proc) and the load average.
//
// --pattern fpm: B7's arrival pattern without nginx and PHP (docs/benchmarks.md "B7"): --conns persistent connections
// (default 16: the FPM children) each write one record per write(2) (--only http-100-php for B7's ~300-byte
// php_request records), --rate records/s in all for --seconds (each rate of a list is its own variant). The warm-up
// stays bulk. What it reports is the daemon's CPU per record (the rate is the pace), and the idle daemon's CPU over 1 s
// before the load. --agent-bin name=path (repeatable) runs every agent variant with each `sidekick` binary, interleaved:
// a before/after comparison of two builds in one script.
//
// This file also holds the child-process roles the agent benchmarks use (so `npm run bench` sees one module):
//   --role load SOCKET CONNS COUNT PREFIX [RATE] [SHAPE] [PATTERN]  the load generator (prints {"start"},
//                                                 {"progress"}, {"done"} JSON lines; RATE = total records/s, 0 = as
//                                                 fast as possible; SHAPE = pad (200 B, default) or php (php_request);
//                                                 PATTERN = bulk (~64 KiB writes, default) or fpm (one record per
//                                                 write, paced at RATE: fpmLoad))
//   --role sink http|tcp|otlp [PORT]        a counting sink (prints {"port"}; answers a stdin line with
//                                           {"count","foreign"}: lines, and lines not starting with '{'; otlp:
//                                           count = LogRecords, spans = Spans, foreign = requests it could not count)
import { spawn, type ChildProcess } from 'node:child_process';
import {
  mkdtempSync,
  rmSync,
  writeFileSync,
  writeSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
} from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
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

async function roleLoad(args: string[]): Promise<void> {
  const [socketPath, connArg, countArg, prefix = 'b', rateArg = '0', shape = 'pad', pattern = 'bulk'] = args;
  const connections = Number(connArg);
  const count = Number(countArg);
  // Optional pacing: total records/s across all connections (0 = as fast as the socket takes them).
  const perConnRate = Number(rateArg) / connections;
  const pad = (c: number, i: number): string => {
    const head = `{"k":"${prefix}-${c}-${i}","t":1700000000000,"pad":"`;
    return `${head}${'x'.repeat(200 - head.length - 3)}"}\n`;
  };
  // What the PHP client sends for one request (its 11 fields, no `error`), plus one Agent::tag() field naming it.
  const ROUTES = ['/index.php', '/api/orders', '/api/users/42', '/checkout', '/search'];
  const php = (c: number, i: number): string =>
    `{"ts":${1_767_000_000_000 + i},"type":"php_request","route":"${ROUTES[i % 5]}","method":"${i % 5 === 3 ? 'POST' : 'GET'}",` +
    `"status":${i % 10 === 3 ? 404 : 200},"duration_ms":${((i * 7919) % 250_000) / 1000 + 3.001},` +
    `"memory_peak_bytes":${2_097_152 * (1 + (i % 4))},"host":"web-7f9c-02","pid":${21_000 + c},"sapi":"fpm-fcgi",` +
    `"sampled":false,"req":"${prefix}-${c}-${i}"}\n`;
  const record = shape === 'php' ? php : pad;
  if (pattern === 'fpm') {
    await fpmLoad(socketPath!, connections, count, Number(rateArg), record);
    return;
  }
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

/**
 * The FPM arrival pattern (B7's, without nginx and PHP): `connections` persistent connections (the FPM children),
 * each record its own write(2) of one line, as the PHP client's one `sendto` per request. A 1 ms ticker computes how
 * many records are due at `rate` records/s in all and writes them round-robin over the connections, one write per
 * record (non-blocking, as the PHP client: a write that would block waits for the next tick and is counted
 * `blocked`). Every connection writes `count` records, then closes. Bounded: count × connections writes, and a stop
 * after (count × connections / rate) × 3 + 10 s whatever happened.
 */
async function fpmLoad(
  socketPath: string,
  connections: number,
  count: number,
  rate: number,
  record: (c: number, i: number) => string,
): Promise<void> {
  if (!(rate > 0)) throw new Error('--pattern fpm needs a rate');
  const out = (o: unknown): boolean => process.stdout.write(`${JSON.stringify(o)}\n`);
  const socks = await Promise.all(
    Array.from(
      { length: connections },
      () =>
        new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(socketPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        }),
    ),
  );
  for (const s of socks) s.on('error', () => undefined);
  const fds = socks.map((s) => (s as unknown as { _handle: { fd: number } })._handle.fd);
  const sent = new Array<number>(connections).fill(0);
  const total = connections * count;
  let written = 0;
  let blocked = 0;
  let error: string | undefined;
  let next = 0; // the connection whose turn it is
  out({ start: Date.now() });
  const t0 = performance.now();
  const limitMs = (total / rate) * 3000 + 10_000;
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const now = performance.now() - t0;
      const due = Math.min(total, Math.floor((now / 1000) * rate));
      let stuck = 0;
      while (written < due && stuck < connections && !error) {
        const c = next;
        next = (next + 1) % connections;
        if (sent[c]! >= count) {
          stuck++;
          continue;
        }
        try {
          writeSync(fds[c]!, record(c, sent[c]!));
          sent[c]!++;
          written++;
          stuck = 0;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
            blocked++;
            stuck++;
          } else error = code ?? String(err);
        }
      }
      if (written >= total || error || now > limitMs) {
        clearInterval(tick);
        resolve();
      }
    }, 1);
  });
  const ms = performance.now() - t0;
  for (const s of socks) s.end();
  out({ done: true, acked: written, ms, blocked, error: error ?? (written < total ? 'time limit' : undefined) });
}

function roleSink(args: string[]): void {
  const [kind = 'http', portArg = '0'] = args;
  let count = 0;
  // Lines that do not start with '{' (a syslog header, an escape, a torn line): must stay 0 for a bare-record sink.
  let foreign = 0;
  const tally = (b: Buffer, atStart: boolean): boolean => {
    if (atStart && b.length > 0 && b[0] !== 0x7b) foreign++;
    let nl = -1;
    while ((nl = b.indexOf(10, nl + 1)) !== -1) {
      count++;
      if (nl + 1 < b.length && b[nl + 1] !== 0x7b) foreign++;
    }
    return b.length === 0 ? atStart : b[b.length - 1] === 10; // does the next chunk start a line?
  };
  let spans = 0;
  let server: net.Server;
  if (kind === 'otlp') {
    // Counts exactly, without decoding the messages: gunzip (as the http sink does), then walk only the lengths of
    // ExportXServiceRequest { 1: ResourceX { 2: ScopeX { 2: LogRecord | Span } } } and count the innermost entries.
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        let body = Buffer.concat(chunks);
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        const n = countOtlpEntries(body);
        if (n < 0 || !/^application\/x-protobuf/.test(req.headers['content-type'] ?? '')) foreign++;
        else if (req.url === '/v1/logs') count += n;
        else if (req.url === '/v1/traces') spans += n;
        else foreign++;
        res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
      });
    });
  } else if (kind === 'http') {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        let body = Buffer.concat(chunks);
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        tally(body, true);
        res.writeHead(200).end();
      });
    });
  } else {
    server = net.createServer((s) => {
      let atStart = true;
      s.on('data', (c: Buffer) => (atStart = tally(c, atStart)));
    });
  }
  server.listen(Number(portArg), '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: (server.address() as net.AddressInfo).port })}\n`);
  });
  process.stdin.on('data', () => process.stdout.write(`${JSON.stringify({ count, foreign, spans })}\n`));
  process.stdin.on('end', () => process.exit(0));
}

/**
 * LogRecords (or Spans) in an ExportLogsServiceRequest (ExportTraceServiceRequest), from the lengths alone: field 1
 * of the request, field 2 of each ResourceX, field 2 of each ScopeX (the same numbers for both signals); every other
 * field skipped by its wire type. -1 when the bytes are not such a message (a truncated or malformed length).
 */
export function countOtlpEntries(b: Buffer): number {
  let pos = 0;
  const varint = (end: number): number => {
    let v = 0;
    for (let mul = 1; pos < end && mul < 2 ** 63; mul *= 128) {
      const byte = b[pos++]!;
      v += (byte & 0x7f) * mul;
      if (byte < 0x80) return v;
    }
    throw new RangeError('bad varint');
  };
  // calls `inner(start, end)` for each `want` field in [start, end), skips the rest
  const walk = (start: number, end: number, want: number, inner: (s: number, e: number) => void): void => {
    pos = start;
    while (pos < end) {
      const key = varint(end);
      const wire = key & 7;
      if (wire === 2) {
        const len = varint(end);
        const s = pos;
        if (s + len > end) throw new RangeError('bad length');
        if (key >>> 3 === want) inner(s, s + len);
        pos = s + len;
      } else if (wire === 0) varint(end);
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else throw new RangeError('bad wire type');
    }
    if (pos !== end) throw new RangeError('overrun');
  };
  let n = 0;
  try {
    walk(0, b.length, 1, (s1, e1) =>
      walk(s1, e1, 2, (s2, e2) =>
        walk(s2, e2, 2, () => {
          n++;
        }),
      ),
    );
  } catch {
    return -1;
  }
  return n;
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

export async function sinkTally(sink: RoleChild): Promise<{ count: number; foreign: number; spans: number }> {
  const before = sink.lines.length;
  sink.child.stdin!.write('count\n');
  const l = await sink.next((x) => 'count' in x && sink.lines.indexOf(x) >= before, 5000, 'sink count');
  return { count: Number(l.count), foreign: Number(l.foreign ?? 0), spans: Number(l.spans ?? 0) };
}

export async function sinkCount(sink: RoleChild): Promise<number> {
  return (await sinkTally(sink)).count;
}

/**
 * Every record arrived, once: after the count reached `total`, wait a moment and check that it is exactly `total`
 * (no duplicates) and, for a bare-record sink, that every line starts with '{' (no header, no escaping, no torn line).
 */
/** The file exporter's output holds exactly `total` lines, each a bare record. */
function checkFilesExact(dir: string, total: number): void {
  let count = 0;
  for (const name of readdirSync(dir)) {
    if (!name.endsWith('.ndjson')) continue;
    const b = readFileSync(join(dir, name));
    let nl = -1;
    while ((nl = b.indexOf(10, nl + 1)) !== -1) count++;
  }
  if (count !== total) throw new Error(`file exporter wrote ${count} lines, expected exactly ${total}`);
}

export async function checkSinkExact(sink: RoleChild, total: number, lines: 'record' | 'any'): Promise<void> {
  await sleep(200);
  const { count, foreign } = await sinkTally(sink);
  if (count !== total) throw new Error(`sink counted ${count} lines, expected exactly ${total}`);
  if (lines === 'record' && foreign > 0) throw new Error(`sink got ${foreign} lines that are not bare records`);
}

/** The OTLP sink got exactly `logs` LogRecords and `spans` Spans, and no request it could not count. */
async function checkOtlpSinkExact(sink: RoleChild, logs: number, spans: number): Promise<void> {
  await sleep(200);
  const t = await sinkTally(sink);
  if (t.count !== logs) throw new Error(`otlp sink counted ${t.count} LogRecords, expected exactly ${logs}`);
  if (t.spans !== spans) throw new Error(`otlp sink counted ${t.spans} spans, expected exactly ${spans}`);
  if (t.foreign > 0) throw new Error(`otlp sink got ${t.foreign} requests it could not count`);
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

export async function startAgentRun(
  dir: string,
  agent: Record<string, unknown>,
  nodeArgs: string[] = [],
  bin = BIN,
): Promise<AgentRun> {
  const admin = join(dir, 'admin.sock');
  const cfg = join(dir, 'sidekick.config.json');
  writeFileSync(cfg, JSON.stringify({ agent, admin: { socket: admin } }));
  // node options given here reach the worker too (it is forked with the supervisor's execArgv)
  const child = spawn(process.execPath, [...nodeArgs, bin, 'agent', '-c', cfg], {
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

function parseFlags(): {
  perConn: number;
  runs: number;
  conns: number;
  warmup: number;
  only: string[];
  agentNodeArgs: string[];
  pattern: 'bulk' | 'fpm';
  rates: number[];
  seconds: number;
  bins: { name: string; path: string }[];
  coalesceMs: number | undefined;
} {
  const argv = process.argv.slice(2);
  const get = (name: string, dflt: number): number => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? Number(argv[i + 1]) : dflt;
  };
  const only: string[] = [];
  const agentNodeArgs: string[] = [];
  const bins: { name: string; path: string }[] = [];
  let pattern = 'bulk' as 'bulk' | 'fpm';
  let rates: number[] = [0];
  argv.forEach((a, i) => {
    if (a === '--only' && argv[i + 1]) only.push(...argv[i + 1]!.split(','));
    if (a === '--agent-node-arg' && argv[i + 1]) agentNodeArgs.push(argv[i + 1]!);
    if (a === '--pattern' && argv[i + 1] === 'fpm') pattern = 'fpm';
    if (a === '--rate' && argv[i + 1]) rates = argv[i + 1]!.split(',').map(Number);
    if (a === '--agent-bin' && argv[i + 1]) {
      const [name, path] = argv[i + 1]!.split('=');
      bins.push({ name: name!, path: path! });
    }
  });
  if (pattern === 'fpm' && !rates.every((r) => r > 0)) throw new Error('--pattern fpm needs --rate N[,N…] > 0');
  const coalesce = argv.indexOf('--coalesce-ms');
  return {
    perConn: get('records-per-conn', 50_000),
    runs: get('runs', 3),
    conns: get('conns', pattern === 'fpm' ? 16 : 8),
    warmup: get('warmup', pattern === 'fpm' ? 5000 : 25_000),
    only,
    agentNodeArgs,
    pattern,
    rates,
    seconds: get('seconds', 10),
    bins,
    coalesceMs: coalesce >= 0 ? Number(argv[coalesce + 1]) : undefined,
  };
}

/** CPU time (user + system, ms) a process has used so far, from /proc; 0 where there is no /proc. */
export function cpuMs(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}
const CLOCK_TICKS = 100; // USER_HZ: 100 on every Linux ABI Node runs on

/**
 * Voluntary context switches so far (a thread went to sleep: how often the process was woken up), of the main thread
 * and of all its threads (libuv's thread pool does the spool's writes and fsyncs), from /proc; 0 where unavailable.
 */
export function wakeups(pid: number | undefined): { main: number; all: number } {
  if (!pid) return { main: 0, all: 0 };
  const of = (path: string): number => {
    try {
      return Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(path, 'utf8'))?.[1] ?? 0);
    } catch {
      return 0;
    }
  };
  let all = 0;
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) all += of(`/proc/${pid}/task/${t}/status`);
  } catch {
    // gone
  }
  return { main: of(`/proc/${pid}/status`), all };
}

export interface RunResult {
  rate: number;
  ingestRate: number;
  /** CPU time of the daemon (agent: supervisor + worker; syslog-ng: its process) per record, µs. */
  cpuUsPerRecord: number;
  /** 1-minute load average at the end of the run. */
  load: number;
  /** The agent's worker alone, µs CPU per record (agent runs only). */
  workerUsPerRecord?: number;
  /** CPU ms per second of the idle daemon, measured for 1 s just before the timed load (agent runs, fpm pattern). */
  idleMsPerS?: number;
  /** fpm pattern: writes that would have blocked (retried at the next tick). */
  blocked?: number;
  /** fpm pattern: the worker's main thread's wake-ups (voluntary context switches) per 1000 records, and all its threads'. */
  wakeupsPerK?: { main: number; all: number };
}

// ------------------------------------------------------------------------------------------------ B4

/** The load of one run: `conns` connections; `warmup` records each first (untimed), then `perConn` records each. */
export interface LoadShape {
  conns: number;
  perConn: number;
  warmup: number;
  /** The records: B4's 200-byte `pad` records (default), or php_request-shaped ones. */
  shape?: 'pad' | 'php';
  /**
   * bulk (default): ~64 KiB writes as fast as the socket takes them. fpm: one record per write, `rate` records/s in
   * all over the connections (B7's arrival pattern, see fpmLoad); the warm-up stays bulk.
   */
  pattern?: 'bulk' | 'fpm';
  rate?: number;
}

/**
 * One timed load against a running daemon. With a warm-up, the same generator first sends `warmup` records per
 * connection and waits until they all arrived, untimed: what is then measured is the daemon in its steady state
 * (a long-running daemon's one-time costs, such as the JIT compiling its hot paths, are not per-record costs).
 * `delivered()` counts records at the far end (the sink, or the agent's exported counter); `cpu()` is the daemon's
 * CPU time so far. Returns the measured run and the count the warm-up left behind.
 */
async function timedLoad(
  sock: string,
  load: LoadShape,
  delivered: () => Promise<number>,
  cpu: () => number,
  cpuWorker?: () => number,
  workerPid?: number,
): Promise<{ result: RunResult; warm: number }> {
  const { conns, perConn, warmup } = load;
  let warm = 0;
  if (warmup > 0) {
    const w = spawnRole('load', [sock, String(conns), String(warmup), 'warm', '0', load.shape ?? 'pad']);
    await w.next((l) => 'done' in l, 300_000, 'warm-up load done');
    const until = Date.now() + 300_000;
    while ((warm = await delivered()) < conns * warmup) {
      if (Date.now() > until) throw new Error(`warm-up: only ${warm}/${conns * warmup} delivered`);
      await sleep(25);
    }
  }
  const total = conns * perConn;
  let idleMsPerS: number | undefined;
  if (load.pattern === 'fpm') {
    // what the daemon costs doing nothing (its timers), for a sense of the fixed part of the per-record number
    const c0 = cpu();
    await sleep(1000);
    idleMsPerS = cpu() - c0;
  }
  const cpu0 = cpu();
  const worker0 = cpuWorker?.() ?? 0;
  const wake0 = wakeups(workerPid);
  const gen = spawnRole('load', [
    sock,
    String(conns),
    String(perConn),
    'b4',
    String(load.rate ?? 0),
    load.shape ?? 'pad',
    load.pattern ?? 'bulk',
  ]);
  const start = Number((await gen.next((l) => 'start' in l, 15_000, 'load start')).start);
  const done = await gen.next((l) => 'done' in l, 300_000, 'load done');
  if (load.pattern === 'fpm' && done.error) throw new Error(`fpm load: ${String(done.error)}`);
  const until = Date.now() + 300_000;
  let got: number;
  while ((got = (await delivered()) - warm) < total) {
    if (Date.now() > until) throw new Error(`delivered only ${got}/${total}`);
    await sleep(25);
  }
  const t1 = Date.now();
  const wake1 = wakeups(workerPid);
  return {
    warm,
    result: {
      rate: total / ((t1 - start) / 1000),
      ingestRate: total / (Number(done.ms) / 1000),
      cpuUsPerRecord: ((cpu() - cpu0) * 1000) / total,
      load: loadavg()[0]!,
      ...(cpuWorker ? { workerUsPerRecord: ((cpuWorker() - worker0) * 1000) / total } : {}),
      ...(idleMsPerS !== undefined
        ? {
            idleMsPerS,
            blocked: Number(done.blocked ?? 0),
            ...(workerPid
              ? {
                  wakeupsPerK: {
                    main: ((wake1.main - wake0.main) * 1000) / total,
                    all: ((wake1.all - wake0.all) * 1000) / total,
                  },
                }
              : {}),
          }
        : {}),
    },
  };
}

/** --agent-node-arg: node options for every agent run (e.g. --cpu-prof --cpu-prof-dir=DIR: the worker inherits them). */
let extraAgentNodeArgs: string[] = [];

/** --agent-bin / --coalesce-ms: which `sidekick` to run (A/B builds) and agent.ingest.coalesceMs (default: the agent's). */
interface AgentChoice {
  bin?: string;
  coalesceMs?: number;
}

async function runAgentOnce(
  sink: 'file' | 'http' | 'otlp',
  maxRecords: number,
  load: LoadShape,
  nodeArgs: string[] = [],
  choice: AgentChoice = {},
): Promise<RunResult> {
  const dir = mkdtempSync(join(tmpdir(), 'sk-b4-'));
  let sinkChild: RoleChild | undefined;
  let agent: AgentRun | undefined;
  try {
    let exporter: Record<string, unknown> = { type: 'file', dir: join(dir, 'out') };
    if (sink === 'http') {
      sinkChild = spawnRole('sink', ['http']);
      const { port } = await sinkChild.next((l) => 'port' in l, 10_000, 'sink port');
      exporter = { type: 'http', url: `http://127.0.0.1:${port}/ingest`, gzip: true };
    } else if (sink === 'otlp') {
      sinkChild = spawnRole('sink', ['otlp']);
      const { port } = await sinkChild.next((l) => 'port' in l, 10_000, 'sink port');
      exporter = {
        type: 'otlp',
        endpoint: `http://127.0.0.1:${port}`,
        protocol: 'http/protobuf',
        compression: 'gzip',
      };
    }
    const a = await startAgentRun(
      dir,
      {
        socket: join(dir, 'agent.sock'),
        spool: { dir: join(dir, 'spool') },
        exporter,
        batch: { maxRecords, maxDelayMs: 100 },
        ...(choice.coalesceMs !== undefined ? { ingest: { coalesceMs: choice.coalesceMs } } : {}),
      },
      [...extraAgentNodeArgs, ...nodeArgs],
      choice.bin,
    );
    agent = a;
    const st0 = await a.status();
    const pids = [a.child.pid, st0.worker?.pid];
    // The end: the http sink has every record (polled like the syslog-ng baseline's sink, so the agent does not pay
    // for being watched: an admin /status costs the supervisor and the worker a snapshot round trip); for the file
    // exporter, the agent's `exported` counter (every file is renamed into place before it counts).
    const s = sinkChild;
    // otlp with request records: a record is delivered once its LogRecord and its span both arrived
    const spans = sink === 'otlp' && load.shape === 'php';
    const { result, warm } = await timedLoad(
      join(dir, 'agent.sock'),
      load,
      async () => {
        if (!s) return (await a.status()).counters.exported;
        const t = await sinkTally(s);
        return spans ? Math.min(t.count, t.spans) : t.count;
      },
      () => pids.reduce<number>((sum, p) => sum + cpuMs(p), 0),
      () => cpuMs(pids[1]),
      pids[1],
    );
    const total = warm + load.conns * load.perConn;
    // the sink counts a part before its answer reaches the agent: give the counter a moment to catch up
    let end = await a.status();
    for (const until = Date.now() + 5000; end.counters.exported < total && Date.now() < until;) {
      await sleep(50);
      end = await a.status();
    }
    if (end.worker?.pid !== pids[1]) throw new Error('the agent worker was replaced during the run');
    if (end.counters.exported !== total) throw new Error(`agent exported ${end.counters.exported}, expected ${total}`);
    if (s && sink === 'otlp') await checkOtlpSinkExact(s, total, spans ? total : 0);
    else if (s) await checkSinkExact(s, total, 'record');
    else checkFilesExact(join(dir, 'out'), total);
    return result;
  } finally {
    await agent?.stop();
    sinkChild?.child.stdin!.end();
    sinkChild?.child.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The syslog-ng baseline's configuration. `tuned` follows syslog-ng OSE's own advice for throughput (admin guide:
 * "Managing incoming and outgoing messages with flow-control", "Configuring flow-control", "Optimizing multithreaded
 * performance", the flush-lines(), log-fetch-limit(), log-iw-size(), flags() and template-escape() option pages,
 * "About disk queue files"), keeping the reliable disk-buffer, which is what makes it comparable to the agent's
 * spool: a message is on disk before it leaves, and removed only once the destination took it. `untuned` is the
 * configuration this benchmark used first (kept to show the difference; `--only sng-untuned`).
 */
export function syslogNgConf(o: { sock: string; bufDir: string; port: number; conns: number; tuned: boolean }): string {
  const common =
    'stats-freq(0); keep-hostname(yes); chain-hostnames(no); log-msg-size(65536); use-dns(no); dns-cache(no);';
  const diskBuffer = `disk-buffer(reliable(yes) dir("${o.bufDir}") disk-buf-size(1073741824) mem-buf-size(67108864))`;
  if (!o.tuned) {
    return `@version: 3.35
options { ${common} };
source s_in { unix-stream("${o.sock}" max-connections(64) log-iw-size(100000) log-fetch-limit(1000) flags(no-parse)); };
destination d_out { network("127.0.0.1" port(${o.port}) transport("tcp") ${diskBuffer}); };
log { source(s_in); destination(d_out); };
`;
  }
  // Window sizing as the guide's flow-control example does it: log-iw-size() is split evenly over max-connections(),
  // and each connection's share must hold many log-fetch-limit() reads; the destination's output queue
  // (log-fifo-size()) must be larger than the window of every source feeding it. Tried on this machine (interleaved
  // runs, load average 3-6): log-fetch-limit 10 / 100 / 1000, flush-lines 0 / 100 / 1000, qout-size 0 / 10000,
  // window 1000 / 10000 per connection, with and without the template and flow-control; the spread between them was
  // within the run-to-run noise (90-150k records/s), and this combination had the best median (136k).
  const fetch = 100;
  const conns = o.conns;
  const window = conns * 10_000; // 100 reads per connection
  const flush = 1000;
  const qout = 10_000;
  return `@version: 3.35
options {
  ${common}
  # Multithreaded mode (the default since 3.6, stated so the run does not depend on it): a unix-stream source
  # reads each connection in its own worker thread, so the 8 connections scale over the CPUs.
  threaded(yes);
};
source s_in {
  unix-stream("${o.sock}"
    # One connection slot per client (a window is split over max-connections(), so no idle slots dilute it).
    max-connections(${conns})
    # Messages read from one connection per poll loop (default 10): fewer poll rounds per message.
    log-fetch-limit(${fetch})
    # Flow-control window of the whole source, split evenly over max-connections() (${window / conns} per connection).
    log-iw-size(${window})
    # The lines are raw JSON, not syslog: no-parse skips the syslog header parser and puts the line into $MSG.
    flags(no-parse));
};
destination d_out {
  network("127.0.0.1" port(${o.port}) transport("tcp")
    # Send exactly the record: the bare message, no syslog header, no escaping ("rarely needed" per the guide).
    template("$MSG\n") template-escape(no)
    # Write ${flush} lines per flush instead of the default 1: "increases throughput as more messages are sent in a
    # single batch" (flush-lines() option). The queue empties at the end, which flushes the rest.
    flush-lines(${flush})
    # Output queue larger than the source window, as flow-control requires.
    log-fifo-size(${window * 2})
    # Reliable disk-buffer (kept: it is the durability the agent's spool gives): messages go to disk first and are
    # removed only after the destination took them. qout-size() keeps that many in memory as well (same guarantee,
    # fewer reads back from disk); mem-buf-size() is the in-memory part of the reliable buffer.
    disk-buffer(reliable(yes) dir("${o.bufDir}") disk-buf-size(1073741824) mem-buf-size(67108864) qout-size(${qout})));
};
# flow-control: when the destination falls behind, syslog-ng stops reading the clients instead of queueing without
# bound (the agent does the same with its memory budget); it is the configuration the guide pairs with a disk-buffer.
log { source(s_in); destination(d_out); flags(flow-control); };
`;
}

export async function runSyslogNgOnce(load: LoadShape, tuned = true): Promise<RunResult> {
  const { conns } = load;
  const dir = mkdtempSync(join(tmpdir(), 'sk-b4-sng-'));
  const sinkChild = spawnRole('sink', ['tcp']);
  let sng: ChildProcess | undefined;
  try {
    const { port } = await sinkChild.next((l) => 'port' in l, 10_000, 'sink port');
    const sock = join(dir, 'in.sock');
    mkdirSync(join(dir, 'buf'));
    const conf = join(dir, 'syslog-ng.conf');
    writeFileSync(conf, syslogNgConf({ sock, bufDir: join(dir, 'buf'), port: Number(port), conns, tuned }));
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
    const pid = sng.pid;
    const { result, warm } = await timedLoad(
      sock,
      load,
      () => sinkCount(sinkChild),
      () => cpuMs(pid),
    );
    await checkSinkExact(sinkChild, warm + conns * load.perConn, tuned ? 'record' : 'any');
    return result;
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

type Once = (load: LoadShape, choice: AgentChoice) => Promise<RunResult>;
/** Variants that run only when named in --only. */
const OPT_IN = new Set(['sng-untuned', 'http-100-oldspace64', 'http-100-php', 'otlp-100-php']);

async function main(): Promise<void> {
  const { perConn, runs, conns, warmup, only, agentNodeArgs, pattern, rates, seconds, bins, coalesceMs } = parseFlags();
  extraAgentNodeArgs = agentNodeArgs;
  const load: LoadShape = { conns, perConn, warmup };
  if (pattern === 'fpm') {
    console.log(
      `B4 --pattern fpm: ${conns} connections, one record per write, ${rates.join(' / ')} records/s in all for ` +
        `${seconds} s (after ${warmup} each in bulk to warm up), ${runs} runs each (interleaved); ` +
        `${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}`,
    );
  } else {
    console.log(
      `B4 agent ingest: ${conns} connections × ${perConn} records of 200 B (after ${warmup} each to warm up), ` +
        `${runs} runs each (interleaved); ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}`,
    );
  }
  // `versus`: the otlp variants' target is ≥ 0.9× that http variant's rate (same records, same script, alternating).
  const all: { key: string; what: string; once: Once; baseline?: boolean; versus?: string }[] = [
    {
      key: 'sng-untuned',
      what: 'syslog-ng reliable disk-buffer → tcp, untuned (first version of this benchmark)',
      once: (l) => runSyslogNgOnce(l, false),
    },
    {
      key: 'sng',
      what: 'syslog-ng reliable disk-buffer → tcp, tuned (baseline)',
      once: (l) => runSyslogNgOnce(l, true),
      baseline: true,
    },
    {
      key: 'file-100',
      what: 'agent → file exporter, batch 100 (default size)',
      once: (l, c) => runAgentOnce('file', 100, l, [], c),
    },
    {
      key: 'file-1000',
      what: 'agent → file exporter, batch 1000',
      once: (l, c) => runAgentOnce('file', 1000, l, [], c),
    },
    {
      key: 'http-100',
      what: 'agent → http central (gzip), batch 100 (default size)',
      once: (l, c) => runAgentOnce('http', 100, l, [], c),
    },
    {
      key: 'http-1000',
      what: 'agent → http central (gzip), batch 1000',
      once: (l, c) => runAgentOnce('http', 1000, l, [], c),
    },
    {
      // Not a default setting: shows what the worker's GC regime costs (docs/benchmarks.md, Agent). V8 starts with a
      // small old generation; on some runs it then marks and compacts back to back (~20 full GCs per 400k records).
      key: 'http-100-oldspace64',
      what: 'agent → http central (gzip), batch 100, node --initial-old-space-size=64',
      once: (l, c) => runAgentOnce('http', 100, l, ['--initial-old-space-size=64'], c),
    },
    {
      key: 'otlp-100',
      what: 'agent → otlp collector (http/protobuf, gzip), batch 100 (logs only: B4 records are not requests)',
      once: (l, c) => runAgentOnce('otlp', 100, l, [], c),
      versus: 'http-100',
    },
    {
      key: 'http-100-php',
      what: 'agent → http central (gzip), batch 100, php_request records',
      once: (l, c) => runAgentOnce('http', 100, { ...l, shape: 'php' }, [], c),
    },
    {
      key: 'otlp-100-php',
      what: 'agent → otlp collector (http/protobuf, gzip), batch 100, php_request records (logs + spans)',
      once: (l, c) => runAgentOnce('otlp', 100, { ...l, shape: 'php' }, [], c),
      versus: 'http-100-php',
    },
  ];
  const haveSng = which('syslog-ng') !== undefined;
  if (!haveSng) skip('B4', 'syslog-ng baseline', 'syslog-ng not found on PATH (apt-get install -y syslog-ng-core)');
  const picked = all.filter(
    (v) => (only.length ? only.includes(v.key) : !OPT_IN.has(v.key)) && (haveSng || !v.key.startsWith('sng')),
  );
  // Each variant at each rate (--pattern fpm) with each build (--agent-bin name=path; syslog-ng runs once).
  const chosen: { key: string; what: string; once: () => Promise<RunResult>; baseline?: boolean; versus?: string }[] =
    [];
  for (const rate of rates) {
    const at = pattern === 'fpm' ? ` fpm ${rate}/s` : '';
    const l: LoadShape =
      pattern === 'fpm' ? { ...load, pattern, rate, perConn: Math.ceil((rate * seconds) / conns) } : load;
    for (const v of picked) {
      const builds = v.key.startsWith('sng') || bins.length === 0 ? [undefined] : bins;
      for (const b of builds) {
        const tag = `${at}${b ? ` @${b.name}` : ''}`;
        chosen.push({
          key: `${v.key}${tag}`,
          what: `${v.what}${tag}`,
          once: () => v.once(l, { bin: b?.path, coalesceMs }),
          baseline: v.baseline && rate === rates[0],
          versus: v.versus ? `${v.versus}${tag}` : undefined,
        });
      }
    }
  }
  const results = new Map<string, RunResult[]>(chosen.map((v) => [v.key, []]));
  // Interleaved (run 1 of every variant, then run 2, …): on a shared machine a burst of someone else's load then hits
  // every variant alike instead of one of them.
  for (let i = 0; i < runs; i++) {
    for (const v of chosen) {
      const r = await v.once();
      results.get(v.key)!.push(r);
      console.log(
        `  ${v.key} run ${i + 1}: ${Math.round(r.rate)} records/s end to end (client writes ${Math.round(r.ingestRate)}/s, ` +
          `${r.cpuUsPerRecord.toFixed(2)} µs CPU/record in the daemon` +
          `${r.workerUsPerRecord !== undefined ? ` (worker ${r.workerUsPerRecord.toFixed(2)})` : ''}, ` +
          `${r.idleMsPerS !== undefined ? `idle ${r.idleMsPerS.toFixed(1)} ms/s, blocked writes ${r.blocked}, ` : ''}` +
          `${r.wakeupsPerK ? `worker wake-ups per 1000 records ${r.wakeupsPerK.main.toFixed(0)} (all threads ${r.wakeupsPerK.all.toFixed(0)}), ` : ''}` +
          `load average ${r.load.toFixed(2)})`,
      );
    }
  }
  const med = (key: string, f: (r: RunResult) => number): number => median(results.get(key)!.map(f));
  if (pattern === 'fpm') {
    // The rate is the load's pace here: what counts is the daemon's CPU per record (target ≤ 8 µs, the issue's).
    for (const v of chosen) {
      const isAgent = !v.key.startsWith('sng');
      report({
        bench: 'B4',
        metric: `${v.what}, daemon CPU µs/record (median)`,
        value: Number(med(v.key, (r) => r.cpuUsPerRecord).toFixed(2)),
        unit: 'µs/record',
        ...(isAgent ? { target: { op: '<=' as const, value: 8 } } : {}),
      });
    }
    console.log(
      '\n| variant | daemon CPU µs/record (median) | runs | worker µs/record (median) | worker wake-ups / 1000 records, main (all threads) | idle daemon ms/s (median) | load average |',
    );
    console.log('| --- | ---: | --- | ---: | ---: | ---: | --- |');
    for (const v of chosen) {
      const rs = results.get(v.key)!;
      console.log(
        `| ${v.what} | ${med(v.key, (r) => r.cpuUsPerRecord).toFixed(2)} | ` +
          `${rs.map((r) => r.cpuUsPerRecord.toFixed(2)).join(', ')} | ` +
          `${rs[0]?.workerUsPerRecord !== undefined ? med(v.key, (r) => r.workerUsPerRecord!).toFixed(2) : '-'} | ` +
          `${rs[0]?.wakeupsPerK ? `${med(v.key, (r) => r.wakeupsPerK!.main).toFixed(0)} (${med(v.key, (r) => r.wakeupsPerK!.all).toFixed(0)})` : '-'} | ` +
          `${rs[0]?.idleMsPerS !== undefined ? med(v.key, (r) => r.idleMsPerS!).toFixed(1) : '-'} | ` +
          `${rs.map((r) => r.load.toFixed(2)).join(', ')} |`,
      );
    }
    return;
  }
  const baseKey = chosen.find((v) => v.baseline)?.key;
  const baseline = baseKey ? med(baseKey, (r) => r.rate) : undefined;
  for (const v of chosen) {
    const m = med(v.key, (r) => r.rate);
    const isAgent = !v.key.startsWith('sng');
    const versus = v.versus && results.has(v.versus) ? med(v.versus, (r) => r.rate) : undefined;
    report({
      bench: 'B4',
      metric: `${v.what}, records/s (median)`,
      value: Math.round(m),
      unit: 'records/s',
      ...(versus
        ? { target: { op: '>=' as const, value: Math.round(0.9 * versus) } }
        : isAgent && baseline && !v.versus
          ? { target: { op: '>=' as const, value: Math.round(2 * baseline) } }
          : {}),
    });
  }
  console.log(
    '\n| variant | end-to-end records/s (median) | × baseline | runs | client write rate (median) | daemon CPU µs/record (median) | worker µs/record (median) |',
  );
  console.log('| --- | ---: | ---: | --- | ---: | ---: | ---: |');
  for (const v of chosen) {
    const rs = results.get(v.key)!;
    const m = med(v.key, (r) => r.rate);
    console.log(
      `| ${v.what} | ${Math.round(m)} | ${baseline ? `${(m / baseline).toFixed(2)}×` : '-'} | ` +
        `${rs.map((r) => Math.round(r.rate)).join(', ')} | ${Math.round(med(v.key, (r) => r.ingestRate))} | ` +
        `${med(v.key, (r) => r.cpuUsPerRecord).toFixed(2)} | ` +
        `${rs[0]?.workerUsPerRecord !== undefined ? med(v.key, (r) => r.workerUsPerRecord!).toFixed(2) : '-'} |`,
    );
  }
  for (const v of chosen) {
    if (!v.versus || !results.has(v.versus)) continue;
    const a = results.get(v.key)!;
    const b = results.get(v.versus)!;
    const ratio = med(v.key, (r) => r.rate) / med(v.versus, (r) => r.rate);
    const cpu = med(v.key, (r) => r.cpuUsPerRecord) / med(v.versus, (r) => r.cpuUsPerRecord);
    console.log(
      `${v.key} / ${v.versus}: ${ratio.toFixed(2)}× the records/s (target ≥ 0.90×: ${ratio >= 0.9 ? 'met' : 'MISSED'}; ` +
        `per alternating pair ${a.map((r, i) => (r.rate / b[i]!.rate).toFixed(2)).join(', ')}), ` +
        `${cpu.toFixed(2)}× the daemon CPU per record`,
    );
  }
  const loads = [...results.values()].flat().map((r) => r.load);
  console.log(
    `\nload average (1 min) at the end of each run: ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)}`,
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
