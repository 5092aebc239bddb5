// `sidekick serve` rules of the README that no other test drove, each on a real serve: dev.watch reloads on a changed
// handler; a draining HTTP worker (reload or SIGTERM) answers its in-flight request with `Connection: close`, closes
// an idle keep-alive connection, and cuts a request that outlives drainTimeoutMs; `listen` as `unix:/path` and as a
// bare port (127.0.0.1); config discovery without -c; the agent's PROFILING_ENABLED going to '0' while its breaker is
// open.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { record, sendOnce } from './helpers/agent.ts';
import {
  FIXTURES,
  HANDLER,
  ServeProcess,
  breakerOpeningAgent,
  freePort,
  httpGet,
  readEvents,
  runCli,
  startServe,
  tempDir,
  waitFor,
  type HttpResult,
} from './helpers/serve.ts';
import { isAlive as alive } from './helpers/proc.ts';
import { within } from './helpers/within.ts';

const CONTRACT_APP = join(FIXTURES, 'contract-app.mjs');

type Cleanup = { after: (fn: () => void | Promise<void>) => void };

function scratch(t: Cleanup, prefix: string): string {
  const tmp = tempDir(prefix);
  t.after(() => tmp.cleanup());
  return tmp.dir;
}

/** A serve on a config written by the test; killed after `t`. */
function serveOn(
  t: Cleanup,
  dir: string,
  config: Record<string, unknown>,
  workers: Record<string, number>,
  args?: string[],
): ServeProcess {
  const file = join(dir, 'sidekick.config.json');
  if (!args) writeFileSync(file, JSON.stringify(config, null, 2));
  const serve = new ServeProcess(
    file,
    join(dir, 'admin.sock'),
    workers,
    { SIDEKICK_LOG_LEVEL: 'info', SK_TEST_DIR: dir },
    dir,
    args,
  );
  t.after(() => serve.kill());
  return serve;
}

test('dev.watch: a changed handler file reloads (reloads 1, new worker pids, the new code answers)', async (t) => {
  const dir = scratch(t, 'sk-contract-watch-');
  const port = await freePort();
  const handler = join(dir, 'handler.mjs');
  const code = (text: string): string =>
    `export default (req, res) => { res.setHeader('x-pid', String(process.pid)); res.end(${JSON.stringify(text)}); };\n`;
  writeFileSync(handler, code('v1'));
  const serve = serveOn(
    t,
    dir,
    {
      apps: [{ name: 'w', listen: `127.0.0.1:${port}`, handler, workers: 2 }],
      admin: { socket: join(dir, 'admin.sock') },
      dev: { watch: true },
    },
    { w: 2 },
  );
  const ready = await serve.waitReady();
  const pids0 = serve.app(ready, 'w').workers.map((w) => w.pid);
  const before = await httpGet(port, '/');
  assert.equal(before.text, 'v1');
  assert.equal(ready.reloads, 0);

  writeFileSync(handler, code('v2'));
  const after = await serve.waitReady(
    (st) => st.reloads >= 1 && serve.app(st, 'w').workers.every((w) => !pids0.includes(w.pid)),
    { what: 'a reload after the handler changed, with new workers' },
  );
  const pids1 = serve.app(after, 'w').workers.map((w) => w.pid);
  const r = await httpGet(port, '/');
  assert.equal(r.text, 'v2', 'the changed handler answers');
  assert.ok(r.pid !== undefined && pids1.includes(r.pid), `answered by a new worker: ${r.pid} in ${pids1.join(',')}`);
  assert.match(serve.stderr, /file changed; reloading/);
});

/** GET on a keep-alive connection of its own; resolves with the response and the socket (left open by the agent). */
function keepAliveGet(port: number, path: string): Promise<{ res: HttpResult; socket: net.Socket; agent: http.Agent }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  return new Promise((resolve, reject) => {
    let socket: net.Socket | undefined;
    const req = http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        const pid = res.headers['x-pid'] ? Number(res.headers['x-pid']) : undefined;
        const result = { status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString(), pid };
        resolve({ res: result, socket: socket!, agent });
      });
    });
    req.on('socket', (s) => (socket = s));
    req.on('error', reject);
  });
}

interface Held {
  /** Set once the response has its headers. */
  headers: Promise<http.IncomingMessage>;
  /** How the response ended: completely (with its body), or cut. */
  outcome: Promise<{ complete: boolean; text: string; error?: string }>;
}

function hold(port: number, path: string): Held {
  let onHeaders!: (res: http.IncomingMessage) => void;
  const headers = new Promise<http.IncomingMessage>((r) => (onHeaders = r));
  const outcome = new Promise<{ complete: boolean; text: string; error?: string }>((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      onHeaders(res);
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('error', (err) => resolve({ complete: false, text, error: err.message }));
      res.on('close', () => resolve({ complete: res.complete, text }));
    });
    req.on('error', (err) => resolve({ complete: false, text: '', error: err.message }));
  });
  return { headers, outcome };
}

async function drainScenario(t: Cleanup, how: 'reload' | 'SIGTERM'): Promise<void> {
  const dir = scratch(t, `sk-contract-drain-`);
  const { serve, ports } = await startServe(dir, [
    { name: 'd', workers: 1, handler: CONTRACT_APP, drainTimeoutMs: 6000 },
  ]);
  t.after(() => serve.kill());
  const port = ports.d!;
  const ready = await serve.waitReady();
  const [p0] = serve.app(ready, 'd').workers.map((w) => w.pid);
  assert.ok(p0);

  // An idle keep-alive connection, an in-flight request (no headers yet) and one already streaming its response.
  const idle = await keepAliveGet(port, '/hello');
  t.after(() => idle.agent.destroy());
  assert.equal(idle.res.pid, p0);
  const order: string[] = [];
  const idleClosed = new Promise<void>((resolve) => idle.socket.once('close', () => resolve()));
  void idleClosed.then(() => order.push('idle closed'));
  const inFlight = hold(port, '/hold?id=b');
  const streaming = hold(port, '/hold?id=c&flush=1');
  await within(streaming.headers, 10_000, 'the streaming response headers');
  await waitFor('both held requests to begin', () => {
    const events = readEvents(dir).map((e) => e.event);
    return events.includes('hold-begin b') && events.includes('hold-begin c');
  });

  if (how === 'reload') {
    serve.signal('SIGHUP');
    // (not waitReady: it wants every worker listening, and the draining one is not)
    await waitFor(`the old worker ${p0} draining beside its replacement`, async () => {
      const st = await serve.status();
      return serve.app(st, 'd').workers.some((w) => w.pid === p0 && w.state === 'draining');
    });
  } else {
    serve.signal('SIGTERM');
  }

  // The idle connection is closed by the draining worker (it does not hold the exit), while both requests are held.
  await waitFor('the idle keep-alive connection to be closed', () => order.includes('idle closed'));
  order.push('release b');
  writeFileSync(join(dir, 'release-b'), '');
  const b = await within(inFlight.outcome, 10_000, 'the in-flight request to complete');
  const bRes = await inFlight.headers;
  assert.equal(b.complete, true, `the in-flight request completes: ${JSON.stringify(b)}`);
  assert.equal(b.text, 'held b');
  assert.equal(bRes.statusCode, 200);
  assert.equal(bRes.headers.connection, 'close', 'answered with Connection: close while draining');
  assert.deepEqual(order, ['idle closed', 'release b']);

  // The one never released outlives drainTimeoutMs: cut, and the worker exits.
  const c = await within(streaming.outcome, 20_000, 'the streaming request to be cut');
  assert.equal(c.complete, false, `cut before its end: ${JSON.stringify(c)}`);
  assert.ok(!c.text.includes('held c'), c.text);
  assert.ok(!readEvents(dir).some((e) => e.event === 'hold-end c'));
  await waitFor(`worker ${p0} to exit`, () => !alive(p0), { timeoutMs: 20_000 });
  assert.match(serve.stderr, /drain deadline reached; closing remaining connections/);

  if (how === 'reload') {
    const st = await serve.waitReady((s) => !serve.app(s, 'd').workers.some((w) => w.pid === p0));
    const r = await httpGet(port, '/hello');
    assert.equal(r.status, 200);
    assert.ok(r.pid !== p0 && serve.app(st, 'd').workers.some((w) => w.pid === r.pid));
  } else {
    // No second SIGTERM: serve is already stopping and may be tearing down by now, when a signal gets its default action.
    const exit = await within(serve.exited, 20_000, 'serve to exit after the drain');
    assert.deepEqual(exit, { code: 0, signal: null }, serve.logs());
  }
}

test('drain on reload: the in-flight request completes with Connection: close, the idle keep-alive connection is closed, a request outliving drainTimeoutMs is cut and the old worker exits', async (t) => {
  await drainScenario(t, 'reload');
});

test('drain on SIGTERM: the same, and serve exits 0', async (t) => {
  await drainScenario(t, 'SIGTERM');
});

test('listen: an app on unix:/…sock answers over that socket; a bare port number listens on 127.0.0.1 only', async (t) => {
  const dir = scratch(t, 'sk-contract-listen-');
  const sock = join(dir, 'app.sock');
  const port = await freePort();
  const { serve } = await startServe(dir, [
    { name: 'sock', workers: 2, extra: { listen: `unix:${sock}` } },
    { name: 'bare', workers: 1, extra: { listen: port } },
  ]);
  t.after(() => serve.kill());
  const st = await serve.waitReady();

  const overSocket = await new Promise<HttpResult>((resolve, reject) => {
    http
      .get({ socketPath: sock, path: '/hello', agent: false }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.from(text),
            text,
            pid: Number(res.headers['x-pid']),
          }),
        );
      })
      .on('error', reject);
  });
  assert.equal(overSocket.status, 200);
  assert.equal(overSocket.text, 'hello ');
  assert.ok(
    serve.app(st, 'sock').workers.some((w) => w.pid === overSocket.pid),
    'answered by a worker of that app',
  );

  const bare = await httpGet(port, '/hello');
  assert.equal(bare.status, 200);
  assert.ok(serve.app(st, 'bare').workers.some((w) => w.pid === bare.pid));
  // 127.0.0.2 is loopback too, but not the address bound: a listener on 0.0.0.0 would take it.
  const other = await new Promise<string>((resolve) => {
    const s = net.connect({ host: '127.0.0.2', port });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
  assert.equal(other, 'ECONNREFUSED', 'not listening beyond 127.0.0.1');
});

test('config discovery without -c: check finds sidekick.config.mjs, .js and .json in the working directory; serve runs one; none → 78 SK_ERR_CONFIG_NOT_FOUND', async (t) => {
  const root = scratch(t, 'sk-contract-discover-');
  const app = (port: number, dir: string): Record<string, unknown> => ({
    apps: [{ name: 'found', listen: `127.0.0.1:${port}`, handler: HANDLER, workers: 1 }],
    admin: { socket: join(dir, 'admin.sock') },
  });
  const dirs = { mjs: join(root, 'mjs'), js: join(root, 'js'), json: join(root, 'json'), none: join(root, 'none') };
  for (const d of Object.values(dirs)) mkdirSync(d);
  const port = await freePort();
  writeFileSync(join(dirs.mjs, 'sidekick.config.mjs'), `export default ${JSON.stringify(app(port, dirs.mjs))};\n`);
  writeFileSync(join(dirs.js, 'sidekick.config.js'), `module.exports = ${JSON.stringify(app(port, dirs.js))};\n`);
  writeFileSync(join(dirs.json, 'sidekick.config.json'), JSON.stringify(app(port, dirs.json)));

  const [mjs, js, json, none] = await Promise.all(
    (['mjs', 'js', 'json', 'none'] as const).map((k) => runCli(['check'], { cwd: dirs[k] })),
  );
  for (const [ext, r] of [
    ['mjs', mjs],
    ['js', js],
    ['json', json],
  ] as const) {
    assert.equal(r?.code, 0, `check in a dir with sidekick.config.${ext}: ${r?.stderr}`);
    assert.ok(r?.stdout.includes(join(dirs[ext], `sidekick.config.${ext}`)), `names the file found: ${r?.stdout}`);
  }
  assert.equal(none?.code, 78, none?.stderr);
  assert.match(none?.stderr ?? '', /SK_ERR_CONFIG_NOT_FOUND/);

  const noneServe = await runCli(['serve'], { cwd: dirs.none, timeoutMs: 15_000 });
  assert.equal(noneServe.code, 78, noneServe.stderr);
  assert.match(noneServe.stderr, /SK_ERR_CONFIG_NOT_FOUND/);

  // serve without -c runs the config of its working directory.
  const serve = serveOn(t, dirs.mjs, {}, { found: 1 }, ['serve']);
  await serve.waitReady();
  assert.ok(existsSync(join(dirs.mjs, 'admin.sock')), 'the admin socket the .mjs config names');
  assert.equal((await httpGet(port, '/hello')).status, 200);
  assert.deepEqual(await serve.stop(), { code: 0, signal: null });
});

test("the agent inside serve: readVars('agent').PROFILING_ENABLED goes from '1' to '0' in every HTTP worker once its breaker opens", async (t) => {
  const dir = scratch(t, 'sk-contract-agent-');
  const deadPort = await freePort(); // central is down: nothing listens there
  const agentSock = join(dir, 'agent.sock');
  const { serve, ports } = await startServe(
    dir,
    [{ name: 'web', workers: 2 }],
    {},
    { agent: breakerOpeningAgent(dir, agentSock, deadPort) },
  );
  t.after(() => serve.kill());
  const st = await serve.waitReady();
  const pids = serve.app(st, 'web').workers.map((w) => w.pid);

  /** readVars('agent') in each worker (fresh connections until every pid has answered). */
  const readAll = async (): Promise<Map<number, Record<string, string>>> => {
    const seen = new Map<number, Record<string, string>>();
    await waitFor('every worker to answer readVars(agent)', async () => {
      const r = await httpGet(ports.web!, '/read?name=agent');
      if (r.status === 200 && r.pid !== undefined)
        seen.set(r.pid, (JSON.parse(r.text) as { vars: Record<string, string> }).vars);
      return pids.every((p) => seen.has(p));
    });
    return seen;
  };
  const closed = await waitFor("PROFILING_ENABLED '1' in every worker while the breaker is closed", async () => {
    const all = await readAll();
    return [...all.values()].every((v) => v.PROFILING_ENABLED === '1') ? all : undefined;
  });
  for (const v of closed.values()) assert.equal(v.AGENT_BREAKER, 'closed');

  await sendOnce(agentSock, record('r1') + record('r2') + record('r3'));
  const open = await waitFor("PROFILING_ENABLED '0' in every worker", async () => {
    const all = await readAll();
    return [...all.values()].every((v) => v.PROFILING_ENABLED === '0') ? all : undefined;
  });
  for (const v of open.values()) assert.equal(v.AGENT_BREAKER, 'open', JSON.stringify(v));
});
