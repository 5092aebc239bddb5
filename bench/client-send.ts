// B5: the cost of one client send (connect + write + close) in real php-cli, with the agent up, down and hung, against
// a bare socket listener; plus the raw `stream_socket_client` minimal write in the same php script as the baseline,
// and the Node client's `send()`.
//
// Target (docs/DESIGN "Performance targets"): PHP client p50 ≤ 5 µs and p99 ≤ 30 µs with the agent up; ≤ 1 ms
// (p99) when it is down or hung.
//
// Method. PHP: bench/php/client-send.php runs N sends of a typical ~230-byte record in one php process, each timed
// with hrtime: `\Sidekick\Agent::send()` (the include's code path) and the raw minimal write, interleaved in blocks
// of 500, with a busy-wait of --pace-us (default 50 µs) after each send, outside the timed region: back to back, php
// connects (~70k/s) far faster than a Node listener accepts (~20k/s here), the accept backlog fills and the "up" runs
// would mostly time the EAGAIN drop path. (A negative value sleeps instead; a CPU woken from sleep makes every send
// ~2x slower — see bench/php/client-send.php.) The listener is this process, idle while php runs. Variants: the
// client with its default ext-sockets transport and with the stream fallback; raw stream and raw ext-sockets
// baselines. Scenarios:
//   up          a bare `net` listener that reads and discards (the agent's best case); delivery is checked
//   down        no socket file
//   stale       a socket file with nobody behind it (ECONNREFUSED)
//   hung-read   a listener that accepts and never reads (kernel buffers pre-filled; it keeps the newest 4096
//               connections open unread and closes older ones, to stay under the fd limit)
//   hung-accept a listener that never accepts (php, backlog 1) with its backlog filled: connect fails with EAGAIN
// Node: `client.send()` of the same record timed call by call (process.hrtime.bigint), in bursts of 100 with an
// event-loop turn between bursts so the client's writer runs; the listener is a child process. Scenarios up, down,
// hung-read.
//
// Usage: node --import tsx bench/client-send.ts [--n 20000] [--node-n 200000] [--pace-us 100] [--only php|node]
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createAgentClient } from '../src/agent/client/index.ts';
import { phpExtension } from '../test/helpers/php-ext.ts';
import { arg, machine, percentile, report, skip, which } from './fixtures/runtime-util.ts';

const BENCH = 'B5';
const N = Math.max(1000, Number(arg('n', '20000')));
const NODE_N = Math.max(1000, Number(arg('node-n', '200000')));
const ONLY = arg('only', '');
const PACE_US = Number(arg('pace-us', '50'));
const HERE = fileURLToPath(new URL('.', import.meta.url));
const PHP_SCRIPT = join(HERE, 'php', 'client-send.php');
const NEVER_ACCEPT = join(HERE, '..', 'test', 'fixtures', 'clients', 'never-accept.php');
const dir = mkdtempSync(join(tmpdir(), 'skb5-'));
const us = (ns: number): number => Math.round(ns / 10) / 100;

interface Summary {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
  ok?: number;
  failed?: number;
}
interface PhpOut {
  php: string;
  clock: Summary;
  variants: string[];
  [variant: string]: unknown;
}
const VARIANT_LABEL: Record<string, string> = {
  client: '`Agent::send()`, first send of a request (persistent connection)',
  client_ext: '`Agent::send()`, extension (clients/php/ext)',
  raw_persistent: 'raw persistent `stream_socket_client` + `fwrite` (baseline)',
  raw: 'raw `stream_socket_client` + `fwrite` + `fclose` (connection per record)',
};

// ---------------------------------------------------------------------------------------------------------------
// Listeners

/** The bare listener: accepts, reads, counts newline bytes. */
async function bareListener(path: string): Promise<{ server: Server; lines: () => number }> {
  let lines = 0;
  const server = createServer((s) => {
    s.on('data', (d: Buffer) => {
      for (let i = d.indexOf(10); i !== -1; i = d.indexOf(10, i + 1)) lines++;
    });
    s.on('error', () => {});
  });
  server.listen({ path, backlog: 4096 });
  await once(server, 'listening');
  return { server, lines: () => lines };
}

/** Accepts, never reads; one connection's kernel buffers are filled first; keeps the newest `keep` connections. */
async function hungReadListener(path: string, keep = 4096): Promise<{ close: () => Promise<void> }> {
  const held: Socket[] = [];
  const server = createServer({ pauseOnConnect: true }, (s) => {
    s.on('error', () => {});
    held.push(s);
    if (held.length > keep) held.shift()!.destroy();
  });
  server.listen({ path, backlog: 4096 });
  await once(server, 'listening');
  const filler = createConnection(path);
  filler.on('error', () => {});
  await once(filler, 'connect');
  const chunk = Buffer.alloc(64 * 1024, 0x78);
  for (let i = 0; i < 1024 && filler.writableLength === 0; i++) {
    filler.write(chunk);
    await new Promise<void>((r) => setImmediate(r));
  }
  return {
    close: async () => {
      filler.destroy();
      for (const s of held) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function waitLine(child: ChildProcess, marker: string): Promise<void> {
  let out = '';
  child.stdout!.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes(marker)) resolve();
    });
    child.once('exit', (c) => reject(new Error(`helper exited (${c}) before "${marker}": ${out}`)));
  });
}

/** A php process that binds with backlog 1 and never accepts; we fill its backlog until connect says EAGAIN. */
async function neverAccepting(path: string): Promise<{ close: () => Promise<void> }> {
  const child = spawn('php', [NEVER_ACCEPT, path], { stdio: ['pipe', 'pipe', 'inherit'] });
  await waitLine(child, 'ready\n');
  const held: Socket[] = [];
  for (let i = 0; i < 64; i++) {
    const s = createConnection(path);
    const r = await new Promise<string>((res) => {
      s.once('connect', () => res('connect'));
      s.once('error', (e: NodeJS.ErrnoException) => res(e.code ?? 'error'));
    });
    if (r !== 'connect') break;
    held.push(s);
  }
  return {
    close: async () => {
      for (const s of held) s.destroy();
      const exited = once(child, 'exit');
      child.stdin!.end();
      await exited;
      try {
        unlinkSync(path);
      } catch {
        // gone
      }
    },
  };
}

async function staleFile(path: string): Promise<{ close: () => Promise<void> }> {
  const child = spawn('php', [NEVER_ACCEPT, path], { stdio: ['pipe', 'pipe', 'inherit'] });
  await waitLine(child, 'ready\n');
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
  return { close: async () => unlinkSync(path) };
}

// ---------------------------------------------------------------------------------------------------------------
// PHP

async function runPhp(path: string, extension?: string): Promise<PhpOut> {
  const load = extension ? ['-d', `extension=${extension}`] : [];
  const child = spawn('php', [...load, PHP_SCRIPT, path, String(N), '1000', String(PACE_US)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`php exited with ${code}: ${out}`);
  return JSON.parse(out) as PhpOut;
}

const rows: string[] = [];
function row(side: string, scenario: string, variant: string, s: Summary, note = ''): void {
  const ok = s.ok === undefined ? '' : `${s.ok}/${s.n}`;
  rows.push(
    `| ${side} | ${scenario} | ${variant} | ${us(s.p50)} | ${us(s.p90)} | ${us(s.p99)} | ${us(s.max)} | ${us(s.mean)} | ${ok} | ${note} |`,
  );
}

async function php(): Promise<void> {
  if (!which('php')) {
    skip(BENCH, 'PHP client send cost', 'php not found on PATH (apt-get install php-cli)');
    return;
  }
  const scenarios: Array<{
    name: string;
    setup: (p: string) => Promise<{ close: () => Promise<void>; check?: () => string }>;
  }> = [
    {
      name: 'up',
      setup: async (p) => {
        const l = await bareListener(p);
        return {
          check: () => `listener got ${l.lines()} lines`,
          close: () => new Promise<void>((r) => l.server.close(() => r())),
        };
      },
    },
    { name: 'down', setup: async () => ({ close: async () => {} }) },
    { name: 'stale', setup: staleFile },
    { name: 'hung-read', setup: (p) => hungReadListener(p) },
    { name: 'hung-accept', setup: neverAccepting },
  ];
  let version = '';
  // The userland client, then (when it builds here) the extension: each scenario runs once per client.
  const ext = phpExtension();
  if ('missing' in ext) console.log(`PHP extension not measured: ${ext.missing}`);
  const clients = ['userland', ...('so' in ext ? [ext.so] : [])];
  for (const sc of scenarios.flatMap((s) => clients.map((c) => ({ ...s, ext: c === 'userland' ? undefined : c })))) {
    const path = join(dir, `${sc.name}.sock`);
    const env = await sc.setup(path);
    let out: PhpOut;
    try {
      out = await runPhp(path, sc.ext);
      if (env.check) {
        // Let the listener drain what php wrote before it exited (bounded).
        for (let i = 0; i < 200; i++) await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      const note = env.check?.() ?? '';
      await env.close();
      if (note) console.log(`  ${sc.name}: ${note}`);
    }
    version = out.php;
    const up = sc.name === 'up';
    const parts: string[] = [];
    for (const v of out.variants) {
      const sum = out[v] as Summary;
      row('php', sc.name, VARIANT_LABEL[v] ?? v, sum);
      parts.push(`${v} p50 ${us(sum.p50)} p99 ${us(sum.p99)} µs (ok ${sum.ok}/${sum.n})`);
      const isClient = v === 'client' || v === 'client_ext';
      if (sc.ext && !isClient) continue; // the baselines are reported once, from the userland run
      for (const [p, q] of [
        ['p50', sum.p50],
        ['p99', sum.p99],
      ] as const) {
        report({
          bench: BENCH,
          metric: `php ${v} send ${p} (${sc.name}${v.startsWith('raw') ? ', baseline' : ''})`,
          value: us(q),
          unit: 'µs',
          ...(isClient ? { target: { op: '<=' as const, value: up ? (p === 'p50' ? 5 : 30) : 1000 } } : {}),
        });
      }
    }
    console.log(`php ${sc.name}${sc.ext ? ' (extension)' : ''}: ${parts.join('; ')}; clock ${out.clock.p50} ns`);
  }
  console.log(`PHP ${version}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Node

const LISTENER_CODE = `
const net = require('node:net');
let lines = 0;
const server = net.createServer((s) => {
  s.on('data', (d) => { for (let i = d.indexOf(10); i !== -1; i = d.indexOf(10, i + 1)) lines++; });
  s.on('error', () => {});
});
server.listen(process.argv[1], () => process.stdout.write('ready\\n'));
process.stdin.on('data', () => process.stdout.write('lines ' + lines + '\\n'));
process.stdin.on('end', () => process.exit(0));
`;

async function nodeScenario(name: string, path: string): Promise<void> {
  const record = {
    ts: Date.now(),
    type: 'node_request',
    route: '/shop/cart',
    method: 'GET',
    status: 200,
    duration_ms: 12.345,
    host: 'web-1',
    pid: process.pid,
    user: 'u-1234',
  };
  const client = createAgentClient({ socket: path });
  // Let it connect (or fail to) before timing.
  await client.flush(1000);
  const times = new Float64Array(NODE_N);
  let ok = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < NODE_N; i++) {
    const a = process.hrtime.bigint();
    if (client.send(record)) ok++;
    times[i] = Number(process.hrtime.bigint() - a);
    if (i % 100 === 99) await new Promise<void>((r) => setImmediate(r));
  }
  await client.flush(5000);
  const elapsedNs = Number(process.hrtime.bigint() - t0);
  const stats = client.stats();
  await client.close(500);
  const sorted = Array.from(times).sort((a, b) => a - b);
  const s: Summary = {
    n: NODE_N,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1]!,
    mean: sorted.reduce((x, y) => x + y, 0) / sorted.length,
    ok,
  };
  const rate = Math.round(stats.sent / (elapsedNs / 1e9));
  row(
    'node',
    name,
    '`client.send()`',
    s,
    `sent ${stats.sent}, dropped ${stats.dropped}; ${rate.toLocaleString('en')} records/s to the kernel`,
  );
  console.log(
    `node ${name}: send p50 ${us(s.p50)} µs p99 ${us(s.p99)} µs; sent ${stats.sent} dropped ${stats.dropped}`,
  );
  report({ bench: BENCH, metric: `node client send() p50 (${name})`, value: us(s.p50), unit: 'µs' });
  report({ bench: BENCH, metric: `node client send() p99 (${name})`, value: us(s.p99), unit: 'µs' });
}

async function node(): Promise<void> {
  // up: listener in a child process, so this event loop only runs the client.
  const upPath = join(dir, 'node-up.sock');
  const child = spawn(process.execPath, ['-e', LISTENER_CODE, upPath], { stdio: ['pipe', 'pipe', 'inherit'] });
  await waitLine(child, 'ready\n');
  try {
    await nodeScenario('up', upPath);
    child.stdin!.write('?\n');
    await waitLine(child, 'lines ');
  } finally {
    child.stdin!.end();
    await once(child, 'exit');
  }
  await nodeScenario('down', join(dir, 'node-down.sock'));
  const hungPath = join(dir, 'node-hung.sock');
  const hung = await hungReadListener(hungPath);
  try {
    await nodeScenario('hung-read', hungPath);
  } finally {
    await hung.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------

try {
  console.log(`B5 client send cost — ${machine()}, load average ${loadavg()[0]!.toFixed(2)} at start`);
  if (ONLY !== 'node') await php();
  if (ONLY !== 'php') await node();
  console.log(`load average ${loadavg()[0]!.toFixed(2)} at end`);
  console.log('\n| client | agent | variant | p50 µs | p90 µs | p99 µs | max µs | mean µs | ok | note |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
