// The spill receiver (src/agent/receivers/spill.ts) on real files: lines fed in order through the sink, control lines,
// bad lines, an unfinished last line left for its writer, rotation, a late writer appending to the rotated file,
// resuming from saved offsets after a restart (nothing fed twice), a torn tail counted, and back-pressure.
import assert from 'node:assert/strict';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { pino } from 'pino';
import { MemoryBudget } from '../src/agent/worker/memory-budget.ts';
import type { LineSink } from '../src/agent/receivers/ndjson.ts';
import { SpillReceiver } from '../src/agent/receivers/spill.ts';

const root = mkdtempSync(join(tmpdir(), 'sk-spill-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

interface Fed {
  good: string[];
  bad: string[];
  control: string[];
  truncated: number;
  flushes: number;
  replayed: number;
}

/**
 * `grace.ms`: how long a draining file must be quiet before it is deleted, read at each scan (a test may change it).
 * 0 by default; a test that must see a draining file before it is deleted holds it longer: the directory watcher can
 * queue a second scan behind scanNow()'s (the rename is a change), which with 0 would delete the file at once.
 */
function receiver(dir: string, fed: Fed, budget = new MemoryBudget(1024 * 1024), grace = { ms: 0 }): SpillReceiver {
  const sink: LineSink = {
    good: (lines) => fed.good.push(...lines.toString('utf8').split('\n').filter(Boolean)),
    bad: (reason) => fed.bad.push(reason),
    control: (line) => fed.control.push(line.toString('utf8')),
    truncated: () => fed.truncated++,
  };
  return new SpillReceiver({
    dir: join(dir, 'spill'),
    stateFile: join(dir, 'spill-offsets.json'),
    scanIntervalMs: 60_000, // the tests drive scans themselves
    maxRecordBytes: 1024,
    group: undefined,
    sink,
    flush: async () => {
      fed.flushes++;
    },
    budget,
    log: pino({ level: 'silent' }),
    onReplayed: (k) => (fed.replayed += k),
    get drainGraceMs() {
      return grace.ms;
    },
  });
}

function fresh(): { dir: string; spill: string; fed: Fed } {
  const dir = join(root, `case-${n++}`);
  return {
    dir,
    spill: join(dir, 'spill', 'spill.ndjson'),
    fed: { good: [], bad: [], control: [], truncated: 0, flushes: 0, replayed: 0 },
  };
}

test('lines are fed in order, control and bad lines classified, the file rotated and then deleted', async () => {
  const { dir, spill, fed } = fresh();
  const grace = { ms: 3_600_000 }; // the draining file stays until the test lets it go (below)
  const r = receiver(dir, fed, undefined, grace);
  await r.start(); // creates the directory
  assert.equal(statSync(join(dir, 'spill')).mode & 0o7777, 0o2770, 'setgid, group-writable, no world access');
  appendFileSync(spill, '{"a":1}\n{"_sidekick":"dropped","count":2}\nnot json\n{"b":2}\n{"c":');
  await r.scanNow();
  assert.deepEqual(fed.good, ['{"a":1}', '{"b":2}']);
  assert.deepEqual(fed.control, ['{"_sidekick":"dropped","count":2}']);
  assert.deepEqual(fed.bad, ['not_json']);
  assert.equal(fed.replayed, 2);
  assert.ok(fed.flushes >= 1, 'the spool was flushed before the offset moved');
  assert.ok(existsSync(spill), 'an unfinished last line keeps the live file: its writer may be mid-append');
  assert.equal(r.snapshot().pendingBytes, 5);
  appendFileSync(spill, '3}\n');
  await r.scanNow(); // reads the rest, then rotates the fully read file
  assert.deepEqual(fed.good, ['{"a":1}', '{"b":2}', '{"c":3}']);
  assert.ok(!existsSync(spill), 'rotated');
  const draining = readdirSync(join(dir, 'spill')).filter((f) => f.endsWith('.draining'));
  assert.equal(draining.length, 1);
  // A writer that opened the old name before the rename appends to the rotated file: still read.
  appendFileSync(join(dir, 'spill', draining[0]!), '{"late":1}\n');
  await r.scanNow();
  assert.deepEqual(fed.good.at(-1), '{"late":1}');
  grace.ms = 0;
  await r.scanNow(); // grace 0: fully read and not growing → deleted
  assert.deepEqual(readdirSync(join(dir, 'spill')), []);
  assert.equal(r.snapshot().pendingBytes, 0);
  await r.stop();
});

test('a restart resumes from the saved offsets: nothing is fed twice, new lines are', async () => {
  const { dir, spill, fed } = fresh();
  const r1 = receiver(dir, fed);
  await r1.start();
  appendFileSync(spill, '{"x":1}\n{"x":2}\n{"x":');
  await r1.scanNow();
  await r1.stop();
  appendFileSync(spill, '3}\n{"x":4}\n');
  const r2 = receiver(dir, fed);
  await r2.start();
  await r2.scanNow();
  assert.deepEqual(fed.good, ['{"x":1}', '{"x":2}', '{"x":3}', '{"x":4}'], 'each line once, in order');
  await r2.stop();
});

test('a rotated file that stopped growing with a torn last line: the tail is counted as truncated', async () => {
  const { dir, fed } = fresh();
  const r = receiver(dir, fed);
  await r.start();
  // A rotated file whose writer died mid-write.
  appendFileSync(join(dir, 'spill', 'spill.ndjson.1000.draining'), '{"ok":1}\n{"torn":');
  await r.scanNow();
  assert.equal(fed.truncated, 1);
  assert.deepEqual(fed.good, ['{"ok":1}']);
  assert.deepEqual(readdirSync(join(dir, 'spill')), []);
  await r.stop();
});

test('back-pressure: no line is fed while the memory budget is exhausted', async () => {
  const { dir, spill, fed } = fresh();
  const budget = new MemoryBudget(1000);
  const r = receiver(dir, fed, budget);
  await r.start();
  budget.add('inflight', 2000); // a batch in flight (unfinished lines alone never block: memory-budget.ts)
  assert.equal(budget.exhausted, true);
  appendFileSync(spill, '{"held":1}\n');
  const scan = r.scanNow();
  await new Promise((res) => setImmediate(res));
  assert.deepEqual(fed.good, [], 'held back while exhausted');
  budget.add('inflight', -2000);
  await scan;
  assert.deepEqual(fed.good, ['{"held":1}']);
  await r.stop();
});
