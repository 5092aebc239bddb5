// `npm run bench`: runs every benchmark module bench/*.ts (not this file) in sequence, each as its own child process
// `node --import tsx <file>`, then prints a summary. dist/ must be built first (the npm script does it).
//
//   npm run bench                                  every benchmark once
//   npm run bench -- --only b1 --only agent        only files whose name contains one of these (comma lists too)
//   npm run bench -- --repeat 2                    run each benchmark twice; the summary shows the median
//   npm run bench -- --timeout 20                  minutes per benchmark run before it is killed (default 20)
//   npm run bench -- --list                        list the benchmark files and exit
//   npm run bench -- --only b2 -- --workers 2      arguments after a second `--` go to every benchmark
//
// Order: runtime-* (B1–B3) first, then the others alphabetically.
//
// Output convention (optional for benchmark modules; the runner also works without it): a stdout line
//   RESULT {"bench":"B1","metric":"readVars + prop","value":12.1,"unit":"ns/op","target":{"op":"<=","value":5}}
// is one measured number (the summary shows its median over --repeat runs and whether the target is met), and
//   SKIP {"bench":"B1","what":"redis GET baseline","why":"redis-server not found on PATH"}
// is a baseline that could not run. A missing external tool (redis-server, wrk, php, syslog-ng) is never a failure:
// the runtime benchmarks report it as SKIP; for any other benchmark that exits non-zero while a tool its source
// mentions is missing, the runner reports it as skipped rather than failed. The exit code is 1 only if a benchmark
// failed for another reason (or timed out).
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { meets, which, type Result, type Target } from './fixtures/runtime-util.ts';

const BENCH_DIR = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(BENCH_DIR, '..');
const TOOLS = ['redis-server', 'wrk', 'php', 'syslog-ng'] as const;

interface Options {
  only: string[];
  repeat: number;
  timeoutMin: number;
  list: boolean;
  passthrough: string[];
}

function parseArgs(argv: string[]): Options {
  const opts: Options = { only: [], repeat: 1, timeoutMin: 20, list: false, passthrough: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--') {
      opts.passthrough = argv.slice(i + 1);
      break;
    } else if (a === '--only') opts.only.push(...value().split(',').filter(Boolean));
    else if (a.startsWith('--only=')) opts.only.push(...a.slice(7).split(',').filter(Boolean));
    else if (a === '--repeat') opts.repeat = Math.min(20, Math.max(1, Math.trunc(Number(value())) || 1));
    else if (a === '--timeout') opts.timeoutMin = Math.max(1, Number(value()) || 20);
    else if (a === '--list') opts.list = true;
    else if (a === '--help' || a === '-h') {
      console.log(
        readFileSync(fileURLToPath(import.meta.url), 'utf8')
          .split('\n')
          .slice(0, 12)
          .join('\n'),
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${a} (see --help)`);
  }
  return opts;
}

function discover(only: string[]): string[] {
  const files = readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && f !== 'run.ts')
    .sort((a, b) => {
      const ra = a.startsWith('runtime-') ? 0 : 1;
      const rb = b.startsWith('runtime-') ? 0 : 1;
      return ra - rb || a.localeCompare(b);
    });
  if (only.length === 0) return files;
  const wanted = only.map((o) => o.toLowerCase());
  return files.filter((f) => wanted.some((w) => f.toLowerCase().includes(w)));
}

interface Outcome {
  file: string;
  iteration: number;
  status: 'ok' | 'failed' | 'timeout' | 'skipped';
  code: number | null;
  seconds: number;
  results: (Result & { met?: boolean })[];
  skips: { bench?: string; what: string; why: string }[];
  note?: string;
}

let current: number | undefined; // pid (= process group) of the running benchmark
let interrupted = false;
function onSignal(signal: NodeJS.Signals): void {
  interrupted = true;
  if (current !== undefined) {
    const group = current;
    try {
      process.kill(-group, 'SIGTERM');
    } catch {
      // already gone
    }
    setTimeout(() => {
      try {
        process.kill(-group, 'SIGKILL');
      } catch {
        // already gone
      }
      process.exit(130);
    }, 5000).unref();
  } else process.exit(130);
  console.error(`\n${signal}: stopping the running benchmark`);
}
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

function runOne(file: string, iteration: number, opts: Options, missing: string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(process.execPath, ['--import', 'tsx', join(BENCH_DIR, file), ...opts.passthrough], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group (servers it starts stay in it): on timeout or Ctrl-C the runner kills that group,
      // which it started, and nothing else.
      detached: true,
    });
    current = child.pid;
    const results: Outcome['results'] = [];
    const skips: Outcome['skips'] = [];
    let pending = '';
    child.stdout.on('data', (chunk: Buffer) => {
      process.stdout.write(chunk);
      pending += chunk.toString('utf8');
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        try {
          if (line.startsWith('RESULT ')) results.push(JSON.parse(line.slice(7)) as Outcome['results'][number]);
          else if (line.startsWith('SKIP ')) skips.push(JSON.parse(line.slice(5)) as Outcome['skips'][number]);
        } catch {
          // not our convention after all; it was printed anyway
        }
      }
    });
    child.stderr.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, opts.timeoutMin * 60_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      current = undefined;
      const seconds = (Date.now() - started) / 1000;
      let status: Outcome['status'] = code === 0 ? 'ok' : timedOut ? 'timeout' : 'failed';
      let note: string | undefined;
      if (status === 'failed') {
        const src = readFileSync(join(BENCH_DIR, file), 'utf8');
        const needs = missing.filter((t) => src.includes(t));
        if (needs.length > 0) {
          status = 'skipped';
          note = `exited ${code} while ${needs.join(', ')} ${needs.length > 1 ? 'are' : 'is'} not installed`;
        }
      }
      resolve({ file, iteration, status, code, seconds, results, skips, note });
    });
  });
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  return a >= 1000 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toPrecision(3);
}

function targetText(t: Target | undefined): string {
  return t ? `${t.op} ${t.value}` : '';
}

const opts = parseArgs(process.argv.slice(2));
const files = discover(opts.only);
if (opts.list) {
  for (const f of files) console.log(f);
  process.exit(0);
}
if (files.length === 0) {
  console.error(`no benchmark matches ${opts.only.join(', ') || '(none found)'}`);
  process.exit(1);
}

const missing = TOOLS.filter((t) => !which(t));
const header = [
  `Sidekick benchmarks — ${new Date().toISOString()}`,
  `machine: ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM; Node ${process.version}`,
  `tools: ${TOOLS.map((t) => `${t} ${missing.includes(t) ? 'MISSING' : 'ok'}`).join(', ')}`,
  `benchmarks: ${files.join(', ')}${opts.repeat > 1 ? ` (× ${opts.repeat})` : ''}`,
];
console.log(header.join('\n'));

const outcomes: Outcome[] = [];
for (let it = 1; it <= opts.repeat; it++) {
  for (const file of files) {
    if (interrupted) break;
    console.log(
      `\n=== ${file}${opts.repeat > 1 ? ` (run ${it}/${opts.repeat})` : ''} — load avg ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')} ===`,
    );
    const o = await runOne(file, it, opts, missing);
    outcomes.push(o);
    console.log(`=== ${file}: ${o.status}${o.note ? ` (${o.note})` : ''} in ${o.seconds.toFixed(0)} s ===`);
  }
}

// ---- summary ----
console.log('\n==================== summary ====================');
console.log(header.slice(0, 3).join('\n'));
for (const file of files) {
  const runs = outcomes.filter((o) => o.file === file);
  const states = runs.map((o) => o.status + (o.note ? ` (${o.note})` : ''));
  console.log(
    `\n${basename(file, '.ts')}: ${states.join(', ')}; ${runs.map((o) => `${o.seconds.toFixed(0)} s`).join(', ')}`,
  );
  const byMetric = new Map<string, (Result & { met?: boolean })[]>();
  for (const o of runs)
    for (const r of o.results) {
      const key = `${r.bench} ${r.metric}`;
      if (!byMetric.has(key)) byMetric.set(key, []);
      byMetric.get(key)!.push(r);
    }
  for (const [key, rs] of byMetric) {
    const m = median(rs.map((r) => r.value));
    const t = rs[0]!.target;
    const verdict = t ? (meets(m, t) ? '  target met' : '  TARGET MISSED') : '';
    const each = rs.length > 1 ? `  [${rs.map((r) => fmt(r.value)).join(', ')}]` : '';
    const tt = t ? `  (target ${targetText(t)})` : '';
    console.log(`  ${key.padEnd(64)} ${fmt(m).padStart(10)} ${rs[0]!.unit}${tt}${verdict}${each}`);
  }
  const skipped = new Map<string, string>();
  for (const o of runs) for (const s of o.skips) skipped.set(`${s.bench ?? ''} ${s.what}`.trim(), s.why);
  for (const [what, why] of skipped) console.log(`  skipped: ${what}: ${why}`);
}

try {
  const out = join(ROOT, 'var', 'bench');
  mkdirSync(out, { recursive: true });
  const path = join(out, `results-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(path, JSON.stringify({ header, outcomes }, null, 2));
  console.log(`\nraw results: ${path}`);
} catch (err) {
  console.error(`could not write raw results: ${(err as Error).message}`);
}

const failed = outcomes.filter((o) => o.status === 'failed' || o.status === 'timeout');
if (failed.length > 0) {
  console.log(`\n${failed.length} benchmark run(s) failed: ${failed.map((o) => o.file).join(', ')}`);
  process.exit(1);
}
