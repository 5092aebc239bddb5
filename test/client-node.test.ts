// The Node agent client (src/agent/client, `sidekick-runtime/client`): order, reconnects (listener restart and socket file
// replaced under a live connection), the buffer cap, never throwing, never keeping the process alive, middleware.
import assert from 'node:assert/strict';
import { request, createServer } from 'node:http';
import { once } from 'node:events';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { existsSync, readFileSync } from 'node:fs';
import {
  agentMiddleware,
  createAgentClient,
  defaultAgentSocketPath,
  type AgentClient,
} from '../src/agent/client/index.ts';
import {
  FIXTURES,
  Listener,
  PHP_MISSING,
  REPO,
  inodeOf,
  run,
  socketDir,
  startHungListener,
  startNeverAccepting,
  within,
} from './fixtures/clients/helpers.ts';

/** from, from + 1, … to - 1 */
const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, k) => from + k);

const dirs = socketDir();
after(() => dirs.cleanup());
let n = 0;
const sockPath = (): string => dirs.path(`n${n++}.sock`);

/** Every client made here is closed at the end even when an assertion fails. */
const clients: AgentClient[] = [];
after(async () => {
  await Promise.all(clients.map((c) => c.close(100)));
});
function client(opts: Parameters<typeof createAgentClient>[0]): AgentClient {
  const c = createAgentClient({ reconnectBaseMs: 10, reconnectMaxMs: 50, ...opts });
  clients.push(c);
  return c;
}

describe('Node agent client', () => {
  test('records arrive in order, one JSON object per line', async () => {
    const l = await Listener.start(sockPath());
    try {
      const c = client({ socket: l.path });
      for (let i = 0; i < 2000; i++) assert.equal(c.send({ i, text: `record ${i} ✓\n"quoted"` }), true);
      await c.flush(5000);
      const lines = (await l.waitForLines(2000)) as Array<{ i: number; text: string }>;
      assert.deepEqual(
        lines.map((x) => x.i),
        Array.from({ length: 2000 }, (_, i) => i),
      );
      assert.equal(lines[7]!.text, 'record 7 ✓\n"quoted"');
      assert.equal(l.accepted, 1, 'one persistent connection');
      const s = c.stats();
      assert.equal(s.sent, 2000);
      assert.equal(s.dropped, 0);
      assert.equal(s.bufferedBytes, 0);
    } finally {
      await l.close();
    }
  });

  test('records sent before the agent exists are buffered and delivered in order once it listens', async () => {
    const path = sockPath();
    const c = client({ socket: path });
    for (let i = 0; i < 10; i++) assert.equal(c.send({ i }), true);
    const l = await Listener.start(path);
    try {
      const lines = (await l.waitForLines(10)) as Array<{ i: number }>;
      assert.deepEqual(
        lines.map((x) => x.i),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
      );
    } finally {
      await l.close();
    }
  });

  test('listener restarts on the same path (new inode): later records reach the new listener', async () => {
    const path = sockPath();
    const first = await Listener.start(path);
    const c = client({ socket: path });
    c.send({ phase: 'before' });
    await first.waitForLines(1);
    await first.close(); // drops the connection and unlinks the file
    const second = await Listener.start(path);
    try {
      // The file is new, though the filesystem may hand out the freed inode number again: here the closed
      // connection is what tells the client (the orphaned-inode case below is where the inode check matters).
      await second.waitForConnection(0);
      c.send({ phase: 'after' });
      const lines = await second.waitForLines(1);
      assert.deepEqual(lines, [{ phase: 'after' }]);
      assert.deepEqual(first.lines, [{ phase: 'before' }]);
      assert.ok(c.stats().reconnects >= 1);
    } finally {
      await second.close();
    }
  });

  test('agent restarts during a steady stream: every record is sent or dropped; past the cut, every id reaches the new agent exactly once, in order', async (t) => {
    const path = sockPath();
    const first = await Listener.start(path);
    const c = client({ socket: path });
    let i = 0;
    const burst = (k: number): void => {
      for (let j = 0; j < k; j++) c.send({ i: i++, pad: 'p'.repeat(200) });
    };
    burst(500);
    await first.waitForLines(100);
    await first.close(); // mid-stream: lines may be cut or still queued
    burst(500); // while the client notices and reconnects
    const second = await Listener.start(path);
    try {
      await second.waitForConnection(0);
      burst(500);
      await c.flush(5000);
      const s = c.stats();
      assert.equal(s.bufferedBytes, 0);
      assert.equal(s.sent + s.dropped, i, `sent ${s.sent} + dropped ${s.dropped} = ${i} sends`);
      await c.close(1000); // settle() waits for every connection to end
      const got = (await second.settle()).map((x) => (x as { i: number }).i);
      const before = first.lines.map((x) => (x as { i: number }).i);
      // The first agent got a prefix (0, 1, … a-1) with no gap; the new one got every id from its first (b) to the
      // last one sent, each exactly once, in order. Only the records in flight to the first agent when it went away
      // (a … b-1, written to its connection or dropped) may be missing: none is lost later, none arrives twice.
      assert.ok(got.length > 0);
      const a = before.length;
      const b = got[0]!;
      assert.deepEqual(before, range(0, a), 'the first agent got 0 … a-1, each once, in order');
      assert.ok(b >= a, `the new agent starts after the first one's last record (${a - 1} < ${b})`);
      assert.deepEqual(got, range(b, i), `the new agent got every id from ${b} to ${i - 1} exactly once, in order`);
      t.diagnostic(`lost at the cut: ids ${a} … ${b - 1} (${b - a}); dropped ${c.stats().dropped}`);
    } finally {
      await second.close();
    }
  });

  test('socket file replaced while the old listener still holds the connection (orphaned inode)', async () => {
    const path = sockPath();
    const old = await Listener.start(path);
    const c = client({ socket: path, inodeCheckMs: 20 });
    c.send({ phase: 'old' });
    await old.waitForLines(1);
    const oldInode = inodeOf(path);
    // A new agent takes over the path; the old one is still alive and its connection still "works".
    const { unlinkSync } = await import('node:fs');
    unlinkSync(path);
    const fresh = await Listener.start(path);
    try {
      assert.notEqual(inodeOf(path), oldInode, 'the old socket still holds its inode, so the new file has another');
      await fresh.waitForConnection(0); // only the inode check can make the client move
      c.send({ phase: 'new' });
      assert.deepEqual(await fresh.waitForLines(1), [{ phase: 'new' }]);
      assert.deepEqual(old.lines, [{ phase: 'old' }], 'nothing more went to the orphaned inode');
      assert.equal(c.stats().reconnects, 1);
    } finally {
      // Close the fresh one first: closing the old server unlinks the path by name (nodejs/node#19729).
      await fresh.close();
      await old.close();
    }
  });

  test('buffer cap: past maxBufferBytes send() returns false and counts the drop (agent down, spill off)', async () => {
    const c = client({ socket: sockPath(), maxBufferBytes: 10_000, spillMaxBytes: 0 });
    let accepted = 0;
    let refused = 0;
    for (let i = 0; i < 100; i++) {
      if (c.send({ i, pad: 'x'.repeat(980) })) accepted++;
      else refused++;
    }
    assert.ok(accepted > 0 && accepted <= 10, `accepted ${accepted}`);
    assert.equal(refused, 100 - accepted);
    const s = c.stats();
    assert.equal(s.dropped, refused);
    assert.ok(s.bufferedBytes <= 10_000);
    assert.equal(s.sent, 0);
  });

  test('spill: past maxBufferBytes whole lines go to the spill file, and what close() could not send too', async () => {
    const path = sockPath();
    const spillDir = dirs.path(`spill-${n}`);
    const c = client({ socket: path, maxBufferBytes: 10_000, spillDir });
    for (let i = 0; i < 100; i++) assert.equal(c.send({ i, pad: 'x'.repeat(980) }), true, 'taken (buffer or spill)');
    await c.close(50); // the agent is down: the buffered lines go to the spill file as well
    const s = c.stats();
    assert.equal(s.spilled, 100);
    assert.equal(s.dropped, 0);
    const text = readFileSync(join(spillDir, 'spill.ndjson'), 'utf8');
    const lines = text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { i: number });
    assert.deepEqual(
      lines.map((l) => l.i).sort((a, b) => a - b),
      Array.from({ length: 100 }, (_, i) => i),
      'every record once, as a whole line',
    );
  });

  test('drops are reported to the agent: a control line with the count leads the next batch', async () => {
    const path = sockPath();
    const c = client({ socket: path, maxBufferBytes: 10_000, spillMaxBytes: 0 });
    let refused = 0;
    for (let i = 0; i < 100; i++) if (!c.send({ i, pad: 'x'.repeat(980) })) refused++;
    assert.ok(refused > 0);
    const l = await Listener.start(path);
    try {
      await c.flush(5000);
      const lines = (await l.waitForLines(101 - refused)) as Array<Record<string, unknown>>;
      assert.deepEqual(lines[0], { _sidekick: 'dropped', count: refused }, 'the count goes first, once');
      assert.equal(lines.filter((x) => '_sidekick' in x).length, 1);
      assert.equal(lines.length, 1 + (100 - refused), 'every accepted record arrived');
      c.send({ later: true });
      await c.flush(5000);
      const more = (await l.waitForLines(lines.length + 1)) as Array<Record<string, unknown>>;
      assert.deepEqual(more.at(-1), { later: true }, 'nothing more to report: no second control line');
    } finally {
      await l.close();
    }
  });

  test('bye: the client leaves a stopping agent at a line boundary and goes on with the next one', async () => {
    const path = sockPath();
    const first = await Listener.start(path);
    const c = client({ socket: path });
    for (let i = 0; i < 500; i++) c.send({ i });
    await c.flush(5000);
    await first.waitForLines(500);
    // The agent says bye; the client must close its end (EOF) without waiting for the connection to die.
    const closed = once(first, 'closed');
    for (const sock of first.sockets) sock.end(); // the agent's bye: a half-close, it keeps reading
    await within(closed, 5000, 'the client to close after bye');
    await first.close();
    const second = await Listener.start(path);
    try {
      for (let i = 500; i < 1000; i++) c.send({ i });
      await c.flush(5000);
      const lines = (await second.waitForLines(500)) as Array<{ i: number }>;
      assert.deepEqual(
        [...first.lines, ...lines].map((x) => (x as { i: number }).i),
        Array.from({ length: 1000 }, (_, i) => i),
        'every record once, in order, across the hand-over',
      );
      assert.ok(
        first.raw.every((l) => l.endsWith('}')),
        'no cut line at the stopping agent',
      );
      assert.equal(c.stats().dropped, 0);
    } finally {
      await second.close();
    }
  });

  test('buffer cap under backpressure: an agent that accepts but never reads', async () => {
    const path = sockPath();
    const hung = await startHungListener(path);
    try {
      const c = client({ socket: path, maxBufferBytes: 64 * 1024, spillMaxBytes: 0 });
      c.send({ first: true });
      await c.flush(5000); // resolves once that record reached the kernel, i.e. connected
      assert.equal(c.stats().sent, 1);
      const pad = 'y'.repeat(4000);
      let falseAt = -1;
      // Each turn hands the queue to the socket; the kernel fills, then Node's buffer, then the cap refuses.
      for (let i = 0; i < 5000 && falseAt === -1; i++) {
        if (!c.send({ i, pad })) falseAt = i;
        if (i % 8 === 0) await new Promise<void>((res) => setImmediate(res));
      }
      assert.ok(falseAt > 0, 'send() eventually returned false');
      const s = c.stats();
      assert.equal(s.dropped, 1);
      assert.ok(s.connected, 'still connected: the cap came from backpressure, not from a missing connection');
      assert.ok(s.sent > 10, `the kernel took some records first (${s.sent})`);
      assert.ok(s.bufferedBytes <= 64 * 1024, `buffered ${s.bufferedBytes}`);
      assert.ok(s.bufferedBytes > 0);
    } finally {
      await hung.close();
    }
  });

  test('send() never throws: circular, BigInt, oversize records are dropped and counted; close() drops later sends', async () => {
    const c = client({ socket: sockPath(), maxRecordBytes: 100 });
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    assert.equal(c.send(circular), false);
    assert.equal(c.send({ n: 1n }), false);
    assert.equal(c.send({ pad: 'z'.repeat(200) }), false);
    assert.equal(
      c.send({
        toJSON() {
          throw new Error('boom');
        },
      }),
      false,
    );
    assert.equal(c.stats().dropped, 4);
    await c.close(100);
    assert.equal(c.send({ late: true }), false);
    assert.equal(c.stats().dropped, 5);
  });

  test('flush() resolves by its timeout when the agent is down', async () => {
    const c = client({ socket: sockPath() });
    c.send({ a: 1 });
    await within(c.flush(50), 5000, 'flush(50) to resolve');
    assert.equal(c.stats().sent, 0);
  });

  test('socket path: SIDEKICK_AGENT_SOCKET wins, else the agent default rule', () => {
    assert.equal(defaultAgentSocketPath({ SIDEKICK_AGENT_SOCKET: '/x/agent.sock' }), '/x/agent.sock');
    const rootish = process.getuid?.() === 0 || existsSync('/run/sidekick');
    assert.equal(
      defaultAgentSocketPath({ XDG_RUNTIME_DIR: '/run/user/1000' }),
      rootish ? '/run/sidekick/agent.sock' : '/run/user/1000/sidekick/agent.sock',
    );
    if (!rootish) assert.equal(defaultAgentSocketPath({}), join(process.cwd(), 'var', 'agent.sock'));
  });

  test('options are validated', () => {
    assert.throws(() => createAgentClient({ maxBufferBytes: -1 }), RangeError);
    assert.throws(() => createAgentClient({ connectTimeoutMs: 0 }), RangeError);
  });

  describe('never keeps the process alive', () => {
    const child = (path: string, mode: string, count: number) =>
      run(process.execPath, ['--import', 'tsx', join(FIXTURES, 'node-child.ts'), path, mode, String(count)], {
        cwd: REPO,
        ms: 30_000,
      });

    test('agent up: the child exits by itself and its records arrived (no flush, no close)', async () => {
      const l = await Listener.start(sockPath());
      try {
        const r = await child(l.path, 'plain', 5);
        assert.equal(r.code, 0, r.stderr);
        assert.equal((await l.settle()).length, 5);
      } finally {
        await l.close();
      }
    });

    test('agent down: the child exits by itself', async () => {
      const r = await child(sockPath(), 'plain', 5);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
    });

    test('agent hung (accepts, never reads): exits by itself even with data stuck and flush() waiting', async () => {
      const path = sockPath();
      const hung = await startHungListener(path);
      try {
        const r = await child(path, 'flush', 1000); // ~1 MB: more than the kernel takes
        assert.equal(r.code, 0, r.stderr);
        assert.ok(hung.accepted() >= 2, 'the child did connect');
        // The premise held: when flush() gave up, records were still stuck in the client (not handed to the kernel),
        // and the child exited with them: they are dropped, not waited for.
        const stats = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as {
          sent?: number;
          bufferedBytes?: number;
        };
        assert.ok((stats.bufferedBytes ?? 0) > 0, `data still buffered after flush(): ${r.stdout}`);
        assert.ok((stats.sent ?? 1000) < 1000, `not every record was handed over: ${r.stdout}`);
      } finally {
        await hung.close();
      }
    });

    test('agent hung (never accepts, backlog full): exits by itself', { skip: PHP_MISSING }, async () => {
      const path = sockPath();
      const never = await startNeverAccepting(path);
      try {
        const r = await child(path, 'plain', 5);
        assert.equal(r.code, 0, r.stderr);
      } finally {
        await never.close();
      }
    });
  });

  test('agentMiddleware records method, route, status and duration per request', async () => {
    const l = await Listener.start(sockPath());
    const c = client({ socket: l.path });
    const mw = agentMiddleware(c, { fields: () => ({ app: 'shop', status: 'ignored' }) });
    const server = createServer((req, res) => {
      mw(req, res);
      if (req.url?.startsWith('/express')) {
        // What Express sets once a route matched.
        Object.assign(req, { baseUrl: '/api', route: { path: '/users/:id' } });
      }
      res.statusCode = req.url?.startsWith('/missing') ? 404 : 200;
      res.end('ok');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const get = (path: string, method = 'GET') =>
      new Promise<void>((res, rej) => {
        const req = request({ host: '127.0.0.1', port, path, method, agent: false }, (r) => {
          r.resume();
          r.on('end', () => res());
        });
        req.on('error', rej);
        req.end();
      });
    try {
      await get('/users/7?x=1');
      await get('/missing#x', 'POST');
      await get('/express/users/9');
      const lines = (await l.waitForLines(3)) as Array<Record<string, unknown>>;
      const byRoute = new Map(lines.map((x) => [x.route, x]));
      const a = byRoute.get('/users/7');
      assert.ok(a, JSON.stringify(lines));
      assert.equal(a.type, 'node_request');
      assert.equal(a.method, 'GET');
      assert.equal(a.status, 200);
      assert.equal(a.app, 'shop');
      assert.equal(typeof a.duration_ms, 'number');
      assert.equal(a.pid, process.pid);
      assert.equal(byRoute.get('/missing')?.status, 404);
      assert.equal(byRoute.get('/missing')?.method, 'POST');
      assert.ok(byRoute.get('/api/users/:id'), 'Express route pattern used');
    } finally {
      server.close();
      await l.close();
    }
  });
});
