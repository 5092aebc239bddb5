// The Unix socket receiver's read coalescing (agent.ingest.coalesceMs) on a real socket: every line arrives, in
// order, many per read; a connection napping when the memory budget runs out and recovers still reads to the end;
// control lines (hello → state line, bye) go only to clients that said hello.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { pino } from 'pino';
import { MemoryBudget } from '../src/agent/processors/memory.ts';
import { HELLO_LINE } from '../src/agent/receivers/control.ts';
import { UnixSocketReceiver } from '../src/agent/receivers/unix-socket.ts';
import { waitFor } from './helpers/agent.ts';

const dir = mkdtempSync(join(tmpdir(), 'sk-recv-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

async function start(coalesceMs: number, budget = new MemoryBudget(64 * 1024 * 1024)) {
  const got: string[] = [];
  let appends = 0;
  const receiver = new UnixSocketReceiver({
    maxRecordBytes: 1024 * 1024,
    coalesceMs,
    budget,
    log: pino({ level: 'silent' }),
    sink: {
      append: (lines) => {
        appends++;
        got.push(...lines.toString('utf8').split('\n').filter(Boolean));
      },
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
    budget.add('receiver', 5000); // exhausted while napping: every connection is paused
    c.write('{"i":1}\n');
    await new Promise((res) => setTimeout(res, 60)); // past the nap
    budget.add('receiver', -5000); // relief
    await waitFor(() => r.got.length === 2, 'the line written during the nap and the pause');
    c.destroy();
  } finally {
    await r.close();
  }
});

test('state lines go only to clients that said hello; bye precedes their half-close', async () => {
  const r = await start(0);
  try {
    const quiet = net.connect(r.path);
    const hello = net.connect(r.path);
    await Promise.all([once(quiet, 'connect'), once(hello, 'connect')]);
    let fromAgentQuiet = '';
    let fromAgentHello = '';
    quiet.setEncoding('utf8').on('data', (d: string) => (fromAgentQuiet += d));
    hello.setEncoding('utf8').on('data', (d: string) => (fromAgentHello += d));
    hello.write(HELLO_LINE);
    quiet.write('{"q":1}\n');
    await waitFor(() => r.got.length === 1, 'the quiet client’s record');
    r.receiver.setClientState('{"_sidekick":"state","profiling":false,"sampleRate":1,"reason":"breaker_open"}\n');
    await waitFor(() => fromAgentHello.includes('"profiling":false'), 'the state line at the hello client');
    const ended = Promise.all([once(quiet, 'end'), once(hello, 'end')]);
    const drained = r.receiver.drain(200, 2000);
    await ended;
    quiet.end();
    hello.end();
    await drained;
    assert.equal(fromAgentQuiet, '', 'a client that never said hello is never written to (only its FIN)');
    assert.ok(fromAgentHello.endsWith('{"_sidekick":"bye"}\n'), fromAgentHello);
  } finally {
    await r.close();
  }
});

test('a state line to a client that already closed loses none of the lines it wrote before closing', async () => {
  const r = await start(300); // a long nap: the client's last lines wait unread in the kernel
  try {
    const c = net.connect(r.path);
    await once(c, 'connect');
    c.on('data', () => undefined);
    c.write(HELLO_LINE);
    await new Promise((res) => setTimeout(res, 50)); // the agent read the hello and naps
    // A short-lived client (a PHP process exiting): its last records, then its fd is closed for good.
    c.write('{"last":1}\n{"last":2}\n', () => c.destroy());
    await once(c, 'close');
    // A state change while those lines are unread: writing to the closed client fails (EPIPE) …
    r.receiver.setClientState('{"_sidekick":"state","profiling":false,"sampleRate":1,"reason":"breaker_open"}\n');
    // … and must not cost the lines still in the kernel.
    await waitFor(() => r.got.length === 2, 'the closed client’s last two lines');
    assert.deepEqual(r.got, ['{"last":1}', '{"last":2}']);
  } finally {
    await r.close();
  }
});
