// Spool tests: FIFO, restart replay, stable batch ids, corruption, kill -9, size cap, lock, state files.
import { after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import * as zlib from 'node:zlib';
import { pino } from 'pino';
import { Spool, type SpoolOptions } from '../src/agent/queue/spool.ts';
import { crc32, crc32Js } from '../src/agent/queue/crc32.ts';
import { segmentName } from '../src/agent/queue/segment.ts';
import { processStartTime } from '../src/agent/queue/lock.ts';
import { isSidekickError } from '../src/errors.ts';

const REPO = resolve(import.meta.dirname, '..');
const LINE_BYTES = 200;

function captureLog(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

/**
 * A small seeded PRNG (mulberry32) for the randomised tests: the seed is printed, and SK_TEST_SEED=<seed> replays a
 * failing run's random choices (the same damage, the same append and batch sizes).
 */
function seeded(t: TestContext): { random: () => number; seed: number } {
  const fixed = process.env.SK_TEST_SEED;
  const seed = fixed !== undefined && fixed !== '' ? Number(fixed) >>> 0 : randomBytes(4).readUInt32LE(0);
  t.diagnostic(`seed ${seed} (replay with SK_TEST_SEED=${seed})`);
  let a = seed;
  const random = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  return { random, seed };
}

const tmpDirs: string[] = [];
/** A fresh dir under os.tmpdir(); all are removed when the file's tests end, failed or not. */
async function tmp(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sk-spool-test-'));
  tmpDirs.push(dir);
  return dir;
}
after(() => Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true }))));

/** One NDJSON record of exactly LINE_BYTES bytes carrying its sequence number. */
function line(i: number): string {
  const head = `{"i":${i},"p":"`;
  return `${head}${'x'.repeat(LINE_BYTES - head.length - 3)}"}\n`;
}
function lines(from: number, n: number): Buffer {
  let s = '';
  for (let i = from; i < from + n; i++) s += line(i);
  return Buffer.from(s);
}
function ids(payload: Buffer): number[] {
  return payload
    .toString()
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => (JSON.parse(l) as { i: number }).i);
}
function range(from: number, toIncl: number): number[] {
  const out: number[] = [];
  for (let i = from; i <= toIncl; i++) out.push(i);
  return out;
}

async function drainAll(s: Spool, maxRecords = 100): Promise<number[]> {
  const out: number[] = [];
  for (;;) {
    const b = await s.nextBatch(maxRecords);
    if (!b) return out;
    assert.equal(b.records, ids(b.payload).length, 'records matches the lines in the payload');
    assert.equal(b.bytes, b.payload.length);
    out.push(...ids(b.payload));
    await s.ack(b.id);
  }
}

/** Append `n` records as separate frames of `per` records (append + flush each), for a known file layout. */
async function appendFrames(s: Spool, from: number, n: number, per: number): Promise<void> {
  for (let i = from; i < from + n; i += per) {
    s.append(lines(i, per), per);
    await s.flush();
  }
}

function flip(buf: Buffer, at: number, mask: number): void {
  buf[at] = buf[at]! ^ mask;
}

async function segFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith('seg-')).sort();
}

function opts(dir: string, log: pino.Logger, more: Partial<SpoolOptions> = {}): SpoolOptions {
  return { dir, maxBytes: 64 * 1024 * 1024, segmentBytes: 1024 * 1024, syncIntervalMs: 10, log, ...more };
}

function balance(s: Spool): void {
  const st = s.stats();
  assert.equal(
    st.recoveredRecords + st.appendedRecords,
    st.ackedRecords + st.pendingRecords + st.droppedRecords + st.corruptRecords,
    `totals balance: ${JSON.stringify(st)}`,
  );
}

test('crc32: zlib-compatible, JS fallback identical', () => {
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(crc32Js(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(crc32Js(Buffer.alloc(0)), 0);
  const native = (zlib as unknown as { crc32?: (b: Uint8Array, v?: number) => number }).crc32;
  for (let n = 0; n < 300; n += 7) {
    const b = randomBytes(n * 13);
    const js = crc32Js(b);
    if (native) assert.equal(js, native(b));
    // continuation
    const cut = Math.floor(b.length / 3);
    assert.equal(crc32Js(b.subarray(cut), crc32Js(b.subarray(0, cut))), js);
  }
});

test('FIFO across many appends and segment rolls, with a concurrent reader', async (t) => {
  const { random, seed } = seeded(t);
  const dir = await tmp();
  const { log } = captureLog();
  const s = await Spool.open(opts(dir, log, { segmentBytes: 16 * 1024, syncIntervalMs: 5 }));
  const N = 20_000;
  let producerDone = false;
  let resolveDone!: () => void;
  const doneP = new Promise<void>((r) => (resolveDone = r));
  const producer = (async () => {
    let i = 0;
    while (i < N) {
      const n = Math.min(N - i, 1 + Math.floor(random() * 25));
      s.append(lines(i, n), n);
      i += n;
      if (random() < 0.2) await new Promise((r) => setImmediate(r));
    }
    producerDone = true;
    resolveDone();
  })();
  const got: number[] = [];
  const seqs = new Set<string>();
  for (;;) {
    const b = await s.nextBatch(1 + Math.floor(random() * 150));
    if (!b) {
      if (producerDone) {
        // the producer has returned: everything is appended, and nextBatch pushes buffered data out before
        // answering "empty", so one more look decides
        const last = await s.nextBatch(1000);
        if (!last) break;
        got.push(...ids(last.payload));
        await s.ack(last.id);
        continue;
      }
      await Promise.race([once(s, 'data'), doneP]);
      continue;
    }
    seqs.add(b.id.split('-')[1]!);
    got.push(...ids(b.payload));
    await s.ack(b.id);
  }
  await producer;
  assert.deepEqual(got, range(0, N - 1), `seed ${seed}`);
  assert.ok(seqs.size > 20, `batches came from many segments (${seqs.size}; seed ${seed})`);
  const st = s.stats();
  assert.equal(st.pendingRecords, 0);
  assert.equal(st.ackedRecords, N);
  assert.equal(st.segments, 1, 'fully acked segments are deleted');
  assert.equal((await segFiles(dir)).length, 1);
  balance(s);
  await s.close();
  await rm(dir, { recursive: true });
});

test("'data' is emitted when appended records become readable", async () => {
  const dir = await tmp();
  const { log } = captureLog();
  const s = await Spool.open(opts(dir, log));
  const p = once(s, 'data');
  s.append(lines(0, 3), 3);
  await p;
  const b = await s.nextBatch(10);
  assert.deepEqual(ids(b!.payload), [0, 1, 2]);
  assert.ok(Math.abs(b!.firstAppendedAt - Date.now()) < 10_000);
  await s.close();
  assert.throws(
    () => s.append(lines(3, 1), 1),
    (e: unknown) => isSidekickError(e, 'SK_ERR_STOPPED'),
  );
  await rm(dir, { recursive: true });
});

test('restart replays un-acked records in order, acked ones never again, same batch after reopen', async () => {
  const dir = await tmp();
  const { log } = captureLog();
  let s = await Spool.open(opts(dir, log, { segmentBytes: 32 * 1024 }));
  for (let i = 0; i < 1000; i++) s.append(lines(i, 1), 1);
  await s.flush();
  const first: number[] = [];
  while (first.length < 400) {
    const b = await s.nextBatch(Math.min(100, 400 - first.length));
    first.push(...ids(b!.payload));
    await s.ack(b!.id);
  }
  assert.deepEqual(first, range(0, 399));
  const inflight = (await s.nextBatch(100))!;
  const inflightEnd = 400 + inflight.records - 1; // a batch may end early at a segment end
  assert.deepEqual(ids(inflight.payload), range(400, inflightEnd));
  await s.close(); // not acked

  s = await Spool.open(opts(dir, log));
  assert.equal(s.stats().recoveredRecords, 600);
  const again = (await s.nextBatch(100))!;
  assert.equal(again.id, inflight.id, 'same batch id after reopen');
  assert.ok(again.payload.equals(inflight.payload), 'same payload after reopen');
  assert.equal(again.firstAppendedAt, inflight.firstAppendedAt);
  s.release(again.id);
  const third = (await s.nextBatch(100))!;
  assert.equal(third.id, inflight.id);
  await s.ack(third.id);
  assert.deepEqual(await drainAll(s, 77), range(inflightEnd + 1, 999));
  balance(s);
  await s.close();

  s = await Spool.open(opts(dir, log));
  assert.equal(s.stats().recoveredRecords, 0);
  assert.equal(await s.nextBatch(100), undefined, 'nothing acked comes back');
  s.append(lines(1000, 5), 5);
  assert.deepEqual(await drainAll(s), range(1000, 1004));
  await s.close();
  await rm(dir, { recursive: true });
});

test('a short batch cut at the end of the data comes back identical after restart, even with more data behind it', async () => {
  const dir = await tmp();
  const { log } = captureLog();
  let s = await Spool.open(opts(dir, log));
  s.append(lines(0, 30), 30);
  const b = (await s.nextBatch(100))!;
  assert.deepEqual(ids(b.payload), range(0, 29));
  s.append(lines(30, 50), 50); // same segment, right behind the batch
  await s.flush();
  await s.close();
  s = await Spool.open(opts(dir, log));
  s.append(lines(80, 20), 20);
  const again = (await s.nextBatch(100))!;
  assert.equal(again.id, b.id, 'the persisted boundary wins over the larger limit');
  assert.ok(again.payload.equals(b.payload));
  await s.ack(again.id);
  assert.deepEqual(await drainAll(s), range(30, 99));
  await s.close();
  await rm(dir, { recursive: true });
});

test('release gives the same batch back; a smaller nextBatch after release splits it (413 path)', async () => {
  const dir = await tmp();
  const { log } = captureLog();
  const s = await Spool.open(opts(dir, log));
  s.append(lines(0, 300), 300);
  const b = (await s.nextBatch(100))!;
  assert.deepEqual(ids(b.payload), range(0, 99));
  await assert.rejects(s.nextBatch(100), (e: unknown) => isSidekickError(e, 'SK_ERR_SPOOL_BUSY'));
  s.release(b.id);
  const b2 = (await s.nextBatch(100))!;
  assert.equal(b2.id, b.id);
  assert.ok(b2.payload.equals(b.payload));
  s.release(b2.id);
  const b3 = (await s.nextBatch(500))!; // larger limits: still the same batch, not a bigger one
  assert.equal(b3.id, b.id);
  assert.equal(b3.records, 100);
  s.release(b3.id);

  const half = (await s.nextBatch(50))!;
  assert.notEqual(half.id, b.id, 'a re-cut range gets a new id');
  assert.deepEqual(ids(half.payload), range(0, 49));
  await s.ack(half.id);
  const rest = (await s.nextBatch(100))!;
  assert.deepEqual(ids(rest.payload), range(50, 149));
  await s.ack(rest.id);

  const byBytes = (await s.nextBatch(100, 2 * LINE_BYTES + 10))!;
  assert.deepEqual(ids(byBytes.payload), [150, 151], 'maxBytes caps the batch');
  await s.ack(byBytes.id);
  const tiny = (await s.nextBatch(100, 10))!;
  assert.deepEqual(ids(tiny.payload), [152], 'at least one record, even over maxBytes');
  await s.ack(tiny.id);
  assert.deepEqual(await drainAll(s), range(153, 299));
  balance(s);
  await s.close();
  await rm(dir, { recursive: true });
});

test('torn tail and flipped bytes are detected, counted, skipped; the good frames around them survive', async () => {
  const dir = await tmp();
  const { log, lines: logLines } = captureLog();
  let s = await Spool.open(opts(dir, log));
  // 10 frames of 10 records each: one append + flush per frame gives a known layout
  for (let f = 0; f < 10; f++) {
    s.append(lines(f * 10, 10), 10);
    await s.flush();
  }
  await s.close();
  const FRAME = 28 + 10 * LINE_BYTES;
  const data = (await segFiles(dir)).map((n) => join(dir, n));
  const sizes = await Promise.all(data.map(async (p) => (await stat(p)).size));
  const segPath = data[sizes.indexOf(10 * FRAME)]!;
  assert.ok(segPath, 'one segment holds the 10 frames');
  const bytes = await readFile(segPath);
  flip(bytes, 3 * FRAME + 28 + 50, 0x40); // frame 3: payload bit flip -> payload CRC fails
  flip(bytes, 6 * FRAME + 5, 0x01); // frame 6: header length bit flip -> header CRC fails, resync
  await writeFile(segPath, bytes);
  await truncate(segPath, 9 * FRAME + 1000); // frame 9: torn mid-frame

  s = await Spool.open(opts(dir, log));
  assert.equal(s.stats().recoveredRecords, 80, 'frames 0-5, 7, 8 have valid headers');
  s.append(lines(100, 5), 5); // new data after the damage
  const got = await drainAll(s, 33);
  assert.deepEqual(got, [...range(0, 29), ...range(40, 59), ...range(70, 89), ...range(100, 104)]);
  const st = s.stats();
  assert.equal(st.corruptFrames, 3);
  assert.equal(st.corruptBytes, FRAME + FRAME + 1000);
  assert.equal(st.corruptRecords, 10, 'records of the frame with a valid header are known lost');
  balance(s);
  assert.ok(
    logLines.some((l) => l.code === 'SK_ERR_SPOOL_CORRUPT'),
    'logged with its code',
  );
  await s.close();

  // no crash loop, no re-count: the damage is behind the ack position now
  s = await Spool.open(opts(dir, log));
  assert.equal(await s.nextBatch(100), undefined);
  assert.equal(s.stats().corruptFrames, 0);
  await s.close();
  await rm(dir, { recursive: true });
});

test('damage inside the batch in flight: the batch stops before it, the rest survives', async () => {
  const dir = await tmp();
  const { log } = captureLog();
  let s = await Spool.open(opts(dir, log));
  for (let f = 0; f < 4; f++) {
    s.append(lines(f * 10, 10), 10);
    await s.flush();
  }
  await s.close();
  const FRAME = 28 + 10 * LINE_BYTES;
  const segPath = join(dir, (await segFiles(dir))[0]!);
  const bytes = await readFile(segPath);
  flip(bytes, 2 * FRAME + 28 + 7, 0xff);
  await writeFile(segPath, bytes);
  s = await Spool.open(opts(dir, log));
  const b = (await s.nextBatch(1000))!;
  assert.deepEqual(ids(b.payload), range(0, 19), 'a batch never includes a frame past a corrupt one');
  await s.ack(b.id);
  assert.deepEqual(await drainAll(s), range(30, 39));
  assert.equal(s.stats().corruptFrames, 1);
  balance(s);
  await s.close();
  await rm(dir, { recursive: true });
});

test('kill -9 of an appending child: every record it reported flushed is there exactly once', async (t) => {
  const dir = await tmp();
  const childPath = join(dir, 'child.mjs');
  await writeFile(
    childPath,
    `
import { Spool } from ${JSON.stringify(join(REPO, 'src/agent/queue/spool.ts'))};
const dir = process.argv[2];
const s = await Spool.open({ dir, maxBytes: 1 << 30, segmentBytes: 128 * 1024, syncIntervalMs: 20 });
const out = (m) => process.stdout.write(m + '\\n');
const line = (i) => { const h = '{"i":' + i + ',"p":"'; return h + 'x'.repeat(${LINE_BYTES} - h.length - 3) + '"}\\n'; };
const last = (payload) => JSON.parse(payload.toString().trimEnd().split('\\n').pop()).i;
const first = (payload) => JSON.parse(payload.toString().split('\\n')[0]).i;
out('ready');
(async () => {
  for (;;) {
    const b = await s.nextBatch(1 + Math.floor(Math.random() * 200));
    if (!b) { await new Promise((r) => s.once('data', r)); continue; }
    out('batch ' + b.id + ' ' + first(b.payload) + ' ' + last(b.payload));
    await new Promise((r) => setImmediate(r));
    out('acking ' + last(b.payload));
    await s.ack(b.id);
    out('acked ' + last(b.payload));
  }
})();
let next = 0;
for (let round = 1; ; round++) {
  for (let k = 0; k < 40; k++) {
    const n = 1 + Math.floor(Math.random() * 20);
    let text = '';
    for (let j = 0; j < n; j++) text += line(next + j);
    s.append(Buffer.from(text), n);
    next += n;
  }
  if (round % 4 === 0) { const upto = next - 1; await s.flush(); out('flushed ' + upto); }
  else await new Promise((r) => setImmediate(r));
}
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', childPath, join(dir, 'spool')], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, SIDEKICK_LOG_LEVEL: 'error' },
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  const enough = new Promise<void>((resolveEnough, reject) => {
    child.stdout.on('data', (d: string) => {
      out += d;
      const m = out.match(/flushed (\d+)\n/g);
      if (m && m.length >= 25) resolveEnough();
    });
    child.once('exit', (code) => reject(new Error(`child exited early (${code}): ${out.slice(-500)}`)));
  });
  await enough;
  // while it lives, its lock is respected
  const { log, lines: logLines } = captureLog();
  await assert.rejects(Spool.open(opts(join(dir, 'spool'), log)), (e: unknown) =>
    isSidekickError(e, 'SK_ERR_SPOOL_LOCKED'),
  );
  const closed = once(child, 'close'); // after exit and after its stdout is fully read
  child.kill('SIGKILL');
  await closed;

  const nums = (re: RegExp): number[] => [...out.matchAll(re)].map((m) => Number(m[1]));
  const lastFlushed = Math.max(...nums(/^flushed (\d+)$/gm));
  const lastAcked = Math.max(-1, ...nums(/^acked (\d+)$/gm));
  const lastAcking = Math.max(-1, ...nums(/^acking (\d+)$/gm));
  const batches = [...out.matchAll(/^batch (\S+) (\d+) (\d+)$/gm)];
  const lastBatch = batches[batches.length - 1];

  const s = await Spool.open(opts(join(dir, 'spool'), log)); // dead owner: stale lock taken over
  assert.ok(logLines.some((l) => String(l.msg).includes('stale spool lock')));
  const firstBatch = await s.nextBatch(1000);
  const got = firstBatch ? ids(firstBatch.payload) : [];
  if (firstBatch) await s.ack(firstBatch.id);
  got.push(...(await drainAll(s, 500)));
  const start = got.length > 0 ? got[0]! : lastAcking + 1;
  assert.ok(start === lastAcked + 1 || start === lastAcking + 1, `resumes after the acked records (${start})`);
  assert.deepEqual(got, range(start, start + got.length - 1), 'in order, no gap, no duplicate');
  assert.ok(start + got.length - 1 >= lastFlushed, `every flushed record present (${lastFlushed})`);
  const inflightAtKill = lastBatch && Number(lastBatch[3]) > lastAcked && Number(lastBatch[2]) === start;
  if (inflightAtKill) {
    assert.equal(firstBatch?.id, lastBatch[1], 'the batch in flight at the kill comes back with the same id');
  }
  t.diagnostic(
    `flushed<=${lastFlushed} acked<=${lastAcked} recovered ${start}..${start + got.length - 1} ` +
      `corruptFrames=${s.stats().corruptFrames} inflightAtKill=${Boolean(inflightAtKill)}`,
  );
  balance(s);
  await s.close();
  await rm(dir, { recursive: true });
});

test('size cap: oldest dropped and counted, totals balance; batch in flight still ackable', async () => {
  const dir = await tmp();
  const { log, lines: logLines } = captureLog();
  const maxBytes = 64 * 1024;
  const s = await Spool.open(opts(dir, log, { maxBytes, segmentBytes: 16 * 1024, syncIntervalMs: 0 }));
  s.append(lines(0, 50), 50);
  const inflight = (await s.nextBatch(20))!;
  assert.deepEqual(ids(inflight.payload), range(0, 19));
  for (let i = 50; i < 2000; i += 10) {
    s.append(lines(i, 10), 10);
    if (i % 100 === 0) await s.flush();
  }
  await s.flush();
  await s.ack(inflight.id); // delivered while its segment was dropped: counts as acked, not dropped
  const st = s.stats();
  assert.ok(st.droppedRecords > 0 && st.droppedBatches > 0, JSON.stringify(st));
  assert.ok(st.diskBytes <= maxBytes, `disk ${st.diskBytes} <= cap`);
  assert.equal(st.ackedRecords, 20);
  balance(s);
  const got = await drainAll(s);
  assert.ok(got[0]! > 20, 'the oldest data went first');
  assert.deepEqual(got, range(got[0]!, 1999), 'what is left is the newest, in order');
  const end = s.stats();
  assert.equal(end.pendingRecords, 0);
  assert.equal(end.appendedRecords, end.ackedRecords + end.droppedRecords);
  balance(s);
  assert.ok(logLines.some((l) => l.code === 'SK_ERR_SPOOL_FULL'));
  await s.close();
  await rm(dir, { recursive: true });
});

test('size cap: a released batch whose segment was dropped is dropped, counted', async () => {
  const dir = await tmp();
  const { log } = captureLog();
  const s = await Spool.open(opts(dir, log, { maxBytes: 64 * 1024, segmentBytes: 16 * 1024, syncIntervalMs: 0 }));
  s.append(lines(0, 30), 30);
  const b = (await s.nextBatch(30))!;
  for (let i = 30; i < 1000; i += 10) s.append(lines(i, 10), 10);
  await s.flush();
  await assert.rejects(s.nextBatch(10), (e: unknown) => isSidekickError(e, 'SK_ERR_SPOOL_BUSY'));
  const before = s.stats().droppedRecords;
  s.release(b.id);
  assert.equal(s.stats().droppedRecords, before + 30);
  const got = await drainAll(s);
  assert.deepEqual(got, range(got[0]!, 999));
  balance(s);
  await s.close();
  await rm(dir, { recursive: true });
});

test('lock: a live holder is refused; stale, own-pid-leftover and unreadable locks are taken over', async () => {
  const dir = await tmp();
  const { log, lines: logLines } = captureLog();
  const s = await Spool.open(opts(dir, log));
  await assert.rejects(Spool.open(opts(dir, log)), (e: unknown) => {
    assert.ok(isSidekickError(e, 'SK_ERR_SPOOL_LOCKED'));
    assert.match(e.message, new RegExp(`process ${process.pid}`));
    return true;
  });
  await s.close();
  assert.ok(!(await readdir(dir)).includes('LOCK'), 'close removes the lock');

  // a live other process
  const sleeper = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  await once(sleeper, 'spawn');
  const start = processStartTime(sleeper.pid!);
  await writeFile(join(dir, 'LOCK'), JSON.stringify({ pid: sleeper.pid, ...(start ? { start } : {}) }));
  await assert.rejects(Spool.open(opts(dir, log)), (e: unknown) => isSidekickError(e, 'SK_ERR_SPOOL_LOCKED'));
  const exited = once(sleeper, 'exit');
  sleeper.kill('SIGKILL');
  await exited;
  // ...now dead: taken over
  let t = await Spool.open(opts(dir, log));
  assert.ok(logLines.some((l) => String(l.msg).includes(`dead pid ${sleeper.pid}`)));
  await t.close();

  // our own pid, but not held by this process (a previous incarnation in a container, same pid)
  await writeFile(join(dir, 'LOCK'), JSON.stringify({ pid: process.pid }));
  t = await Spool.open(opts(dir, log));
  await t.close();
  // a recycled pid: alive, but another process (different start time) -> stale
  if (start !== undefined) {
    await writeFile(join(dir, 'LOCK'), JSON.stringify({ pid: process.pid === 1 ? 2 : 1, start: 'not-the-same' }));
    t = await Spool.open(opts(dir, log));
    await t.close();
  }
  // unreadable (e.g. zeroed after power loss)
  await writeFile(join(dir, 'LOCK'), Buffer.alloc(16));
  t = await Spool.open(opts(dir, log));
  await t.close();
  assert.deepEqual(
    (await readdir(dir)).filter((n) => n.startsWith('LOCK')),
    [],
    'no lock files or take-over leftovers remain',
  );
  await rm(dir, { recursive: true });
});

test('state files round-trip atomically, survive a reopen', async () => {
  const dir = await tmp();
  const { log } = captureLog();
  let s = await Spool.open(opts(dir, log));
  assert.equal(await s.readState('breaker'), undefined);
  await s.writeState('breaker', { state: 'open', openedAt: 123 });
  await Promise.all([s.writeState('x', 1), s.writeState('x', 2), s.writeState('x', 3)]);
  assert.deepEqual(await s.readState('breaker'), { state: 'open', openedAt: 123 });
  assert.equal(await s.readState('x'), 3, 'writes to one name are applied in call order');
  await assert.rejects(s.readState('../evil'), RangeError);
  await assert.rejects(s.writeState('a/b', 1), RangeError);
  await s.close();
  s = await Spool.open(opts(dir, log));
  assert.deepEqual(await s.readState('breaker'), { state: 'open', openedAt: 123 });
  await writeFile(join(dir, 'state-broken.json'), '{"half');
  assert.equal(await s.readState('broken'), undefined, 'an unreadable state file reads as absent');
  await s.close();
  assert.deepEqual(
    (await readdir(dir)).filter((n) => n.endsWith('.tmp')),
    [],
  );
  await rm(dir, { recursive: true });
});

test('crash between ledger write and segment delete, in either order, recovers without loss or replay', async () => {
  const { log } = captureLog();
  const small = { segmentBytes: 4096 }; // ~20 records per segment

  // (a) ledger moved past segment 1, crash before its file was deleted: the leftover is deleted, not replayed
  let dir = await tmp();
  let s = await Spool.open(opts(dir, log, small));
  await appendFrames(s, 0, 100, 5);
  const seg1 = join(dir, (await segFiles(dir))[0]!);
  await copyFile(seg1, `${seg1}.copy`);
  let got: number[] = [];
  while (got.length < 50) {
    const b = (await s.nextBatch(Math.min(10, 50 - got.length)))!;
    got.push(...ids(b.payload));
    await s.ack(b.id);
  }
  await s.close();
  assert.ok(!(await readdir(dir)).includes(seg1.split('/').pop()!), 'segment 1 was deleted once acked');
  await copyFile(`${seg1}.copy`, seg1);
  await rm(`${seg1}.copy`);
  s = await Spool.open(opts(dir, log, small));
  assert.deepEqual(await drainAll(s), range(50, 99));
  assert.ok(!(await readdir(dir)).includes(seg1.split('/').pop()!));
  await s.close();
  await rm(dir, { recursive: true });

  // (b) segment 1 deleted, crash before the ledger said so: start at the oldest segment that exists
  dir = await tmp();
  s = await Spool.open(opts(dir, log, small));
  await appendFrames(s, 0, 100, 5);
  await s.close();
  const files = await segFiles(dir);
  assert.ok(files.length > 3);
  const lost = ((await stat(join(dir, files[0]!))).size / (28 + 5 * LINE_BYTES)) * 5;
  await rm(join(dir, files[0]!));
  s = await Spool.open(opts(dir, log, small));
  got = await drainAll(s);
  assert.deepEqual(got, range(lost, 99));
  balance(s);
  await s.close();
  await rm(dir, { recursive: true });

  // (c) both ledger slots destroyed: replay everything (duplicates possible, loss impossible)
  dir = await tmp();
  s = await Spool.open(opts(dir, log, small));
  await appendFrames(s, 0, 100, 5);
  const b = (await s.nextBatch(30))!;
  await s.ack(b.id);
  await s.close();
  await writeFile(join(dir, 'ledger'), randomBytes(1024));
  s = await Spool.open(opts(dir, log, small));
  got = await drainAll(s);
  assert.equal(got[got.length - 1], 99);
  assert.deepEqual(got, range(got[0]!, 99));
  assert.ok(got[0]! <= 30, 'nothing unacked is skipped');
  await s.close();

  // (d) the newest ledger slot torn: the older slot is used; nothing unacked is lost
  s = await Spool.open(opts(dir, log, small));
  await appendFrames(s, 100, 100, 5);
  for (let k = 0; k < 3; k++) {
    const x = (await s.nextBatch(10))!;
    await s.ack(x.id);
  }
  await s.close();
  const ledger = await readFile(join(dir, 'ledger'));
  const gen0 = ledger.readDoubleLE(8);
  const gen1 = ledger.readDoubleLE(512 + 8);
  flip(ledger, (gen0 > gen1 ? 0 : 512) + 30, 0xff);
  await writeFile(join(dir, 'ledger'), ledger);
  s = await Spool.open(opts(dir, log, small));
  got = await drainAll(s);
  assert.deepEqual(got, range(got[0]!, 199));
  assert.ok(got[0]! <= 130);
  await s.close();
  await rm(dir, { recursive: true });
});

test('random damage anywhere (truncate, bit flips, zeroed blocks): open never fails, order holds, intact prefix survives', async (t) => {
  const { random, seed } = seeded(t);
  const { log } = captureLog();
  const FRAME = 28 + 7 * LINE_BYTES;
  const N = 7 * 60;
  let totalSkipped = 0;
  for (let round = 0; round < 25; round++) {
    const dir = await tmp();
    let s = await Spool.open(opts(dir, log, { segmentBytes: 5 * FRAME }));
    await appendFrames(s, 0, N, 7); // 60 frames of 7 records, 5 frames per segment
    await s.close();
    const files = (await segFiles(dir)).map((n) => join(dir, n));
    // damage 1-3 random places in random segments
    let firstDamage = Number.POSITIVE_INFINITY; // as a global record index: frames before it must survive
    const damages = 1 + Math.floor(random() * 3);
    for (let d = 0; d < damages; d++) {
      const fi = Math.floor(random() * files.length);
      const path = files[fi]!;
      const size = (await stat(path)).size;
      if (size === 0) continue;
      const at = Math.floor(random() * size);
      const kind = Math.floor(random() * 3);
      if (kind === 0) await truncate(path, at);
      else {
        const b = await readFile(path);
        if (kind === 1) for (let k = 0; k < 3; k++) flip(b, Math.min(size - 1, at + k * 17), 1 << (k + 2));
        else b.fill(0, at, Math.min(size, at + 4096));
        await writeFile(path, b);
      }
      firstDamage = Math.min(firstDamage, fi * 5 * 7 + Math.floor(at / FRAME) * 7);
    }
    s = await Spool.open(opts(dir, log)); // must not throw
    const got = await drainAll(s, 50);
    const where = `round ${round}, seed ${seed} (replay with SK_TEST_SEED=${seed})`;
    for (let k = 1; k < got.length; k++)
      assert.ok(got[k]! > got[k - 1]!, `strictly increasing: in order, no duplicate; ${where}`);
    const intact = range(0, Math.min(N, firstDamage) - 1);
    assert.deepEqual(
      got.slice(0, intact.length),
      intact,
      `everything before the first damaged frame survives; ${where}`,
    );
    balance(s);
    totalSkipped += N - got.length;
    await s.close();
    // and the damage is behind us: a second open is clean
    s = await Spool.open(opts(dir, log));
    assert.equal(await s.nextBatch(10), undefined);
    await s.close();
    await rm(dir, { recursive: true });
  }
  t.diagnostic(`records lost to injected damage over 25 rounds: ${totalSkipped}`);
});

test('unwritten-data cap: append reports back-pressure, then the oldest unwritten frames are dropped, counted', async () => {
  const dir = await tmp();
  const { log, lines: logLines } = captureLog();
  const s = await Spool.open(opts(dir, log, { maxBufferedBytes: 256 * 1024 }));
  let refused = 0;
  const drained = once(s, 'drain');
  for (let i = 0; i < 5000; i += 10) if (!s.append(lines(i, 10), 10)) refused++; // no yield: the writer cannot run
  assert.ok(refused > 0, 'append returned false past the high-water mark');
  assert.ok(s.stats().bufferedBytes <= 256 * 1024 + 64 * 1024 + 28);
  await drained;
  const got = await drainAll(s);
  const st = s.stats();
  assert.ok(st.droppedRecords > 0);
  assert.equal(got.length + st.droppedRecords, 5000);
  for (let k = 1; k < got.length; k++) assert.ok(got[k]! > got[k - 1]!);
  assert.equal(got[got.length - 1], 4999, 'the newest survive');
  balance(s);
  assert.ok(logLines.some((l) => l.code === 'SK_ERR_SPOOL_FULL'));
  await s.close();
  await rm(dir, { recursive: true });
});

test('spool directory replaced before the check: segments the writer rolled into the new directory are read back once, never also recovered', async () => {
  // Removed and recreated empty (a cleanup job; or the spool's own rebuild, whose mkdir a writer roll could beat its
  // pause to): until the check notices, the writer's rolls open seg-<n> by path, i.e. in the new directory. The
  // rebuild used to recover those files from the new directory AND read the write segment back through its open
  // file: the same records twice, under two batch ids (agent-spool-dir "rm -rf, central down" under load).
  const dir = join(await tmp(), 'spool');
  const { log, lines: logLines } = captureLog();
  const s = await Spool.open(opts(dir, log, { segmentBytes: 4096, syncIntervalMs: 0 }));
  await appendFrames(s, 0, 40, 10); // seg 1: 0-19, seg 2: 20-39 (two 10-record frames per 4 KiB segment)
  await rename(dir, `${dir}.removed`);
  await rm(`${dir}.removed`, { recursive: true });
  await mkdir(dir);
  await appendFrames(s, 40, 60, 10); // rolled into the new directory: 40-59, 60-79 (closed), 80-99 (write segment)
  assert.deepEqual(await segFiles(dir), [3, 4, 5].map(segmentName), 'the writer rolled into the new directory');
  // the reader opens segment 1 by path: ENOENT, the directory check fails, the rebuild runs before the next call
  await assert.rejects(s.nextBatch(100), { code: 'ENOENT' });
  const got = await drainAll(s);
  assert.equal(new Set(got).size, got.length, `no record handed out twice: ${got.join(',')}`);
  assert.deepEqual(got, range(40, 99), 'what the writer put into the new directory, once, in order');
  const st = s.stats();
  assert.equal(st.dirLost, 1);
  assert.equal(st.removedDroppedRecords, 40, 'the closed segments of the removed directory, counted');
  assert.equal(st.recoveredRecords, 0, 'nothing of its own recovered a second time from the new directory');
  balance(s);
  const removed = logLines.find((l) => l.code === 'SK_ERR_SPOOL_REMOVED' && l.level === 50);
  assert.ok(removed, 'SK_ERR_SPOOL_REMOVED logged');
  assert.equal(removed.salvagedRecords, 60);
  await s.close();
  // and a restart finds nothing twice either
  const again = await Spool.open(opts(dir, log));
  assert.deepEqual(await drainAll(again), []);
  await again.close();
});

test("spool directory replaced by one holding a same-name segment file that is not the spool's: recovered as found, never read back or removed as its own", async () => {
  // e.g. a filesystem with an older spool mounted over the directory: only files this process created (same device
  // and inode) are its segments; a file that merely has the name of one is what recovery finds there.
  const dir = join(await tmp(), 'spool');
  const { log } = captureLog();
  const s = await Spool.open(opts(dir, log, { segmentBytes: 4096, syncIntervalMs: 0 }));
  await appendFrames(s, 0, 40, 10); // seg 1: 0-19, seg 2: 20-39
  await rename(dir, `${dir}.removed`);
  await mkdir(dir);
  await copyFile(join(`${dir}.removed`, segmentName(2)), join(dir, segmentName(2))); // the same name, another file
  await rm(`${dir}.removed`, { recursive: true });
  await appendFrames(s, 40, 20, 10); // seg 3 (40-59), in the new directory: the spool's own
  await assert.rejects(s.nextBatch(100), { code: 'ENOENT' });
  assert.deepEqual(await drainAll(s), [...range(20, 39), ...range(40, 59)]);
  const st = s.stats();
  assert.equal(st.recoveredRecords, 20, 'the other file, recovered from the new directory');
  assert.equal(st.salvagedRecords, 20, 'its own segment 3, read back once');
  assert.equal(st.removedDroppedRecords, 40, 'segments 1 and 2 of the removed directory, counted');
  await s.close();
});
