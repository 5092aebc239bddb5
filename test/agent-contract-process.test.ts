// Contract rules of the `sidekick agent` process that no other test drove (issue 13), each with real processes:
// recycling by uptime and by RSS, the worker leaving when its supervisor dies, SIGTERM reading what clients already
// wrote, the socket file removed at stop only if still ours, socketGroup, and the exit statuses for a locked spool and
// a metrics address in use. Records balance wherever they are involved: sent = delivered.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  agentConfig,
  balance,
  dedupedByBatchId,
  fileOutput,
  keysOf,
  record,
  sendLoad,
  startAgent,
  waitFor,
  writeConfig,
  type AgentProcess,
} from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';
import { settleWithin } from '../src/common/async.ts';
import { isAlive as alive } from './helpers/proc.ts';

/** Sends records on 2 connections until `until()` (checked between chunks), then a last chunk; returns every key. */
async function sendUntil(sock: string, prefix: string, until: () => Promise<boolean>): Promise<string[]> {
  const sent: string[] = [];
  let round = 0;
  for (;;) {
    const done = await until();
    sent.push(...(await sendLoad(sock, { connections: 2, count: 40, prefix: `${prefix}${round++}`, chunk: 10 })));
    if (done) return sent;
    await new Promise((r) => setTimeout(r, 100)); // pacing, not synchronisation
  }
}

async function recycleTest(agent: AgentProcess, sock: string, out: string, reason: RegExp): Promise<void> {
  const first = (await agent.status()).worker!.pid;
  const sent = await sendUntil(sock, 'rc', async () => (await agent.status()).recycles >= 1);
  const s = await agent.status();
  assert.ok(s.recycles >= 1);
  assert.notEqual(s.worker?.pid, first, 'a new worker pid');
  const lastRecycle = (s as unknown as { lastRecycle?: { reason: string } }).lastRecycle;
  assert.match(String(lastRecycle?.reason), reason);
  const recycled = agent.logs().filter((l) => l.msg === 'agent worker recycled');
  assert.ok(recycled.length >= 1);
  assert.equal(recycled[0]!.oldPid, first);
  assert.match(String(recycled[0]!.reason), reason);
  await waitFor(() => fileOutput(out).lines.length >= sent.length, 'every record written out', 20_000);
  const b = balance(sent, keysOf(fileOutput(out).lines));
  assert.deepEqual(b.missing, [], 'nothing lost across the recycle');
  assert.equal(b.duplicates, 0, 'nothing duplicated');
  assert.equal((await agent.stop()).code, 0);
}

test('recycle.maxUptimeMs: the worker is replaced (new pid, recycles +1, reason), no record lost across it', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({ recycle: { maxUptimeMs: 2000 } });
  const agent = await scope.startAgent();
  assert.equal((await agent.status()).recycles, 0);
  await recycleTest(agent, scope.sock, join(scope.dir, 'out'), /^maxUptimeMs \(\d+ >= 2000\)$/);
});

test('recycle.maxRssBytes: once the worker has run 10 s past the limit it is replaced, no record lost', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({ recycle: { maxRssBytes: 1024 * 1024 } }); // every worker is far above 1 MiB
  const agent = await scope.startAgent();
  const s0 = await agent.status();
  assert.equal(s0.recycles, 0);
  assert.ok(s0.gauges.rssBytes > 1024 * 1024);
  await recycleTest(agent, scope.sock, join(scope.dir, 'out'), /^maxRssBytes \(\d+ > 1048576\)$/);
});

test('the worker stops by itself when its supervisor is SIGKILLed, exits 0 without an uncaught exception; a new agent then starts on the same files', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({});
  const agent = await scope.startAgent();
  const sent = await sendLoad(scope.sock, { connections: 2, count: 100, prefix: 'or' });
  await waitFor(async () => (await agent.status()).counters.spooled === sent.length, 'records spooled');
  const worker = (await agent.status()).worker!.pid;
  // The worker writes to the stderr pipe it inherited; the pipe closes once the worker, its last writer, is gone.
  const stderrClosed = new Promise<void>((r) => agent.child.stderr!.once('close', () => r()));
  process.kill(agent.pid, 'SIGKILL'); // the supervisor only: the worker's IPC channel closes
  await agent.exited;
  await waitFor(() => !alive(worker), `the orphaned worker ${worker} to exit`, 10_000);
  assert.ok(
    await settleWithin(
      stderrClosed.then(() => true),
      10_000,
    ),
    'the worker closed its stderr',
  );
  // It left cleanly: no uncaught exception (process.disconnect() on the closed channel threw ERR_IPC_DISCONNECTED
  // after the pipeline had stopped: a stack on stderr and exit code 1), only log lines, and its last line says 0.
  const raw = agent.stderr();
  assert.doesNotMatch(raw, /ERR_IPC_DISCONNECTED|Uncaught|^\s+at /m, `no uncaught exception on stderr:\n${raw}`);
  const notJson = raw.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
  assert.deepEqual(notJson, [], 'stderr holds only log lines');
  const exiting = agent.logs().filter((l) => l.msg === 'agent worker exiting' && l.pid === worker);
  assert.equal(exiting.length, 1, `the worker logged its exit:\n${raw}`);
  assert.equal(exiting[0]!.code, 0, 'and its exit code is 0');
  const next = await scope.startAgent(); // the socket is free and the spool lock released
  await waitFor(() => fileOutput(join(scope.dir, 'out')).lines.length >= sent.length, 'every record written out');
  const b = balance(sent, keysOf(fileOutput(join(scope.dir, 'out')).lines));
  assert.deepEqual(b.missing, []);
  assert.equal((await next.stop()).code, 0);
});

test('SIGTERM right after clients wrote and half-closed: what they wrote is read and delivered after a restart', async (t) => {
  const scope = agentScope(t);
  const port = await scope.deadPort(); // central down during the first run: the records stay in the spool
  scope.writeConfig({
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest`, timeoutMs: 10_000, gzip: false },
    breaker: { failures: 2, halfOpenAfterMs: 300 },
  });
  let agent = await scope.startAgent();
  const n = 3000;
  const clients = 3;
  const sent: string[] = [];
  const closed: Promise<void>[] = [];
  const errors: unknown[] = [];
  const connected = await Promise.all(
    Array.from({ length: clients }, () => {
      const s = net.connect(scope.sock);
      s.on('error', (e) => errors.push(e));
      closed.push(new Promise((r) => s.once('close', () => r())));
      return new Promise<net.Socket>((r) => s.once('connect', () => r(s)));
    }),
  );
  connected.forEach((s, c) => {
    let buf = '';
    for (let i = 0; i < n; i++) {
      const k = `st-${c}-${i}`;
      sent.push(k);
      buf += record(k);
    }
    s.end(buf); // write everything (600 KB, more than the socket buffer takes) and half-close
  });
  const r = await agent.stop('SIGTERM'); // at once
  assert.equal(r.code, 0);
  await Promise.all(closed);
  assert.deepEqual(errors, [], 'no client saw an error: the agent read to their end');
  const central = await scope.startCentral(() => ({ status: 200 }), port);
  agent = await scope.startAgent();
  await waitFor(() => new Set(keysOf(central.delivered)).size >= sent.length, 'every record delivered', 20_000);
  const b = balance(sent, keysOf(dedupedByBatchId(central)));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0);
  assert.equal((await agent.stop()).code, 0);
});

test('the socket file is removed at stop only while it is ours: a replacement file is left alone', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({});
  let agent = await scope.startAgent();
  assert.ok(statSync(scope.sock).isSocket());
  assert.equal((await agent.stop()).code, 0);
  assert.equal(existsSync(scope.sock), false, 'our own socket is removed');
  agent = await scope.startAgent();
  renameSync(scope.sock, `${scope.sock}.moved`);
  writeFileSync(scope.sock, 'not the agent');
  assert.equal((await agent.stop()).code, 0);
  assert.equal(readFileSync(scope.sock, 'utf8'), 'not the agent', 'the replacement survives the stop');
});

test('socketGroup (as root): an existing group owns the socket; an unknown group exits 78 naming the field', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to chown the socket');
  const groups = readFileSync('/etc/group', 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .filter((f) => f.length >= 3 && f[2] !== '0' && /^\d+$/.test(f[2]!));
  if (groups.length === 0) return t.skip('no non-root group in /etc/group');
  const [name, , gid] = groups[0]!;
  const scope = agentScope(t);
  scope.writeConfig({ socketGroup: name });
  let agent = await scope.startAgent();
  const st = statSync(scope.sock);
  assert.equal(st.gid, Number(gid), `the socket belongs to group ${name}`);
  assert.equal(st.mode & 0o777, 0o660);
  assert.equal((await agent.stop()).code, 0);
  scope.writeConfig({ socketGroup: 'sk-no-such-group-13' });
  agent = await scope.startAgent({ ready: false });
  const r = await settleWithin(agent.exited, 15_000);
  assert.equal(r?.code, 78);
  assert.match(agent.stderr(), /agent\.socketGroup/);
  assert.match(agent.stderr(), /sk-no-such-group-13/);
});

test('exit 1: a spool locked by another live agent (SK_ERR_SPOOL_LOCKED), a metrics address in use (SK_ERR_LISTEN)', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({});
  const first = await scope.startAgent();
  // A second agent with its own socket and admin socket but the first one's spool directory.
  const other = join(scope.dir, 'second');
  mkdirSync(other);
  const cfg2 = writeConfig(other, agentConfig(other, { spool: { dir: join(scope.dir, 'spool') } }));
  const second = await startAgent(cfg2, { ready: false });
  t.after(() => second.crash());
  const r = await settleWithin(second.exited, 20_000); // the lock is waited for 5 s first
  assert.equal(r?.code, 1, 'exited 1 (before the fix it kept restarting its worker and never exited)');
  assert.match(second.stderr(), /SK_ERR_SPOOL_LOCKED/);
  assert.equal((await first.status()).state, 'running', 'the first agent is untouched');
  assert.equal((await first.stop()).code, 0);
  // metrics.listen on a taken address
  const taken = net.createServer();
  await new Promise<void>((ok) => taken.listen(0, '127.0.0.1', ok));
  t.after(() => new Promise<void>((ok) => taken.close(() => ok())));
  const port = (taken.address() as net.AddressInfo).port;
  scope.writeConfig({ metrics: { listen: `127.0.0.1:${port}` } });
  const third = await scope.startAgent({ ready: false });
  const r3 = await settleWithin(third.exited, 15_000);
  assert.equal(r3?.code, 1);
  assert.match(third.stderr(), /SK_ERR_LISTEN/);
  assert.match(third.stderr(), /agent\.metrics\.listen/);
  assert.equal(existsSync(scope.sock), false, 'nothing left behind');
});

test('hand-over leftovers of a previous run (<spool.dir>/handover) are removed by the first worker at start', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({});
  const leftover = join(scope.dir, 'spool', 'handover', '4242-1.partial');
  mkdirSync(join(scope.dir, 'spool', 'handover'), { recursive: true });
  writeFileSync(leftover, 'x'.repeat(10_000)); // a worker died between handing a connection over and its adoption
  const agent = await scope.startAgent();
  assert.equal(existsSync(leftover), false);
  assert.equal((await agent.stop()).code, 0);
});
