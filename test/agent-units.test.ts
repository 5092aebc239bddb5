// Unit tests of the agent's pure pieces: NDJSON framing/validation, 413 splitting, Retry-After, memory budget, the
// breaker's persistence.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { ExporterBreaker, BreakerOpenError } from '../src/agent/breaker/breaker.ts';
import { parseRetryAfter } from '../src/agent/exporters/http.ts';
import { RetryableExportError, countLines, splitPart } from '../src/agent/exporters/types.ts';
import { addCounters, createAgentRegistry, zeroCounters, zeroGauges } from '../src/agent/metrics.ts';
import { MemoryBudget } from '../src/agent/worker/memory-budget.ts';
import { RateWindow, replayProgress } from '../src/agent/supervisor/agent-status.ts';
import { droppedLine, parseControl } from '../src/agent/receivers/control.ts';
import { LineFramer, checkLine, isControlLine } from '../src/agent/receivers/ndjson.ts';

function collect(max = 64): {
  framer: LineFramer;
  good: string[];
  runs: number[];
  bad: string[];
  control: string[];
  truncated: string[];
} {
  const good: string[] = [];
  const runs: number[] = [];
  const bad: string[] = [];
  const control: string[] = [];
  const truncated: string[] = [];
  const framer = new LineFramer(max, {
    good: (lines, records) => {
      runs.push(records);
      good.push(...lines.toString('utf8').split('\n').slice(0, -1));
      assert.equal(lines[lines.length - 1], 0x0a, 'a run ends with a newline');
    },
    bad: (reason) => bad.push(reason),
    control: (line) => control.push(line.toString('utf8')),
    truncated: (sample) => truncated.push(sample.toString('utf8')),
  });
  return { framer, good, runs, bad, control, truncated };
}

test('checkLine classifies objects, non-objects, invalid JSON and invalid UTF-8', () => {
  const c = (s: string | Buffer): string | undefined => {
    const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
    return checkLine(b, 0, b.length);
  };
  assert.equal(c('{"a":1}'), undefined);
  assert.equal(c('  {"a":[1,{"b":null}]}\r'), undefined);
  assert.equal(c('{}'), undefined);
  assert.equal(c('[1,2]'), 'not_object');
  assert.equal(c('"str"'), 'not_object');
  assert.equal(c('null'), 'not_object');
  assert.equal(c('42'), 'not_object');
  assert.equal(c('{"a":1'), 'not_json');
  assert.equal(c('{"a":1}{"b":2}'), 'not_json');
  assert.equal(c('{"a":1},{"b":2}'), 'not_json');
  assert.equal(c('hello'), 'not_json');
  assert.equal(c(Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d])), 'not_json'); // {"a":"\xff"}
  assert.equal(c('   '), 'blank');
});

test('framer: good lines around bad ones are kept, bad ones counted by reason, runs are zero-copy slices', () => {
  const { framer, good, bad } = collect(40);
  framer.push(Buffer.from('{"a":1}\n{"b":2}\nnope\n[1]\n\n{"c":3}\n' + `{"big":"${'x'.repeat(50)}"}\n{"d":4}\n`));
  assert.deepEqual(good, ['{"a":1}', '{"b":2}', '{"c":3}', '{"d":4}']);
  assert.deepEqual(bad, ['not_json', 'not_object', 'too_large']);
});

test('framer: lines split across chunks, byte by byte', () => {
  const { framer, good, bad, truncated } = collect(64);
  const input = Buffer.from('{"a":"é"}\n{"b":2}\n\x00\x01\x02garbage\n{"c":3}\n{"d":4}');
  for (const byte of input) framer.push(Buffer.from([byte]));
  framer.end(); // the last line has no newline: a cut line, discarded and reported, never a record
  assert.deepEqual(good, ['{"a":"é"}', '{"b":2}', '{"c":3}']);
  assert.deepEqual(bad, ['not_json']);
  assert.deepEqual(truncated, ['{"d":4}']);
});

test('framer: control lines are taken out of the record stream, in any position and split across chunks', () => {
  const { framer, good, runs, control, bad, truncated } = collect(64);
  const ctl = '{"_sidekick":"dropped","count":3}';
  framer.push(Buffer.from(`${ctl}\n{"a":1}\n{"b":2}\n${ctl}\n{"c":3}\n{"_sidekick_not":1}\n{"_sid`));
  framer.push(Buffer.from('ekick":"dropped","count":1}\n{"d":4}\n'));
  framer.push(Buffer.from('  \n'));
  framer.end(); // only blanks after the last newline: nothing truncated
  assert.deepEqual(good, ['{"a":1}', '{"b":2}', '{"c":3}', '{"_sidekick_not":1}', '{"d":4}']);
  assert.deepEqual(runs, [2, 2, 1]);
  assert.deepEqual(control, [ctl, ctl, '{"_sidekick":"dropped","count":1}']);
  assert.deepEqual(bad, []);
  assert.deepEqual(truncated, []);
});

test('control lines: parsed, validated, and the exact bytes clients write', () => {
  const ok = parseControl(Buffer.from(droppedLine(7).trimEnd()));
  assert.deepEqual(ok, { kind: 'dropped', count: 7 });
  for (const bad of [
    '{"_sidekick":"dropped","count":-1}',
    '{"_sidekick":"dropped","count":1.5}',
    '{"_sidekick":"dropped","count":"3"}',
    '{"_sidekick":"dropped","count":1e12}',
    '{"_sidekick":"spilled","count":1}',
    '{"_sidekick":',
  ])
    assert.equal(parseControl(Buffer.from(bad)), undefined, bad);
  const b = Buffer.from(`x${droppedLine(1)}`);
  assert.equal(isControlLine(b, 1, b.length - 1), true);
  assert.equal(isControlLine(b, 0, b.length - 1), false);
});

test('framer: an over-long line spanning many chunks is counted once and skipped without buffering it', () => {
  const { framer, good, bad } = collect(32);
  framer.push(Buffer.from('{"ok":1}\n{"long":"'));
  for (let i = 0; i < 100; i++) framer.push(Buffer.from('y'.repeat(100)));
  assert.ok(framer.bufferedBytes <= 32, 'nothing of the long line is held');
  framer.push(Buffer.from('"}\n{"ok":2}\n'));
  assert.deepEqual(good, ['{"ok":1}', '{"ok":2}']);
  assert.deepEqual(bad, ['too_large']);
});

test('framer: partial line survives a hand-over (takePartial / restorePartial)', () => {
  const a = collect(64);
  a.framer.push(Buffer.from('{"x":1}\n{"y":'));
  const { partial, discarding } = a.framer.takePartial();
  assert.equal(partial.toString(), '{"y":');
  const b = collect(64);
  b.framer.restorePartial(partial, discarding);
  b.framer.push(Buffer.from('2}\n'));
  assert.deepEqual(a.good, ['{"x":1}']);
  assert.deepEqual(b.good, ['{"y":2}']);
});

test('413 split: halves at line boundaries with derived, stable ids', () => {
  const payload = Buffer.from('{"a":1}\n{"a":2}\n{"a":3}\n{"a":4}\n{"a":5}\n');
  const [x, y] = splitPart({ id: 'b1~1', payload, records: 5, batchId: 'b1', firstIndex: 100 })!;
  assert.equal(x.id, 'b1~1.0');
  assert.equal(y.id, 'b1~1.1');
  assert.equal(x.records, 2);
  assert.equal(y.records, 3);
  // each half knows where its records sit in the spool batch (OTLP's sidekick.batch.index)
  assert.deepEqual([x.batchId, x.firstIndex, y.batchId, y.firstIndex], ['b1', 100, 'b1', 102]);
  assert.equal(countLines(x.payload), 2);
  assert.equal(Buffer.concat([x.payload, y.payload]).toString(), payload.toString());
  assert.equal(
    splitPart({ id: 'one', payload: Buffer.from('{}\n'), records: 1, batchId: 'one', firstIndex: 0 }),
    undefined,
  );
});

test('Retry-After: seconds and HTTP dates', () => {
  assert.equal(parseRetryAfter('3'), 3000);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now), 5000);
  assert.equal(parseRetryAfter('soon'), undefined);
  assert.equal(parseRetryAfter(undefined), undefined);
});

test('memory budget: exhausted past max or while held, relief under 75%', () => {
  const b = new MemoryBudget(100);
  const events: string[] = [];
  b.on('exhausted', () => events.push('x'));
  b.on('relief', () => events.push('r'));
  b.add('receiver', 60);
  b.add('inflight', 50);
  assert.equal(b.exhausted, true);
  b.add('inflight', -30); // 80: still above low water
  assert.equal(b.exhausted, true);
  b.add('inflight', -20); // 60
  assert.equal(b.exhausted, false);
  b.hold('spool');
  assert.equal(b.exhausted, true);
  b.release('spool');
  assert.deepEqual(events, ['x', 'r', 'x', 'r']);
});

test('memory budget: unfinished lines alone never block (only reading on finishes them)', () => {
  const b = new MemoryBudget(100);
  b.add('receiver', 150); // paused mid-line past the limit, nothing else held
  assert.equal(b.exhausted, false, 'no deadlock: the readers must go on to finish their lines');
  b.add('spool', 10); // now something drains: the bound applies
  assert.equal(b.exhausted, true);
  b.add('spool', -10); // the write landed; only the unfinished lines are left
  assert.equal(b.exhausted, false);
});

test('breaker: opens after N consecutive retryable failures, persists openedAt, restores open', async () => {
  let stored: unknown;
  const store = { read: async () => stored, write: async (v: unknown) => void (stored = v) };
  const log = pino({ level: 'silent' });
  const b = await ExporterBreaker.create({ failures: 3, halfOpenAfterMs: 60_000, store, log });
  const fail = (): Promise<never> => Promise.reject(new RetryableExportError('down', 'network'));
  for (let i = 0; i < 3; i++) await assert.rejects(b.execute(fail), RetryableExportError);
  assert.equal(b.state, 'open');
  await assert.rejects(
    b.execute(async () => 1),
    BreakerOpenError,
  );
  await b.settle();
  assert.ok(stored, 'state persisted');
  const again = await ExporterBreaker.create({ failures: 3, halfOpenAfterMs: 60_000, store, log });
  assert.equal(again.state, 'open', 'a restart honours the open breaker');
  assert.ok(again.retryInMs() > 55_000 && again.retryInMs() <= 60_000);
  // a definitive answer (non-retryable error) does not count as a failure
  const c = await ExporterBreaker.create({
    failures: 1,
    halfOpenAfterMs: 10,
    store: { read: async () => undefined, write: async () => undefined },
    log,
  });
  await assert.rejects(
    c.execute(() => Promise.reject(new Error('bug'))),
    /bug/,
  );
  assert.equal(c.state, 'closed');
});

test('metrics: totals add up across workers, Prometheus text has the counters', async () => {
  const a = zeroCounters();
  a.received = 5;
  a.invalid.not_json = 1;
  const b = zeroCounters();
  b.received = 7;
  b.dropped.spool_full = 2;
  const sum = addCounters(a, b);
  assert.equal(sum.received, 12);
  assert.equal(sum.invalid.not_json, 1);
  assert.equal(sum.dropped.spool_full, 2);
  const reg = createAgentRegistry(() => ({ counters: sum, gauges: { ...zeroGauges(), breakerState: 1 } }));
  const text = await reg.metrics();
  assert.match(text, /sidekick_agent_received_records_total 12/);
  assert.match(text, /sidekick_agent_invalid_records_total\{reason="not_json"\} 1/);
  assert.match(text, /sidekick_agent_dropped_records_total\{reason="spool_full"\} 2/);
  assert.match(text, /sidekick_agent_breaker_state 1/);
});

test('RateWindow: per-second rates over the window, never negative; replayProgress only for a real backlog', () => {
  const w = new RateWindow(10_000);
  assert.deepEqual(w.rates(), { receivedPerSec: 0, exportedPerSec: 0, windowMs: 0 });
  w.add(0, 0, 0);
  w.add(1000, 500, 100);
  w.add(2000, 1000, 300);
  assert.deepEqual(w.rates(), { receivedPerSec: 500, exportedPerSec: 150, windowMs: 2000 });
  // Older samples leave the window.
  w.add(20_000, 1000, 300);
  w.add(21_000, 1000, 1300);
  assert.deepEqual(w.rates(), { receivedPerSec: 0, exportedPerSec: 1000, windowMs: 1000 });
  // A sum that steps back (a worker's last report lost) reads as 0, not negative.
  w.add(22_000, 900, 1300);
  assert.equal(w.rates().receivedPerSec, 0);

  assert.equal(replayProgress(500, 100), undefined);
  assert.deepEqual(replayProgress(50_000, 2500), { backlogRecords: 50_000, exportedPerSec: 2500, etaSeconds: 20 });
  assert.deepEqual(replayProgress(50_000, 0), { backlogRecords: 50_000, exportedPerSec: 0, etaSeconds: undefined });
});
