// Crashes and the spool: SIGKILL with a backlog then replay, SIGKILL mid-delivery (duplicates only under the same
// batch id), a torn and corrupted spool segment, and the spool size cap. Counts balance in every test.
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  balance,
  dedupedByBatchId,
  keysOf,
  record,
  sendLoad,
  sendOnce,
  waitFor,
  type AgentProcess,
} from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';

async function spoolSettled(agent: AgentProcess, spooled: number): Promise<void> {
  await waitFor(async () => {
    const s = await agent.status();
    const sp = s.pipeline?.spool as { bufferedBytes?: number } | undefined;
    return s.counters.spooled === spooled && sp?.bufferedBytes === 0;
  }, `${spooled} records written to the spool`);
}

test('SIGKILL with a non-empty spool: the restarted agent replays the backlog in order, nothing lost', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const port = await scope.deadPort();
  scope.writeConfig({
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest`, timeoutMs: 10_000 },
    breaker: { failures: 2, halfOpenAfterMs: 200 },
    batch: { maxInFlight: 1 }, // strict arrival order, checked per connection below
  });
  let agent = await scope.startAgent();
  const sent = await sendLoad(join(dir, 'agent.sock'), { connections: 4, count: 250, prefix: 'k' });
  await spoolSettled(agent, 1000);
  await agent.crash();
  const central = await scope.startCentral(() => ({ status: 200 }), port);
  agent = await scope.startAgent(); // the stale socket left by the crash is probed and replaced
  const s0 = await agent.status();
  assert.equal(s0.pipeline?.spool?.recoveredRecords, 1000);
  await waitFor(() => central.delivered.length >= 1000, 'the backlog to be delivered', 20_000);
  const b = balance(sent, keysOf(central.delivered));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0, 'nothing had been delivered before the crash: no duplicates');
  for (let c = 0; c < 4; c++) {
    const mine: string[] = keysOf(central.delivered).filter((k) => k.startsWith(`k-${c}-`));
    assert.deepEqual(
      mine,
      sent.filter((k) => k.startsWith(`k-${c}-`)),
      `connection ${c} in order`,
    );
  }
  assert.equal((await agent.stop()).code, 0);
});

test('SIGKILL mid-delivery: after restart every record arrives; repeats only under an already-seen batch id', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const central = await scope.startCentral(() => ({ status: 200, delayMs: 30 }));
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs: 10_000 },
    batch: { maxRecords: 20, maxDelayMs: 50 },
  });
  let agent = await scope.startAgent();
  const sent = await sendLoad(join(dir, 'agent.sock'), { connections: 2, count: 500, prefix: 'd' });
  await spoolSettled(agent, 1000);
  await waitFor(() => central.delivered.length >= 200, 'some batches delivered');
  await agent.crash();
  const before = central.delivered.length;
  assert.ok(before < 1000, 'crashed mid-delivery');
  central.reply = () => ({ status: 200 });
  agent = await scope.startAgent();
  await waitFor(() => new Set(keysOf(central.delivered)).size === 1000, 'all records delivered', 20_000);
  const b = balance(sent, keysOf(dedupedByBatchId(central)));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0, 'central deduping on X-Sidekick-Batch-Id sees each record once');
  assert.equal((await agent.stop()).code, 0);
});

/** Frames of a segment file: [offset, payloadLength, records]. */
function frames(buf: Buffer): [number, number, number][] {
  const out: [number, number, number][] = [];
  let off = 0;
  while (off + 28 <= buf.length && buf.readUInt32LE(off) === 0x314b53f5) {
    const len = buf.readUInt32LE(off + 4);
    out.push([off, len, buf.readUInt32LE(off + 8)]);
    off += 28 + len;
  }
  return out;
}

test('a torn tail and a corrupted frame: the agent starts, skips and counts them, delivers the rest', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const port = await scope.deadPort();
  scope.writeConfig({
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest`, timeoutMs: 10_000 },
    breaker: { failures: 2, halfOpenAfterMs: 200 },
  });
  let agent = await scope.startAgent();
  const sent: string[] = [];
  for (let f = 0; f < 5; f++) {
    const keys = Array.from({ length: 40 }, (_, i) => `f${f}-${i}`);
    sent.push(...keys);
    await sendOnce(join(dir, 'agent.sock'), keys.map((k) => record(k)).join(''));
    await spoolSettled(agent, sent.length); // one frame per send
  }
  await agent.crash();
  const spoolDir = join(dir, 'spool');
  const seg = readdirSync(spoolDir)
    .filter((n) => n.startsWith('seg-'))
    .sort()
    .map((n) => join(spoolDir, n))
    .find((p) => frames(readFileSync(p)).length >= 3)!;
  const buf = readFileSync(seg);
  const fr = frames(buf);
  const [off, len, lost] = fr[1]!;
  const lostKeys = keysOf(
    buf
      .subarray(off + 28, off + 28 + len)
      .toString('utf8')
      .split('\n')
      .filter((l) => l.length > 0),
  );
  const at = off + 28 + Math.floor(len / 2);
  buf[at] = buf[at]! ^ 0xff; // flip a payload byte of the 2nd frame
  writeFileSync(seg, buf);
  appendFileSync(seg, buf.subarray(fr[0]![0], fr[0]![0] + 28 + 100)); // a torn frame at the tail
  const central = await scope.startCentral(() => ({ status: 200 }), port);
  agent = await scope.startAgent();
  await waitFor(async () => (await agent.status()).gauges.spoolRecords === 0, 'the spool to drain', 20_000);
  // One more record makes the reader walk past the torn tail of the old segment to the new one.
  sent.push('after-0');
  await sendOnce(join(dir, 'agent.sock'), record('after-0'));
  await waitFor(() => keysOf(central.delivered).includes('after-0'), 'a record sent after the restart');
  const s = await agent.status();
  assert.equal(s.counters.dropped.spool_corrupt, lost, 'records of the corrupt frame counted as dropped');
  assert.ok(s.counters.spoolCorruptFrames >= 2, 'the corrupt frame and the torn tail are both counted');
  const b = balance(sent, keysOf(central.delivered), [], lost);
  assert.equal(b.missing.length, lost);
  assert.deepEqual(b.missing.sort(), lostKeys.sort(), 'exactly the corrupt frame is missing');
  assert.equal(b.duplicates, 0);
  await waitFor(
    () => agent.logs().some((l) => l.code === 'SK_ERR_SPOOL_CORRUPT'),
    'SK_ERR_SPOOL_CORRUPT logged',
    10_000,
  );
  assert.equal((await agent.stop()).code, 0);
});

test('spool cap: the oldest data is dropped and counted; delivered + dropped = sent', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const port = await scope.deadPort();
  scope.writeConfig({
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest`, timeoutMs: 10_000 },
    spool: { maxBytes: 128 * 1024, segmentBytes: 16 * 1024 },
    breaker: { failures: 2, halfOpenAfterMs: 300 },
  });
  const agent = await scope.startAgent();
  const sent: string[] = [];
  for (let round = 0; round < 10; round++) {
    const keys = Array.from({ length: 200 }, (_, i) => `c${round}-${String(i).padStart(3, '0')}`);
    sent.push(...keys);
    await sendOnce(join(dir, 'agent.sock'), keys.map((k) => record(k)).join(''));
  }
  // The cap is enforced in whole segments; a segment holds at least one write-buffer frame (≤ 64 KiB).
  await waitFor(async () => {
    const s = await agent.status();
    const disk = (s.pipeline?.spool as { diskBytes?: number } | undefined)?.diskBytes ?? Infinity;
    return s.counters.spooled === 2000 && s.counters.dropped.spool_full > 0 && disk <= 128 * 1024 + 64 * 1024 + 28;
  }, 'the spool cap to drop data and hold the disk usage near the cap');
  const central = await scope.startCentral(() => ({ status: 200 }), port);
  const s = await waitFor(
    async () => {
      const st = await agent.status();
      return st.gauges.spoolRecords === 0 && st;
    },
    'the rest to be delivered',
    20_000,
  );
  const dropped = s.counters.dropped.spool_full;
  const b = balance(sent, keysOf(central.delivered), [], dropped);
  assert.equal(b.duplicates, 0);
  assert.equal(b.missing.length, dropped, 'sent = delivered + dropped(spool_full)');
  assert.deepEqual(b.missing, sent.slice(0, dropped), 'the oldest records are the ones dropped');
  assert.equal(s.counters.exported + dropped, 2000);
  await waitFor(() => agent.logs().some((l) => l.code === 'SK_ERR_SPOOL_FULL'), 'SK_ERR_SPOOL_FULL logged', 10_000);
  assert.equal((await agent.stop()).code, 0);
});
