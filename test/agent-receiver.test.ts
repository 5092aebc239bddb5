// The Unix socket receiver's read coalescing (agent.ingest.coalesceMs) on a real socket: every line arrives, in
// order, many per read; a connection napping when the memory budget runs out and recovers still reads to the end;
// control lines (hello → state line, bye) go only to clients that said hello; unfinished lines keep to their share of
// the memory budget (one connection read at a time past it). Paced turns (the agent worker's way): every line in
// order, the thread sleeps after trickling turns only, never during bulk reads.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { pino } from 'pino';
import { MemoryBudget } from '../src/agent/worker/memory-budget.ts';
import { HELLO_LINE } from '../src/agent/receivers/control.ts';
import { UnixSocketReceiver } from '../src/agent/receivers/unix-socket.ts';
import { waitFor } from './helpers/agent.ts';

const dir = mkdtempSync(join(tmpdir(), 'sk-recv-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

async function start(coalesceMs: number, budget = new MemoryBudget(64 * 1024 * 1024), pacedTurns = false) {
  const got: string[] = [];
  let appends = 0;
  let turns = 0;
  const receiver = new UnixSocketReceiver({
    maxRecordBytes: 1024 * 1024,
    coalesceMs,
    pacedTurns,
    budget,
    log: pino({ level: 'silent' }),
    sink: {
      append: (lines) => {
        appends++;
        got.push(...lines.toString('utf8').split('\n').filter(Boolean));
      },
      turnDone: () => void turns++,
      invalid: () => undefined,
      connection: () => undefined,
      clientDropped: () => undefined,
      truncated: () => undefined,
    },
  });
  const server = UnixSocketReceiver.createServer();
  receiver.attach(server);
  const path = join(dir, `r${n++}.sock`);
  server.listen(path);
  await once(server, 'listening');
  return {
    receiver,
    path,
    got,
    appends: () => appends,
    turns: () => turns,
    close: async () => {
      receiver.destroyAll();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Writes `count` lines in bursts of 10, one burst per millisecond (a busy host's one-record writes). */
async function trickle(sock: net.Socket, count: number): Promise<void> {
  for (let i = 0; i < count; i += 10) {
    for (let k = i; k < Math.min(count, i + 10); k++) sock.write(`{"i":${k}}\n`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

test('coalescing: every line arrives in order, many lines per read', async () => {
  const r = await start(5);
  try {
    const c = net.connect(r.path);
    await once(c, 'connect');
    await trickle(c, 2000);
    await waitFor(() => r.got.length === 2000, '2000 lines read');
    assert.deepEqual(
      r.got.map((l) => (JSON.parse(l) as { i: number }).i),
      Array.from({ length: 2000 }, (_, i) => i),
    );
    assert.ok(r.appends() < 2000 / 10, `fewer reads than bursts (${r.appends()} appends for 200 bursts)`);
    c.destroy();
  } finally {
    await r.close();
  }
});

test('a napping connection paused by the memory budget reads again after relief', async () => {
  const budget = new MemoryBudget(1000);
  const r = await start(20, budget);
  try {
    const c = net.connect(r.path);
    await once(c, 'connect');
    c.write('{"i":0}\n');
    await waitFor(() => r.got.length === 1, 'the first line (the connection then naps)');
    budget.add('inflight', 5000); // exhausted while napping: every connection is paused
    c.write('{"i":1}\n');
    await new Promise((res) => setTimeout(res, 60)); // past the nap
    budget.add('inflight', -5000); // relief
    await waitFor(() => r.got.length === 2, 'the line written during the nap and the pause');
    c.destroy();
  } finally {
    await r.close();
  }
});

test('the agent never writes to a client: not after a hello, not at the graceful stop (only its FIN)', async () => {
  const r = await start(0);
  try {
    const old = net.connect({ path: r.path, allowHalfOpen: true }); // an older client that still says hello
    await once(old, 'connect');
    let fromAgent = '';
    old.setEncoding('utf8').on('data', (d: string) => (fromAgent += d));
    old.write(HELLO_LINE + '{"q":1}\n');
    await waitFor(() => r.got.length === 1, 'the record after the hello (the hello itself is not a record)');
    const ended = once(old, 'end');
    const drained = r.receiver.drain(200, 2000);
    await ended; // the bye: a half-close
    old.write('{"q":2}\n'); // written after the bye, before our close: still read
    old.end();
    await drained;
    assert.equal(fromAgent, '', 'no byte written to the client');
    assert.deepEqual(r.got, ['{"q":1}', '{"q":2}']);
  } finally {
    await r.close();
  }
});

test('a short-lived client that exits right after writing: every line it wrote is read, also across a nap', async () => {
  const r = await start(300); // a long nap: the client's last lines wait unread in the kernel
  try {
    for (let i = 0; i < 20; i++) {
      const c = net.connect(r.path);
      await once(c, 'connect');
      c.write(HELLO_LINE);
      if (i % 2) await new Promise((res) => setTimeout(res, 5)); // the agent reads the hello alone, then naps
      // A PHP process exiting: its last record, then its fd closed for good.
      c.write(`{"last":${i}}\n`, () => c.destroy());
      await once(c, 'close');
    }
    await waitFor(() => r.got.length === 20, 'the 20 clients’ records', 10_000);
  } finally {
    await r.close();
  }
});

test('unfinished lines keep to their share of the budget: 50 connections × 100 KB half-lines, then finished; all delivered', async (t) => {
  // 1 MiB of budget: unfinished lines may hold 256 KiB; 50 × 100 KB would be 5 MB if every connection read on.
  const budget = new MemoryBudget(1024 * 1024);
  let peak = 0;
  const add = budget.add.bind(budget);
  budget.add = (pool, delta) => {
    add(pool, delta);
    peak = Math.max(peak, budget.pool('receiver'));
  };
  const r = await start(0, budget);
  const socks: net.Socket[] = [];
  t.after(async () => {
    for (const s of socks) s.destroy();
    await r.close();
  });
  for (let i = 0; i < 50; i++) {
    const s = net.connect(r.path);
    await once(s, 'connect');
    s.write(`{"i":${i},"pad":"${'z'.repeat(100_000)}`);
    socks.push(s);
  }
  await waitFor(() => budget.pool('receiver') > budget.partialLimit, 'unfinished lines past their share');
  for (const s of socks) s.end('"}\n');
  await waitFor(() => r.got.length === 50, 'all 50 lines', 30_000);
  const share = budget.partialLimit;
  // The share, plus the one connection being read (its line, ≤ 100 KB), plus one read (64 KiB).
  assert.ok(peak <= share + 100_010 + 64 * 1024, `unfinished lines peaked at ${peak} bytes (share ${share})`);
  assert.deepEqual(
    r.got.map((l) => (JSON.parse(l) as { i: number }).i).sort((a, b) => a - b),
    [...Array(50).keys()],
  );
  assert.equal(budget.pool('receiver'), 0);
});

test('paced turns: a trickle is read in order with the loop sleeping between turns; bulk reads never sleep', async () => {
  const r = await start(20, undefined, true);
  try {
    const c = net.connect(r.path);
    await once(c, 'connect');
    const t0 = performance.now();
    await trickle(c, 2000);
    await waitFor(() => r.got.length === 2000, '2000 lines read');
    const elapsed = performance.now() - t0;
    assert.deepEqual(
      r.got.map((l) => (JSON.parse(l) as { i: number }).i),
      Array.from({ length: 2000 }, (_, i) => i),
    );
    const { pacedSleeps, pacedSleptMs } = r.receiver;
    assert.ok(pacedSleeps > 0, 'the loop slept after trickling turns');
    assert.ok(pacedSleptMs <= elapsed + 20, `slept ${pacedSleptMs} ms within ${elapsed.toFixed(0)} ms`);
    assert.ok(r.turns() > 0, 'what each turn read was handed on at its end (turnDone)');
    // bulk: 64 KiB writes, as fast as the socket takes them: turns read ≥ 64 KiB, no sleep
    const before = r.receiver.pacedSleeps;
    const line = `{"pad":"${'x'.repeat(200)}"}\n`;
    const chunk = line.repeat(Math.floor(65536 / line.length));
    const perChunk = Math.floor(65536 / line.length);
    for (let k = 0; k < 64; k++) if (!c.write(chunk)) await once(c, 'drain');
    await waitFor(() => r.got.length === 2000 + 64 * perChunk, 'the bulk lines read');
    assert.ok(r.receiver.pacedSleeps - before <= 3, `bulk turns slept ${r.receiver.pacedSleeps - before} times`);
    c.destroy();
  } finally {
    await r.close();
  }
});
