// The bounded stderr writer alone (src/log/stderr-writer.ts), on a real FIFO that the test fills and reads: a full
// FIFO never makes write() wait; lines past the cap are dropped and counted; once the FIFO is read, the queued lines
// come out whole and in order, then one notice with the number dropped; the exit flush is bounded when nothing reads.
import assert from 'node:assert/strict';
import { constants, openSync, closeSync } from 'node:fs';
import { test } from 'node:test';
import { StderrWriter } from '../src/log/stderr-writer.ts';
import { tempDir, waitFor } from './helpers/serve.ts';
import { StderrFifo } from './helpers/stderr-fifo.ts';

function setup(t: import('node:test').TestContext): { fifo: StderrFifo; fd: number } {
  const tmp = tempDir('sk-log-writer-');
  const fifo = new StderrFifo(tmp.dir);
  const fd = openSync(fifo.path, constants.O_WRONLY | constants.O_NONBLOCK);
  t.after(() => {
    closeSync(fd);
    fifo.close();
    tmp.cleanup();
  });
  return { fifo, fd };
}

const line = (i: number): string => `${JSON.stringify({ pid: 1, i, msg: `line ${i}`, pad: 'x'.repeat(80) })}\n`;

test('a full FIFO: lines wait up to the cap, the rest are dropped and counted; once read, one notice', async (t) => {
  const { fifo, fd } = setup(t);
  fifo.block();
  const writer = new StderrWriter(fd, 4096);
  for (let i = 0; i < 200; i++) writer.write(line(i)); // returns at once: nothing here can wait for a reader
  const { lines, dropped } = writer.counts();
  assert.equal(lines, 200);
  let queued = 0;
  for (let bytes = 0; bytes + line(queued).length <= 4096; queued++) bytes += line(queued).length;
  assert.equal(dropped, 200 - queued, 'what fits in 4 KiB waits, the rest is dropped');
  assert.ok(writer.pendingBytes <= 4096);

  fifo.unblock();
  await waitFor('the queue and the notice to come out', () => {
    const got = fifo.lines().filter((l) => l.pid === 1 || l.component === 'log');
    return got.some((l) => l.component === 'log') ? got : undefined;
  });
  const got = fifo.lines();
  const logged = got.filter((l) => l.pid === 1).map((l) => l.i as number);
  assert.deepEqual(
    logged,
    Array.from({ length: queued }, (_, i) => i),
    'the first lines, whole and in order',
  );
  const notices = got.filter((l) => l.component === 'log');
  assert.equal(notices.length, 1);
  assert.equal(notices[0]!.droppedLines, dropped);
  assert.equal(writer.pendingBytes, 0);

  // Writable again: lines go straight through, nothing more is dropped.
  writer.write(line(1000));
  await waitFor('a line after the drain', () => fifo.lines().some((l) => l.i === 1000));
  assert.equal(writer.counts().dropped, dropped);
});

test('exit flush: gives up on a blocked stderr (bounded), writes everything to a writable one', async (t) => {
  const { fifo, fd } = setup(t);
  fifo.block();
  const writer = new StderrWriter(fd, 1 << 20);
  for (let i = 0; i < 10; i++) writer.write(line(i));
  writer.flushAtExit(); // nothing reads: it returns (a hang would be the test's timeout)
  assert.ok(writer.pendingBytes > 0, 'the lines are still waiting');
  fifo.unblock(); // reads the FIFO empty now
  writer.flushAtExit();
  assert.equal(writer.pendingBytes, 0);
  await waitFor('the ten lines', () => fifo.lines().filter((l) => l.pid === 1).length === 10).catch((err: Error) => {
    throw new Error(`${err.message}: ${JSON.stringify(fifo.lines().map((l) => l.i))}`);
  });
});
