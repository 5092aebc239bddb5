// Fault injection, central side (issue 8): a real `sidekick agent` against a central that hangs mid-body, answers
// garbage, answers with huge bodies, or trickles its answer in. Each test ends with the count: records sent =
// delivered (de-duplicated by the key `k` each record carries) + dead-lettered, with nothing dropped, and checks what
// the user sees (counters, SK_ERR_* log lines) and that the agent kept accepting records meanwhile.
//
// How the http exporter classifies what central does (src/agent/exporters/http.ts):
// - The status line decides. A 2xx status line is central's "stored": the export counts as delivered at once, and
//   the body (never needed) is drained for at most timeoutMs, never kept. So a 200 with a nonsense body, a 200 whose
//   body is cut short, a 200 with a multi-MB body and a 200 whose body trickles in are all delivered, without a retry
//   (a retry after a 2xx only makes a duplicate central must drop).
// - A refusal (non-2xx) body is read for its first KiB only (the dead-letter sidecar's excerpt), then the connection
//   is dropped: a multi-MB 500 is a plain http_5xx retry, a multi-MB 400 a dead letter with a 1 KiB excerpt.
// - No status line within timeoutMs (central hangs, reads part of the body and stops, or trickles the status line
//   in) is `timeout`: retried with the same batch id. Something that is not an HTTP answer, or a connection closed
//   before a status line, is `network`: retried. Both count toward the breaker.
// Memory: the worker's peak RSS (VmHWM in /proc) must not grow by anything like the 48 MiB bodies it was sent.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { deadLetters, keysOf, record, sendOnce, waitFor, type AgentStatus } from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';
import { startRawCentral, type Plan, type RawCentral } from './helpers/raw-central.ts';

const MiB = 1024 * 1024;

/** Peak resident set of a process, in bytes (Linux /proc). */
function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, `VmHWM of ${pid}`);
  return Number(m[1]) * 1024;
}

function distinct(keys: string[]): Set<string> {
  return new Set(keys);
}

/** Sent = delivered (de-duplicated by key) + dead-lettered; nothing else delivered, nothing missing. */
function assertBalance(sent: string[], central: RawCentral, deadLettered: string[] = []): void {
  const delivered = distinct(keysOf(central.accepted));
  const dl = keysOf(deadLettered);
  const missing = sent.filter((k) => !delivered.has(k) && !dl.includes(k));
  assert.deepEqual(missing, [], 'every record sent was delivered or dead-lettered');
  const unknown = [...delivered, ...dl].filter((k) => !sent.includes(k));
  assert.deepEqual(unknown, [], 'nothing delivered that was not sent');
  assert.equal(delivered.size + dl.length, sent.length, 'sent = delivered + dead-lettered');
}

test('central hangs mid-body and never answers: the export times out, is retried, and delivers once central behaves', async (t) => {
  const scope = agentScope(t);
  // Requests 0 and 1 hang: central reads their head and stops reading (a 1 MB body stops mid-way in the kernel).
  const central = await startRawCentral(
    () => ({ kind: 'ok' }),
    (n) => n < 2,
  );
  t.after(() => central.close());
  const timeoutMs = 4000;
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs, gzip: false },
    batch: { maxRecords: 50, maxDelayMs: 50, maxInFlight: 1 },
    breaker: { failures: 10, halfOpenAfterMs: 300 },
  });
  const agent = await scope.startAgent();
  const first = Array.from({ length: 50 }, (_, i) => `hang-${i}`);
  await sendOnce(scope.sock, first.map((k) => record(k, 20_000)).join(''));
  await waitFor(() => central.hung.length === 1, 'the first export to hang');
  // While that export hangs, the agent takes other records and answers its status.
  const during = Array.from({ length: 20 }, (_, i) => `during-${i}`);
  await sendOnce(scope.sock, during.map((k) => record(k)).join(''));
  const s1 = await waitFor(async () => {
    const st = await agent.status();
    return st.counters.spooled === 70 && st;
  }, 'the records sent during the hang to be spooled');
  assert.equal(central.hung[0]!.closed, false, `still hanging when the agent took them (timeoutMs ${timeoutMs})`);
  assert.equal(s1.counters.exported, 0);
  const sent = [...first, ...during];
  await waitFor(() => distinct(keysOf(central.accepted)).size === sent.length, 'everything delivered', 40_000);
  const s = await waitFor(async () => {
    const st = await agent.status();
    return st.counters.exported === sent.length && st.gauges.spoolRecords === 0 && st;
  }, 'counters to settle');
  assert.equal(s.counters.retried.timeout, 2, 'each hung attempt counted once as a timeout');
  assert.deepEqual(
    { ...s.counters.retried, timeout: 0 },
    { network: 0, timeout: 0, http_408: 0, http_429: 0, http_5xx: 0, http_other: 0 },
  );
  // Central reads the rest of each hung request now: it sees the end of the connection only if the agent closed it.
  for (const h of central.hung) h.socket.resume();
  await waitFor(() => central.hung.every((h) => h.closed), 'the agent to have closed each hung connection');
  const hungIds = central.requests.filter((r) => r.plan === 'hang').map((r) => r.batchId);
  const firstOk = central.requests.find((r) => r.plan === 'ok')!;
  assert.deepEqual(hungIds, [firstOk.batchId, firstOk.batchId], 'retries carry the same batch id');
  assert.equal(central.accepted.length, sent.length, 'no duplicate: the hung attempts never reached central');
  assertBalance(sent, central);
  const timeouts = agent.logs().filter((l) => l.code === 'SK_ERR_EXPORT_FAILED' && l.reason === 'timeout');
  assert.ok(timeouts.length >= 1, 'SK_ERR_EXPORT_FAILED logged for the timeout');
  assert.match(String(timeouts[0]!.msg), new RegExp(`timed out after ${timeoutMs} ms`));
  assert.equal((await agent.stop()).code, 0);
});

interface Phase {
  name: string;
  /** What central does with the first request of this phase (later ones get a plain 200). */
  bad: Plan;
  /** Requests central should see for the phase, and the retry counter that should move. */
  requests: number;
  retried?: keyof AgentStatus['counters']['retried'];
  deadLettered?: boolean;
}

const huge = 48 * MiB;
const PHASES: Phase[] = [
  {
    name: 'nonsense-200',
    bad: {
      kind: 'raw',
      bytes: Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\u0000\u00ff<html>?', 'latin1'),
      accepted: true,
    },
    requests: 1,
  },
  {
    name: 'cut-200', // announces 1000 bytes, sends 5, closes
    bad: { kind: 'raw', bytes: 'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nshort', accepted: true },
    requests: 1,
  },
  {
    name: 'not-http',
    bad: { kind: 'raw', bytes: 'SSH-2.0-OpenSSH_9.6\r\n', accepted: false },
    requests: 2,
    retried: 'network',
  },
  { name: 'closed-early', bad: { kind: 'raw', bytes: '', accepted: false }, requests: 2, retried: 'network' },
  {
    name: 'huge-200',
    bad: {
      kind: 'stream',
      head: `HTTP/1.1 200 OK\r\nContent-Length: ${huge}\r\n\r\n`,
      bodyBytes: huge,
      chunk: 64 * 1024,
      intervalMs: 0,
      accepted: true,
    },
    requests: 1,
  },
  {
    name: 'huge-500',
    bad: {
      kind: 'stream',
      head: `HTTP/1.1 500 Oops\r\nContent-Length: ${huge}\r\n\r\n`,
      bodyBytes: huge,
      chunk: 64 * 1024,
      intervalMs: 0,
      accepted: false,
    },
    requests: 2,
    retried: 'http_5xx',
  },
  {
    name: 'huge-400',
    bad: {
      kind: 'stream',
      head: `HTTP/1.1 400 Bad\r\nContent-Length: ${huge}\r\n\r\n`,
      bodyBytes: huge,
      chunk: 64 * 1024,
      intervalMs: 0,
      accepted: false,
    },
    requests: 1,
    deadLettered: true,
  },
  {
    name: 'trickle-200-body', // 1 byte per 100 ms after the head: would take 100 s
    bad: {
      kind: 'stream',
      head: 'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n',
      bodyBytes: 1000,
      chunk: 1,
      intervalMs: 100,
      accepted: true,
    },
    requests: 1,
  },
  {
    name: 'trickle-status-line', // the head itself, 1 byte per 100 ms: ~4 s, more than timeoutMs
    bad: {
      kind: 'stream',
      head: '',
      bodyBytes: 38,
      text: 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n',
      chunk: 1,
      intervalMs: 100,
      accepted: false,
    },
    requests: 2,
    retried: 'timeout',
  },
];

test('central answers garbage, huge bodies, trickles: each attempt ends within timeoutMs, classified, memory flat', async (t) => {
  const scope = agentScope(t);
  const seenPhase = new Set<string>();
  const central = await startRawCentral((req) => {
    const phase = PHASES.find((p) => keysOf(req.records)[0]!.startsWith(`${p.name}-`))!;
    if (seenPhase.has(phase.name)) return { kind: 'ok' };
    seenPhase.add(phase.name);
    return phase.bad;
  });
  t.after(() => central.close());
  const timeoutMs = 1500;
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs, gzip: false },
    batch: { maxRecords: 50, maxDelayMs: 50, maxInFlight: 1 },
    breaker: { failures: 10, halfOpenAfterMs: 300 },
  });
  const agent = await scope.startAgent();
  const workerPid = (await agent.status()).worker!.pid;
  const sent: string[] = [];
  let before = await agent.status();
  let peakBefore = 0;
  for (const phase of PHASES) {
    if (phase.name === 'huge-200') peakBefore = peakRss(workerPid);
    const keys = Array.from({ length: 10 }, (_, i) => `${phase.name}-${i}`);
    sent.push(...keys);
    await sendOnce(scope.sock, keys.map((k) => record(k)).join(''));
    const after = await waitFor(async () => {
      const st = await agent.status();
      return st.counters.exported + st.counters.deadLettered === sent.length && st.gauges.spoolRecords === 0 && st;
    }, `phase ${phase.name} settled`);
    const requests = central.requests.filter((r) => keysOf(r.records)[0]!.startsWith(`${phase.name}-`));
    assert.equal(requests.length, phase.requests, `${phase.name}: requests central saw`);
    assert.equal(new Set(requests.map((r) => r.batchId)).size, 1, `${phase.name}: one batch id`);
    for (const reason of Object.keys(after.counters.retried) as (keyof AgentStatus['counters']['retried'])[]) {
      const moved = after.counters.retried[reason] - before.counters.retried[reason];
      assert.equal(moved, reason === phase.retried ? 1 : 0, `${phase.name}: retried{${reason}}`);
    }
    assert.equal(
      after.counters.deadLettered - before.counters.deadLettered,
      phase.deadLettered ? 10 : 0,
      `${phase.name}: dead-lettered`,
    );
    before = after;
  }
  const peakAfter = peakRss(workerPid);
  assert.ok(
    peakAfter - peakBefore < 16 * MiB,
    `worker peak RSS grew ${((peakAfter - peakBefore) / MiB).toFixed(1)} MiB over three 48 MiB bodies`,
  );
  // No answer was read to its end: the agent dropped each connection once it knew the outcome (a huge body after
  // 1 KiB or 64 KiB) or its time was up (trickles), rather than keep reading.
  assert.equal(central.streams.length, 5);
  await waitFor(() => central.streams.every((x) => x.closedEarly), 'the agent to drop every streaming answer');
  const dl = deadLetters(join(scope.dir, 'spool'));
  assert.deepEqual(keysOf(dl.records).sort(), Array.from({ length: 10 }, (_, i) => `huge-400-${i}`).sort());
  assert.equal(dl.sidecars.length, 1);
  assert.ok(String(dl.sidecars[0]!.body).length <= 1024, 'the dead-letter sidecar keeps at most 1 KiB of the body');
  assertBalance(sent, central, dl.records);
  const s = await agent.status();
  assert.equal(s.counters.exported + s.counters.deadLettered, sent.length);
  assert.equal(s.counters.dropped.spool_full + s.counters.dropped.disk_full + s.counters.dropped.spool_corrupt, 0);
  const failed = agent.logs().filter((l) => l.code === 'SK_ERR_EXPORT_FAILED');
  assert.ok(failed.some((l) => l.reason === 'timeout' && /timed out after 1500 ms/.test(String(l.msg))));
  assert.ok(failed.some((l) => l.reason === 'http_5xx' && /answered 500/.test(String(l.msg))));
  assert.ok(failed.some((l) => l.reason === 'network'));
  assert.equal((await agent.stop()).code, 0);
});
