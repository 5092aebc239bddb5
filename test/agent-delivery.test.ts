// Delivery to central through a real `sidekick agent` process: outage and recovery (FIFO), the status-code matrix,
// 413 splitting, dead letters, and the breaker's persistence across a restart. Counts balance in every test:
// records sent = delivered + dead-lettered + dropped by a cap.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  balance,
  deadLetters,
  dedupedByBatchId,
  keysOf,
  record,
  sendOnce,
  waitFor,
  type CentralReply,
} from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';

test('central down for a while, then back: everything arrives once, earliest first', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const port = await scope.deadPort(); // central is down: connections to this port are refused
  scope.writeConfig({
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest`, timeoutMs: 10_000, gzip: true },
    batch: { maxRecords: 40, maxDelayMs: 50, maxInFlight: 1 }, // strict arrival order
    breaker: { failures: 3, halfOpenAfterMs: 400 },
  });
  const agent = await scope.startAgent();
  const sent: string[] = [];
  for (let wave = 0; wave < 3; wave++) {
    let buf = '';
    for (let i = 0; i < 100; i++) {
      const k = `w${wave}-${String(i).padStart(3, '0')}`;
      sent.push(k);
      buf += record(k, 200);
    }
    await sendOnce(join(dir, 'agent.sock'), buf);
    await new Promise((r) => setTimeout(r, 100));
  }
  const down = await waitFor(async () => {
    const s = await agent.status();
    return s.counters.spooled === 300 && s.counters.retried.network >= 3 && s.gauges.breakerState === 1 && s;
  }, 'the breaker to open with everything spooled');
  assert.equal(down.counters.exported, 0);
  const central = await scope.startCentral(() => ({ status: 200 }), port);
  await waitFor(() => new Set(keysOf(central.delivered)).size === 300, 'all 300 records delivered', 20_000);
  const got = keysOf(central.delivered);
  assert.deepEqual(got, sent, 'delivered exactly once, in the order they were accepted (FIFO)');
  assert.ok(central.requests.every((r) => r.gzip && r.contentType === 'application/x-ndjson'));
  assert.equal(new Set(central.deliveredIds).size, central.deliveredIds.length, 'no batch delivered twice');
  const s = await waitFor(async () => {
    const st = await agent.status();
    return st.counters.exported === 300 && st.gauges.spoolRecords === 0 && st;
  }, 'counters to settle');
  assert.equal(s.counters.received, 300);
  assert.equal(s.counters.deadLettered + s.counters.dropped.spool_full, 0);
  assert.equal(s.gauges.breakerState, 0, 'breaker closed again');
  const r = await agent.stop();
  assert.equal(r.code, 0);
});

test('status matrix: 408, 429 + Retry-After, 500, 503, network error retry the same batch; 2xx delivers', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const script: CentralReply[] = [
    { status: 408 },
    { status: 429, headers: { 'retry-after': '1' } },
    { status: 500 },
    { status: 503 },
    { status: 0, destroy: true },
  ];
  const central = await scope.startCentral((_req, n) => script[n] ?? { status: 200 });
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs: 10_000, gzip: false },
    breaker: { failures: 10, halfOpenAfterMs: 300 },
  });
  const agent = await scope.startAgent();
  const sent = Array.from({ length: 10 }, (_, i) => `m-${i}`);
  await sendOnce(join(dir, 'agent.sock'), sent.map((k) => record(k)).join(''));
  await waitFor(() => central.delivered.length === 10, 'the batch to be delivered', 20_000);
  assert.equal(central.requests.length, 6);
  const ids = new Set(central.requests.map((r) => r.batchId));
  assert.equal(ids.size, 1, 'X-Sidekick-Batch-Id is the same on every retry');
  assert.ok([...ids][0]!.length > 0);
  // Retry-After: 1 honoured: the retry after the 429 was scheduled 1 s out (the retry policy alone says 20-200 ms),
  // as the agent reports it; the retries after the other statuses were not.
  const failures = agent.logs().filter((l) => l.code === 'SK_ERR_EXPORT_FAILED');
  assert.deepEqual(
    failures.map((l) => l.reason),
    ['http_408', 'http_429', 'http_5xx', 'http_5xx', 'network'],
    agent.stderr(),
  );
  const delays = failures.map((l) => Number(l.retryInMs));
  assert.ok(delays[1]! >= 1000, `the retry after 429 + Retry-After: 1 waits 1 s: ${delays.join(', ')} ms`);
  for (const i of [0, 2, 3, 4]) assert.ok(delays[i]! <= 200, `retry.maxDelayMs elsewhere: ${delays.join(', ')} ms`);
  assert.deepEqual(keysOf(central.delivered), sent);
  const s = await waitFor(async () => {
    const st = await agent.status();
    return st.counters.exported === 10 && st;
  }, 'exported counter');
  assert.deepEqual(
    { ...s.counters.retried },
    { network: 1, timeout: 0, http_408: 1, http_429: 1, http_5xx: 2, http_other: 0 },
  );
  assert.equal((await agent.stop()).code, 0);
});

test('a timeout is retried; 413 splits in halves; a lone 413 record and a 400 are dead-lettered and counted', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  let slowOnce = true;
  const central = await scope.startCentral((req) => {
    const keys = keysOf(req.records);
    if (keys.some((k) => k.startsWith('slow')) && slowOnce) {
      slowOnce = false;
      return { status: 200, delayMs: 6000 }; // longer than timeoutMs: the agent gives up and retries
    }
    if (keys.some((k) => k.startsWith('reject'))) return { status: 400, body: 'schema violation: field "k"' };
    if (keys.some((k) => k.startsWith('big'))) return { status: 413 };
    if (req.records.length > 2) return { status: 413, body: 'too large' };
    return { status: 200 };
  });
  scope.writeConfig({ exporter: { type: 'http', url: central.url, timeoutMs: 2500, gzip: true } });
  const agent = await scope.startAgent();
  const sock = join(dir, 'agent.sock');
  const phases: string[][] = [
    ['slow-0', 'slow-1'],
    ['s-0', 's-1', 's-2', 's-3', 's-4', 's-5', 's-6', 's-7'],
    ['big-0', 'ok-0', 'ok-1'],
    ['reject-0', 'reject-1'],
  ];
  const sent: string[] = [];
  for (const keys of phases) {
    sent.push(...keys);
    await sendOnce(sock, keys.map((k) => record(k)).join(''));
    await waitFor(async () => {
      const st = await agent.status();
      return st.counters.exported + st.counters.deadLettered === sent.length && st.gauges.spoolRecords === 0;
    }, `phase ${keys[0]} settled`);
  }
  const dl = deadLetters(join(dir, 'spool'));
  // The timed-out request may still have been processed by central: the same batch id, which central dedupes.
  const b = balance(sent, keysOf(dedupedByBatchId(central)), keysOf(dl.records));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0);
  assert.deepEqual(keysOf(dl.records).sort(), ['big-0', 'reject-0', 'reject-1']);
  assert.equal(dl.sidecars.length, 2);
  const byStatus = Object.fromEntries(dl.sidecars.map((s) => [s.status, s]));
  assert.match(String(byStatus[400]!.body), /schema violation/);
  assert.equal(byStatus[413]!.records, 1);
  const split = central.requests.filter((r) => r.status === 200 && keysOf(r.records)[0]!.startsWith('s-'));
  assert.equal(split.length, 4, '8 records, answered 413 above 2: four deliveries of 2');
  assert.ok(split.every((r) => r.records.length === 2));
  const original = central.requests.find((r) => r.status === 413 && r.records.length === 8)!.batchId;
  assert.deepEqual(
    split.map((r) => r.batchId).sort(), // halves go out in parallel (batch.maxInFlight)
    ['.0.0', '.0.1', '.1.0', '.1.1'].map((suffix) => original + suffix),
    'halves carry ids derived from the spool batch id',
  );
  const s = await agent.status();
  assert.equal(s.counters.retried.timeout, 1);
  assert.equal(s.counters.exported, 12);
  assert.equal(s.counters.deadLettered, 3);
  const logs = agent.logs().filter((l) => l.code === 'SK_ERR_DEAD_LETTER');
  assert.equal(logs.length, 2);
  assert.equal((await agent.stop()).code, 0);
});

test('an open breaker survives a restart: no request while it reports open, then it closes and the backlog goes', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const port = await scope.deadPort();
  // long enough that a stop and a start on a loaded machine fit inside it (3 s did not, once: the breaker had
  // already half-opened by the time the new worker reported)
  const halfOpenAfterMs = 8000;
  scope.writeConfig({
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest`, timeoutMs: 10_000 },
    breaker: { failures: 2, halfOpenAfterMs },
  });
  let agent = await scope.startAgent();
  const sent = Array.from({ length: 20 }, (_, i) => `b-${i}`);
  await sendOnce(join(dir, 'agent.sock'), sent.map((k) => record(k)).join(''));
  await waitFor(async () => (await agent.status()).gauges.breakerState === 1, 'the breaker to open');
  assert.equal((await agent.stop()).code, 0);
  const central = await scope.startCentral(() => ({ status: 200 }), port);
  agent = await scope.startAgent();
  type Breaker = { state: string; retryInMs: number };
  const restored = (await agent.status()).pipeline?.breaker as Breaker | undefined;
  assert.equal(restored?.state, 'open', 'restored open from the spool');
  assert.ok(
    restored.retryInMs > 0 && restored.retryInMs <= halfOpenAfterMs,
    `the remaining open time restored: ${restored.retryInMs} ms`,
  );
  // While the breaker reports open, central has seen no request: each sample counts the requests *before* asking
  // the worker for its state (a request can only go out after the breaker left 'open', and central answers 200, so
  // it does not open again). The states seen, in order, end closed.
  const states: string[] = [];
  await waitFor(
    async () => {
      const before = central.requests.length;
      const breaker = (await agent.status()).pipeline?.breaker as Breaker | undefined;
      if (!breaker) return false;
      if (states.at(-1) !== breaker.state) states.push(breaker.state);
      if (breaker.state === 'open')
        assert.equal(before, 0, `a request while the breaker was open (${states.join(' → ')})`);
      return central.delivered.length === 20 && breaker.state === 'closed';
    },
    'the breaker to close and the backlog to be delivered',
    30_000,
  );
  assert.equal(states[0], 'open');
  assert.equal(states.at(-1), 'closed', `breaker states: ${states.join(' → ')}`);
  assert.deepEqual(keysOf(central.delivered), sent);
  assert.equal((await agent.stop()).code, 0);
});

test('batch.maxInFlight: a batch goes out as parallel parts of <= maxRecords with derived ids, acked once', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  // No part is answered before all four have arrived: they can only all be delivered if they were in flight at
  // once (sent one after another, the first would wait for an answer that never comes).
  let allArrived!: () => void;
  const fourInFlight = new Promise<void>((r) => (allArrived = r));
  let arrived = 0;
  const central = await scope.startCentral(() => {
    if (++arrived === 4) allArrived();
    return { status: 200, hold: fourInFlight };
  });
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs: 10_000 },
    batch: { maxRecords: 10, maxDelayMs: 1000, maxInFlight: 4 },
  });
  const agent = await scope.startAgent();
  const sent = Array.from({ length: 40 }, (_, i) => `p-${i}`);
  await sendOnce(join(dir, 'agent.sock'), sent.map((k) => record(k)).join(''));
  await waitFor(() => central.delivered.length === 40, 'all four parts in flight at once, then delivered');
  assert.equal(central.requests.length, 4);
  assert.ok(central.requests.every((r) => r.records.length === 10));
  const ids = central.requests.map((r) => r.batchId).sort();
  const base = ids[0]!.replace(/~\d+$/, '');
  assert.deepEqual(
    ids,
    [0, 1, 2, 3].map((k) => `${base}~${k}`),
  );
  assert.deepEqual(keysOf(central.delivered).sort(), [...sent].sort());
  const s = await agent.status();
  assert.equal(s.counters.batchedBatches, 1, 'one spool batch');
  assert.equal(s.counters.exportedBatches, 4, 'four parts');
  assert.equal((await agent.stop()).code, 0);
});
