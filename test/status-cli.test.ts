// `sidekick status` and `sidekick vars` for a person. The formatter (src/cli/status-table.ts) on fixed status objects,
// line for line; then the commands against a real `sidekick serve` (one app, two HTTP workers, a sidekick that publishes
// binary-safe values and one that never publishes) and a standalone `sidekick agent`: a line per worker and per
// sidekick, no ANSI escapes on a pipe, `--json` with the admin /status keys, and vars masked by default (keys, sizes,
// 12-hex hashes; never a value).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { formatStatus, type LooseStatus } from '../src/cli/status-table.ts';
import { BINARY_VARS } from './fixtures/serve/binary-values.mjs';
import { agentScope } from './helpers/agent-scope.ts';
import { adminGet, runCli, startServe, tempDir, type ServeProcess, type StatusJson } from './helpers/serve.ts';

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[/;

const NOW = Date.parse('2026-01-01T00:10:00.000Z');
const SERVE_STATUS: LooseStatus = {
  pid: 100,
  uptimeMs: 600_000,
  config: '/srv/shop/sidekick.config.mjs',
  reloads: 1,
  apps: [
    {
      name: 'shop',
      listen: { kind: 'tcp', host: '127.0.0.1', port: 8080 },
      workers: [
        { pid: 101, state: 'listening', startedAt: '2026-01-01T00:00:00.000Z', rss: 52_428_800 },
        { pid: 1002, state: 'starting', startedAt: '2026-01-01T00:09:58.000Z' },
      ],
      workerRestarts: 1,
      unresponsiveKills: 0,
      recycles: 0,
      handlerErrors: 2,
      handlerTimeouts: 0,
      taskTimeouts: 0,
      sidekicks: [
        {
          app: 'shop',
          name: 'flags',
          state: 'running',
          ready: true,
          generation: 2,
          bootFailures: 0,
          crashes: 1,
          consecutiveFailures: 0,
          lastError: 'Error: boom\n    at x',
          sourceError: 'flags.json: Unexpected token } in JSON',
          publishedAt: NOW - 3_000,
          keys: 2,
          bytes: 1536,
          starts: 3,
          restarts: { crash: 1, boot_failure: 0, clean_exit: 0, reload: 1 },
          publishes: 7,
          tasks: { sent: 0, completed: 0, failed: 0 },
          tasksInFlight: 0,
        },
        {
          app: 'shop',
          name: 'redis',
          state: 'backoff',
          ready: false,
          generation: 4,
          bootFailures: 4,
          crashes: 0,
          consecutiveFailures: 4,
          keys: 0,
          bytes: 0,
          starts: 5,
          restarts: { crash: 0, boot_failure: 4, clean_exit: 0, reload: 0 },
          publishes: 0,
          tasks: { sent: 0, completed: 0, failed: 0 },
          tasksInFlight: 0,
        },
      ],
    },
  ],
};
const AGENT_STATUS: LooseStatus['agent'] = {
  state: 'running',
  pid: 200,
  startedAt: NOW - 3_600_000 - 120_000,
  config: '/etc/sidekick/agent.json',
  socket: '/run/sidekick/agent.sock',
  worker: { pid: 201, generation: 3, state: 'ready', spawnedAt: NOW - 60_000, readyAt: NOW - 59_000 },
  recycles: 1,
  restarts: 2,
  counters: {
    received: 250_000,
    exported: 230_000,
    deadLettered: 12,
    dropped: { spool_full: 5, spool_corrupt: 0, disk_full: 0 },
    clientDropped: 3,
  },
  gauges: {
    spoolRecords: 20_000,
    spoolBytes: 4_404_019,
    spillPendingBytes: 0,
    spillOldestSeconds: 0,
    openConnections: 4,
  },
  rates: { receivedPerSec: 812.4, exportedPerSec: 1250.26, windowMs: 10_000 },
  replay: { backlogRecords: 20_000, exportedPerSec: 1250, etaSeconds: 16 },
  pipeline: {
    exporter: { type: 'http', target: 'https://central.example/v1/records' },
    breaker: { state: 'half_open', retryInMs: 0, failures: 5, halfOpenAfterMs: 60_000 },
    spool: { diskFull: false },
    lastExportError: { message: 'HTTP 503 from central', at: NOW - 42_000 },
    clients: { profiling: false, sampleRate: 1, reason: 'breaker_open' },
  },
};

describe('formatStatus (pure: status JSON + now → text)', () => {
  test('sidekick serve: header, one line per worker, app counters, one line per sidekick, last errors', () => {
    assert.deepEqual(formatStatus(SERVE_STATUS, NOW).split('\n'), [
      'sidekick serve  pid 100  up 10m  reloads 1  config /srv/shop/sidekick.config.mjs',
      '',
      'app shop  127.0.0.1:8080  2 workers',
      '  PID   STATE      UPTIME  RSS',
      '  101   listening  10m     50.0 MiB',
      '  1002  starting   2s      -',
      '  worker restarts 1  unresponsive kills 0  recycles 0  handler errors 2  handler timeouts 0  task timeouts 0',
      '',
      '  SIDEKICK  STATE    READY  GEN  CRASHES  BOOT FAILURES  RESTARTS               LAST PUBLISH  KEYS  BYTES    PUBLISHES',
      '  flags     running  yes    2    1        0              2 (crash 1, reload 1)  3s ago        2     1.5 KiB  7',
      '  redis     backoff  no     4    0        4              4 (boot_failure 4)     never         0     0 B      0',
      '  flags: source error: flags.json: Unexpected token } in JSON',
      '  flags: last error: Error: boom at x',
      '',
    ]);
  });

  test('standalone agent ({agent} only): state, breaker, spool backlog, rates, losses, replay', () => {
    assert.deepEqual(formatStatus({ agent: AGENT_STATUS }, NOW).split('\n'), [
      'agent  running  pid 200  worker 201 (gen 3)  up 1h 2m  restarts 2  recycles 1  exporter http https://central.example/v1/records',
      '  breaker  half_open  last export error 42s ago: HTTP 503 from central',
      '  spool    20000 records  4.2 MiB',
      '  clients  4 connected  profiling off (breaker_open)',
      '  rate     received 812/s  exported 1250/s  (total received 250000, exported 230000)',
      '  lost     dropped 5 (spool_full 5)  dead-lettered 12  client drops 3',
      '  replay   20000 records left at 1250/s, ETA 16s',
      '',
    ]);
  });

  test('an otlp agent: dead letters by reason and an otlp line (spans, refusals, limited values)', () => {
    const counters = {
      ...AGENT_STATUS!.counters!,
      deadLettered: 12,
      deadLetteredBy: { rejected: 2, otlp_partial: 10, unmappable: 0 },
      otlp: { spans: 9000, truncated: 3, flattened: 1, rejectedLogs: 10, rejectedSpans: 4 },
    };
    const pipeline = { ...AGENT_STATUS!.pipeline!, exporter: { type: 'otlp', target: 'http://otel:4318/v1/logs' } };
    const out = formatStatus({ agent: { ...AGENT_STATUS, counters, pipeline } as LooseStatus['agent'] }, NOW);
    assert.match(out, /exporter otlp http:\/\/otel:4318\/v1\/logs$/m);
    assert.match(out, /dead-lettered 12 \(rejected 2, otlp_partial 10\)/);
    assert.match(out, /^ {2}otlp {5}spans 9000 {2}rejected logs 10, spans 4 {2}\(values truncated 3, flattened 1\)$/m);
  });

  test('colour only when asked; the columns stay aligned around the escapes', () => {
    const plain = formatStatus({ ...SERVE_STATUS, agent: AGENT_STATUS }, NOW);
    const color = formatStatus({ ...SERVE_STATUS, agent: AGENT_STATUS }, NOW, { color: true });
    assert.doesNotMatch(plain, ANSI);
    assert.ok(color.includes('\x1b[32mlistening\x1b[0m'), 'a listening worker in green');
    assert.ok(color.includes('\x1b[33mbackoff\x1b[0m'), 'a sidekick in backoff in yellow');
    // eslint-disable-next-line no-control-regex
    assert.equal(color.replace(/\x1b\[[0-9;]*m/g, ''), plain);
  });

  test('the spool line says when the disk is full and when the directory was removed while running', () => {
    const pipeline = { ...AGENT_STATUS!.pipeline!, spool: { diskFull: true, dirLost: 2 } };
    const out = formatStatus({ agent: { ...AGENT_STATUS, pipeline } as LooseStatus['agent'] }, NOW);
    assert.match(
      out,
      /^ {2}spool {4}20000 records {2}4\.2 MiB {2}disk full {2}directory removed while running 2× \(recreated\)$/m,
    );
  });

  test('fields an older or newer instance does not report print as `-`, not as an exception', () => {
    const out = formatStatus(
      { apps: [{ name: 'x', workers: [{ pid: 1 }], sidekicks: [{ name: 'y' }] }], agent: {} },
      NOW,
    );
    assert.match(out, /^ {2}1 {4}- {6}- {7}-$/m);
    assert.match(out, /^ {2}y .* never /m);
    assert.match(out, /^ {2}breaker {2}unknown$/m);
  });
});

describe('against a running `sidekick serve`', () => {
  const tmp = tempDir('sk-status-cli-');
  let serve: ServeProcess;
  let configFile: string;

  before(async () => {
    const started = await startServe(tmp.dir, [
      {
        name: 'shop',
        workers: 2,
        sidekicks: { stopGraceMs: 1000, declare: { 'binary.s': { start: 'boot' }, 'never.s': { start: 'boot' } } },
      },
    ]);
    serve = started.serve;
    configFile = started.configFile;
    // Ready once both workers have reported their RSS (the first health ping) and the binary sidekick has published.
    await serve.waitReady(
      (s) =>
        serve.app(s, 'shop').workers.every((w) => w.rss !== undefined) &&
        serve.sidekick(s, 'shop', 'binary.s')?.ready === true,
    );
  });

  after(async () => {
    try {
      if (serve && !serve.exitInfo) assert.equal((await serve.stop('SIGTERM', 20_000)).code, 0, serve.logs());
    } finally {
      await serve?.kill();
      tmp.cleanup();
    }
  });

  test('`sidekick status`: a line per worker with its pid, the sidekicks with state and age, no ANSI on a pipe', async () => {
    const r = await runCli(['status', '-c', configFile], { timeoutMs: 15_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, ANSI);
    const lines = r.stdout.split('\n');
    assert.match(lines[0]!, new RegExp(`^sidekick serve {2}pid ${serve.pid} {2}up \\d+s`));
    assert.ok(
      lines.some((l) => /^app shop {2}127\.0\.0\.1:\d+ {2}2 workers$/.test(l)),
      r.stdout,
    );
    const pids = serve.app(await serve.status(), 'shop').workers.map((w) => w.pid);
    assert.equal(pids.length, 2);
    for (const pid of pids) {
      const line = lines.filter((l) => l.startsWith(`  ${pid} `));
      assert.equal(line.length, 1, `one line for worker ${pid}\n${r.stdout}`);
      assert.match(line[0]!, /^ {2}\d+ +listening +\d+s +\d+\.\d MiB$/);
    }
    assert.match(r.stdout, /^ {2}binary\.s +running +yes +0 +0 +0 +0 +\d+s ago +10 +\d+\.\d KiB +1$/m);
    assert.match(r.stdout, /^ {2}never\.s +starting +no +0 +0 +0 +0 +never +0 +0 B +0$/m);
    assert.doesNotMatch(r.stdout, /^agent/m, 'no agent configured');
  });

  test('`sidekick status --json`: the full status, pretty, with exactly the keys of the admin /status', async () => {
    const r = await runCli(['status', '-c', configFile, '--json'], { timeoutMs: 15_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.startsWith('{\n  "'), 'pretty-printed, two spaces');
    const fromCli = JSON.parse(r.stdout) as StatusJson;
    const fromSocket = await adminGet(serve.adminSocket, '/status');
    assert.deepEqual(keysOf(fromCli), keysOf(fromSocket));
    assert.equal(fromCli.pid, serve.pid);
  });

  test('`sidekick vars APP/NAME` without admin.showValues: keys, byte counts and 12-hex hashes, never a value', async () => {
    const r = await runCli(['vars', 'shop/binary.s', '-c', configFile], { timeoutMs: 15_000 });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split('\n');
    assert.equal(lines[0], `shop/binary.s  generation 0  ${Object.keys(BINARY_VARS).length} keys, values hidden`);
    for (const [key, value] of Object.entries(BINARY_VARS)) {
      const hash = '[0-9a-f]{12}'; // keyed per process (src/vars/mask.ts): not computable here
      // eslint-disable-next-line no-control-regex
      const shown = /[\x00-\x1f]/.test(key) ? JSON.stringify(key) : key;
      const line = lines.find((l) => l.startsWith(`${shown} `));
      assert.ok(line, `a line for ${JSON.stringify(key)}\n${r.stdout}`);
      assert.match(line, new RegExp(` ${Buffer.byteLength(value)} +${hash}$`));
      if (value.length >= 4) assert.ok(!r.stdout.includes(value), `the value of ${JSON.stringify(key)} is not shown`);
    }
    assert.match(r.stdout, /admin: \{ showValues: true \}/, 'says how to see the values');

    const json = await runCli(['vars', 'shop/binary.s', '-c', configFile, '--json'], { timeoutMs: 15_000 });
    assert.equal(json.code, 0, json.stderr);
    const reply = JSON.parse(json.stdout) as {
      masked: boolean;
      vars: Record<string, { bytes: number; hash: string }>;
    };
    assert.equal(reply.masked, true);
    // The same value hashes the same within one run (a changed value is visible), different values differently.
    const again = JSON.parse(
      (await runCli(['vars', 'shop/binary.s', '-c', configFile, '--json'], { timeoutMs: 15_000 })).stdout,
    ) as typeof reply;
    assert.deepEqual(again.vars, reply.vars);
    const hashes = new Set(Object.values(reply.vars).map((v) => v.hash));
    assert.equal(hashes.size, new Set(Object.values(BINARY_VARS)).size);
    assert.deepEqual(Object.keys(reply.vars).sort(), Object.keys(BINARY_VARS).sort());
    for (const [key, value] of Object.entries(BINARY_VARS)) {
      assert.equal(reply.vars[key]!.bytes, Buffer.byteLength(value));
      assert.match(reply.vars[key]!.hash, /^[0-9a-f]{12}$/);
      if (value.length >= 4) assert.ok(!json.stdout.includes(JSON.stringify(value).slice(1, -1)));
    }
  });
});

test('`sidekick status` against a standalone `sidekick agent`: the agent block alone', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig();
  const agent = await scope.startAgent();
  const r = await runCli(['status', '-c', scope.configFile], { timeoutMs: 15_000 });
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, ANSI);
  assert.match(r.stdout, new RegExp(`^agent {2}running {2}pid ${agent.pid} {2}worker \\d+ \\(gen 1\\)`));
  assert.match(r.stdout, /^ {2}breaker +closed$/m);
  assert.match(r.stdout, /^ {2}spool +0 records {2}0 B$/m);
  assert.match(r.stdout, /^ {2}clients +0 connected {2}profiling on$/m);
  assert.match(r.stdout, /^ {2}lost +dropped 0 {2}dead-lettered 0 {2}client drops 0$/m);
  assert.doesNotMatch(r.stdout, /sidekick serve|^app /m);
  assert.equal((await agent.stop()).code, 0);
});

/** The structure of a JSON value: its keys all the way down (arrays element by element), without the values. */
function keysOf(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(keysOf);
  if (v && typeof v === 'object') {
    const entries = Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1));
    return Object.fromEntries(entries.map(([k, x]) => [k, keysOf(x)]));
  }
  return typeof v;
}
