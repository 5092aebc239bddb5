// Faults of user code in HTTP handlers under `sidekick serve`, each with what the user sees and that nothing else is
// disturbed: a handler that throws (sync or async) answers 500 and is counted, the worker lives on; one that never
// answers gets 503 after handlerTimeoutMs; one that blocks its event loop is killed and replaced after
// unresponsiveMs; one that blocks it for seconds does not cost a request sent meanwhile on a kept-alive connection its
// connection; one that leaks is recycled at recycle.maxRssBytes with zero failed requests. And a sidekick that
// blocks its own thread forever: requests keep reading its last snapshot, tasks to it time out, serve answers.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import http from 'node:http';
import {
  FIXTURES,
  httpGet,
  readEvents,
  startLoad,
  startServe,
  tempDir,
  waitFor,
  type ServeProcess,
} from './helpers/serve.ts';

const HANDLER = join(FIXTURES, 'faults.mjs');
const tmp = tempDir('sk-serve-faults-');
let serve: ServeProcess;
let ports: Record<string, number>;

before(async () => {
  const started = await startServe(tmp.dir, [
    {
      name: 'faulty',
      workers: 2,
      handler: HANDLER,
      extra: { handlerTimeoutMs: 1000, unresponsiveMs: 2000, recycle: { maxRssBytes: 0 } },
    },
    { name: 'leaky', workers: 2, handler: HANDLER, extra: { recycle: { maxRssBytes: '200MiB' } } },
    // One worker, so a keep-alive connection and a blocking request meet in the same process.
    { name: 'blocky', workers: 1, handler: HANDLER, extra: { unresponsiveMs: 30_000 } },
  ]);
  serve = started.serve;
  ports = started.ports;
  await serve.waitReady();
});

after(async () => {
  await serve?.kill();
  tmp.cleanup();
});

const pidsOf = async (app: string): Promise<number[]> =>
  serve
    .app(await serve.status(), app)
    .workers.map((w) => w.pid)
    .sort();

test('a handler that throws (sync or async) answers 500, is counted, and its worker serves on', async () => {
  const before = await pidsOf('faulty');
  for (const path of ['/throw', '/reject', '/throw', '/reject']) {
    const r = await httpGet(ports.faulty!, path);
    assert.equal(r.status, 500, `${path}: ${r.text}`);
    assert.equal(r.text, 'internal error\n');
  }
  assert.equal((await httpGet(ports.faulty!, '/hello')).status, 200);
  const app = await waitFor('handlerErrors 4 in status', async () => {
    const a = serve.app(await serve.status(), 'faulty');
    return a.handlerErrors >= 4 ? a : undefined;
  });
  assert.equal(app.handlerErrors, 4);
  assert.equal(app.workerRestarts, 0, serve.logs());
  assert.deepEqual(await pidsOf('faulty'), before);
  assert.match(serve.stdout + serve.stderr, /handler bug: async rejection/);
});

test('a handler that never answers gets 503 after handlerTimeoutMs; the worker serves on', async () => {
  const r = await httpGet(ports.faulty!, '/hang', { timeoutMs: 15_000 });
  assert.equal(r.status, 503);
  assert.equal(r.text, 'handler timeout\n');
  assert.equal((await httpGet(ports.faulty!, '/hello')).status, 200);
  const app = await waitFor('handlerTimeouts 1 in status', async () => {
    const a = serve.app(await serve.status(), 'faulty');
    return a.handlerTimeouts >= 1 ? a : undefined;
  });
  assert.equal(app.handlerTimeouts, 1);
  assert.equal(app.workerRestarts, 0);
});

test('a handler that blocks its event loop: the worker is killed and replaced; the other app is not disturbed', async () => {
  const before = await pidsOf('faulty');
  const leakyBefore = await pidsOf('leaky');
  const spin = httpGet(ports.faulty!, '/spin', { timeoutMs: 30_000 }).then(
    (r) => `status ${r.status}`,
    (err: Error) => err.message,
  );
  const app = await waitFor(
    'the spinning worker killed and replaced',
    async () => {
      const a = serve.app(await serve.status(), 'faulty');
      const replaced = a.workers.filter((w) => !before.includes(w.pid));
      return a.unresponsiveKills === 1 &&
        a.workers.length === 2 &&
        replaced.length === 1 &&
        a.workers.every((w) => w.state === 'listening')
        ? a
        : undefined;
    },
    { timeoutMs: 30_000 },
  );
  assert.equal(app.workerRestarts, 1);
  // The request that hit the busy loop ends with its connection, never with a made-up answer.
  assert.match(await spin, /socket hang up|ECONNRESET/);
  for (let i = 0; i < 20; i++) assert.equal((await httpGet(ports.faulty!, '/hello')).status, 200);
  assert.match(serve.stdout + serve.stderr, /HTTP worker unresponsive/);
  assert.deepEqual(await pidsOf('leaky'), leakyBefore);
});

test('a handler that blocks its worker past keepAliveTimeout: a request sent meanwhile on an idle keep-alive connection is answered, not reset', async () => {
  // Node arms keepAliveTimeout (5 s; 6 s on Node 24, which adds a 1 s buffer) on a connection when its response ends.
  // The next request arrives while the event loop is blocked; when the loop runs again, its timers phase comes before
  // the poll phase that would read that request (nodejs/node#43456): the worker must not take the connection for an
  // idle one and reset it (what a leaking handler's long allocation did to the load in the test below).
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const first = await httpGet(ports.blocky!, '/hello', { agent });
    assert.equal(first.status, 200);
    const blocked = httpGet(ports.blocky!, '/block?ms=8000', { timeoutMs: 60_000 }); // a connection of its own
    await waitFor('the block to begin', () => readEvents(tmp.dir).some((e) => e.event === 'block-begin'));
    let reused: boolean | undefined;
    const second = await new Promise<{ status: number; pid: number }>((resolve, reject) => {
      const req = http.get(
        { host: '127.0.0.1', port: ports.blocky!, path: '/hello', agent, timeout: 60_000 },
        (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, pid: Number(res.headers['x-pid']) }));
        },
      );
      req.on('socket', () => (reused = req.reusedSocket));
      req.on('timeout', () => req.destroy(new Error('GET /hello timed out')));
      req.on('error', reject);
    });
    assert.equal(reused, true, 'the second request went out on the kept-alive connection');
    assert.deepEqual(second, { status: 200, pid: first.pid });
    assert.equal((await blocked).status, 200);
  } finally {
    agent.destroy();
  }
});

test('a leaking handler: its worker is recycled at recycle.maxRssBytes, with zero failed requests', async () => {
  const load = startLoad({ port: ports.leaky!, concurrency: 4, maxMs: 45_000, maxRequests: 200_000 });
  const leak = await httpGet(ports.leaky!, '/leak?mb=256');
  assert.equal(leak.status, 200);
  const leaker = leak.pid!;
  assert.ok(Number(leak.text) > 200 * 1024 * 1024, `rss after the leak: ${leak.text}`);
  const app = await waitFor(
    'the leaking worker recycled',
    async () => {
      const a = serve.app(await serve.status(), 'leaky');
      return a.recycles >= 1 &&
        a.workers.length === 2 &&
        !a.workers.some((w) => w.pid === leaker) &&
        a.workers.every((w) => w.state === 'listening')
        ? a
        : undefined;
    },
    { timeoutMs: 40_000 },
  );
  assert.equal(app.recycles, 1);
  assert.equal(app.workerRestarts, 0);
  load.stop();
  const result = await load.done;
  assert.deepEqual(result.failures, [], JSON.stringify(result.failures.slice(0, 5)));
  assert.ok(result.total > 0);
  assert.deepEqual(Object.keys(result.statuses), ['200']);
  assert.match(serve.stdout + serve.stderr, /recycling HTTP worker/);
});

test('a sidekick that blocks its thread forever: its last snapshot is served, tasks to it time out, serve answers', async () => {
  // Its own serve: the busy loop holds a core until serve stops, so it must not outlive this test.
  const own = tempDir('sk-serve-faults-busy-');
  const started = await startServe(own.dir, [
    { name: 'spinner', workers: 2, handler: HANDLER, sidekicks: { declare: { 'busy.b': { start: 'boot' } } } },
  ]);
  try {
    await started.serve.waitReady();
    const port = started.ports.spinner!;
    const vars = await httpGet(port, '/vars?name=busy.b');
    assert.equal(vars.status, 200, vars.text);
    assert.deepEqual(JSON.parse(vars.text), { generation: '0' });
    const task = await httpGet(port, '/task?name=busy.b&timeout=500');
    assert.deepEqual(JSON.parse(task.text), { ok: false, code: 'SK_ERR_TIMEOUT' });
    for (let i = 0; i < 10; i++) assert.equal((await httpGet(port, '/hello')).status, 200);
    const status = await started.serve.status();
    const busy = started.serve.sidekick(status, 'spinner', 'busy.b');
    assert.equal(busy?.state, 'running');
    assert.equal(busy?.generation, 0);
  } finally {
    await started.serve.kill();
    own.cleanup();
  }
});
