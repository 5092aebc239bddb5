// Lifecycle of a real `sidekick agent`: invalid config at restart with a backlog (exit 78, backlog kept), SIGTERM
// while central is slow, SIGHUP under load, worker recycling under load, stale vs live socket.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  agentConfig,
  balance,
  Client,
  dedupedByBatchId,
  fileOutput,
  keysOf,
  record,
  sendLoad,
  sendOnce,
  waitFor,
  writeConfig,
} from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';

test('restart with an invalid config while a backlog exists: exit 78 naming the field, backlog kept, delivered later', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const port = await scope.deadPort();
  const good = agentConfig(dir, {
    exporter: { type: 'http', url: `http://127.0.0.1:${port}/ingest`, timeoutMs: 10_000 },
    breaker: { failures: 2, halfOpenAfterMs: 200 },
  });
  writeConfig(dir, good);
  let agent = await scope.startAgent();
  const sent = await sendLoad(join(dir, 'agent.sock'), { connections: 2, count: 100, prefix: 'v' });
  await waitFor(async () => (await agent.status()).counters.spooled === 200, 'records spooled');
  assert.equal((await agent.stop()).code, 0, 'graceful stop with central down');
  writeConfig(dir, { ...good, batch: { maxRecords: 0, maxDelayMs: 100 } });
  agent = await scope.startAgent({ ready: false });
  const r = await agent.exited;
  assert.equal(r.code, 78);
  assert.match(agent.stderr(), /agent\.batch\.maxRecords/);
  assert.ok(
    readdirSync(join(dir, 'spool')).some((n) => n.startsWith('seg-')),
    'the spool is untouched',
  );
  writeConfig(dir, good);
  const central = await scope.startCentral(() => ({ status: 200 }), port);
  agent = await scope.startAgent();
  await waitFor(() => central.delivered.length >= 200, 'the backlog delivered on the next good start', 15_000);
  const b = balance(sent, keysOf(central.delivered));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0);
  assert.equal((await agent.stop()).code, 0);
});

test('SIGTERM while central is slow: its own stop deadline (stopTimeoutMs) ends the last round, exit 0, the rest is delivered after restart', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const central = await scope.startCentral(() => ({ status: 200, delayMs: 400 }));
  const stopTimeoutMs = 3000;
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs: 5000 },
    batch: { maxRecords: 10, maxDelayMs: 50 },
    stopTimeoutMs,
  });
  let agent = await scope.startAgent();
  const sent = await sendLoad(join(dir, 'agent.sock'), { connections: 2, count: 200, prefix: 't' });
  await waitFor(async () => (await agent.status()).counters.spooled === 400, 'records spooled');
  const t0 = Date.now();
  const r = await agent.stop('SIGTERM');
  t.diagnostic(`stopped in ${Date.now() - t0} ms (stopTimeoutMs ${stopTimeoutMs})`);
  assert.equal(r.code, 0);
  // The worker ended its last round itself at the deadline, records still pending (without the deadline the last
  // round goes on until central has taken everything); the supervisor's backstop (stopTimeoutMs + 3 s, then a kill)
  // was not needed.
  const stopped = agent.logs().filter((l) => l.msg === 'agent pipeline stopped');
  assert.equal(stopped.length, 1, agent.stderr());
  assert.equal(stopped[0]!.final, true);
  assert.ok(Number(stopped[0]!.pendingRecords) > 0, `records left for the next start: ${JSON.stringify(stopped[0])}`);
  assert.doesNotMatch(agent.stderr(), /did not stop in time; killing it/);
  const firstRun = central.delivered.length;
  assert.ok(firstRun < 400, 'a slow central could not take everything before the deadline');
  central.reply = () => ({ status: 200 });
  agent = await scope.startAgent();
  await waitFor(() => new Set(keysOf(central.delivered)).size === 400, 'the rest delivered', 20_000);
  const b = balance(sent, keysOf(dedupedByBatchId(central)));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0);
  assert.equal((await agent.stop()).code, 0);
});

test('SIGHUP under load: valid reloads apply, an invalid one is refused; no loss, no duplicate batch ids', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const central = await scope.startCentral(() => ({ status: 200 }));
  const base = agentConfig(dir, {
    exporter: { type: 'http', url: central.url, timeoutMs: 10_000 },
    batch: { maxRecords: 50, maxDelayMs: 50 },
  });
  writeConfig(dir, base);
  const agent = await scope.startAgent();
  const load = sendLoad(join(dir, 'agent.sock'), {
    connections: 4,
    count: 5000,
    prefix: 'h',
    chunk: 20,
    pauseMs: 8, // ~2 s of load, so every reload lands while records are flowing
  });
  const variants = [
    { ...base, batch: { maxRecords: 80, maxDelayMs: 30 } },
    { ...base, batch: { maxRecords: -1 } }, // invalid
    { ...base, batch: { maxRecords: 25, maxDelayMs: 20 }, breaker: { failures: 3, halfOpenAfterMs: 500 } },
    { ...base, exporter: { type: 'http', url: central.url, timeoutMs: 10_000, gzip: false } },
  ];
  // A reload is handled once the worker applied it (its line carries `restartRequired`; the supervisor's own line
  // comes before the worker has the new settings) or the supervisor refused it.
  const handled = (): number =>
    agent
      .logs()
      .filter(
        (l) => (l.msg === 'agent config reloaded' && 'restartRequired' in l) || /reload rejected/.test(String(l.msg)),
      ).length;
  /** central.requests.length when each reload had been handled. */
  const marks: number[] = [];
  const breakers: unknown[] = [];
  let hups = 0;
  for (const v of variants) {
    // Let records flow under the previous settings (the load goes on meanwhile: this paces the reloads, it does
    // not wait for anything).
    await new Promise((r) => setTimeout(r, 150));
    writeConfig(dir, v);
    process.kill(agent.pid, 'SIGHUP');
    hups++;
    await waitFor(() => handled() >= hups, `reload ${hups} handled`);
    marks.push(central.requests.length);
    const { failures, halfOpenAfterMs } = (await agent.status()).pipeline!.breaker! as unknown as {
      failures: number;
      halfOpenAfterMs: number;
    };
    breakers.push({ failures, halfOpenAfterMs });
  }
  const sent = await load;
  await waitFor(() => central.delivered.length >= sent.length, 'everything delivered', 30_000);
  const b = balance(sent, keysOf(central.delivered));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0);
  assert.equal(new Set(central.deliveredIds).size, central.deliveredIds.length, 'no batch id delivered twice');
  const rejected = agent.logs().filter((l) => /reload rejected/.test(String(l.msg)));
  assert.equal(rejected.length, 1);
  assert.match(String(rejected[0]!.msg), /agent\.batch\.maxRecords/);
  // Each valid reload applied. 1 (batch.maxRecords 80): batches above the base 50 were cut after it. 3 (breaker
  // 3 / 500 ms): the breaker reports the new thresholds, and 4 (the base breaker) the old ones again; the invalid
  // one (2) changed nothing. 4 (gzip off): requests went out uncompressed.
  const batchesAfterReload1 = central.requests.slice(marks[0], marks[2]).map((r) => r.records.length);
  assert.ok(
    batchesAfterReload1.some((n) => n > 50),
    `batches of more than 50 after reload 1: ${batchesAfterReload1.join(',')}`,
  );
  assert.ok(
    central.requests.every((r) => r.records.length <= 80),
    'no batch above the largest maxRecords',
  );
  assert.deepEqual(breakers, [
    { failures: 5, halfOpenAfterMs: 300 },
    { failures: 5, halfOpenAfterMs: 300 },
    { failures: 3, halfOpenAfterMs: 500 },
    { failures: 5, halfOpenAfterMs: 300 },
  ]);
  assert.ok(
    central.requests.slice(0, marks[2]).every((r) => r.gzip),
    'gzip on (the default) until the last reload',
  );
  assert.ok(
    central.requests.slice(marks[3]).some((r) => !r.gzip),
    'the last reload (gzip off) applied',
  );
  const s = await agent.status();
  assert.equal(s.worker?.generation, 1, 'live settings apply without a new worker');
  assert.equal(s.counters.exported, sent.length);
  assert.equal((await agent.stop()).code, 0);
});

test('recycle under load (recycle.maxRecords): long-lived connections move to the new worker, nothing lost', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const central = await scope.startCentral(() => ({ status: 200 }));
  scope.writeConfig({
    exporter: { type: 'http', url: central.url, timeoutMs: 10_000 },
    batch: { maxRecords: 100, maxDelayMs: 50, maxInFlight: 1 }, // strict order, checked per connection
    recycle: { maxRecords: 4000 },
  });
  const agent = await scope.startAgent();
  const firstWorker = (await agent.status()).worker!.pid;
  // 4 long-lived connections; each writes in small chunks with pauses, so the stream spans several workers.
  const sent = await sendLoad(join(dir, 'agent.sock'), {
    connections: 4,
    count: 4000,
    prefix: 'r',
    chunk: 25,
    pauseMs: 25,
  });
  // and short connections (one record each, like PHP-FPM clients) while recycling continues
  const shortKeys: string[] = [];
  for (let i = 0; i < 200; i++) {
    shortKeys.push(`short-${i}`);
    await sendOnce(join(dir, 'agent.sock'), record(`short-${i}`));
  }
  sent.push(...shortKeys);
  await waitFor(() => central.delivered.length >= sent.length, 'everything delivered', 30_000);
  const s = await waitFor(async () => {
    const st = await agent.status();
    return st.counters.exported === sent.length && st;
  }, 'counters to settle');
  // 16 200 records over a 4 000-record limit: at least one hand-over happened mid-stream (how many depends on how
  // fast a loaded machine drains between checks; the property under test is that none loses or repeats a record).
  assert.ok(s.recycles >= 1, `recycled ${s.recycles} times`);
  assert.notEqual(s.worker!.pid, firstWorker);
  assert.equal(s.restarts, 0, 'no crash');
  const b = balance(sent, keysOf(central.delivered));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0);
  assert.equal(new Set(central.deliveredIds).size, central.deliveredIds.length, 'no batch id delivered twice');
  assert.equal(s.counters.received, sent.length, 'counters stay monotonic across workers');
  for (let c = 0; c < 4; c++) {
    const mine = keysOf(central.delivered).filter((k) => k.startsWith(`r-${c}-`));
    assert.deepEqual(
      mine,
      sent.filter((k) => k.startsWith(`r-${c}-`)),
      `connection ${c} in order`,
    );
  }
  assert.equal((await agent.stop()).code, 0);
});

test('a crashed worker is restarted with backoff; the socket stays and a connection made once it is gone is served', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  scope.writeConfig();
  const agent = await scope.startAgent();
  const w1 = (await agent.status()).worker!.pid;
  process.kill(w1, 'SIGKILL');
  // The supervisor saw the worker go and scheduled the restart after the first step of its backoff (100 ms).
  const exitLine = await waitFor(
    () => agent.logs().find((l) => l.pid === w1 && String(l.msg).includes('agent worker exited unexpectedly')),
    'the supervisor to see the worker exit',
  );
  assert.equal(exitLine.signal, 'SIGKILL');
  assert.equal(exitLine.consecutive, 1);
  assert.equal(exitLine.restartInMs, 100, 'restart delayed by the backoff');
  // The worker is gone now: connecting still works (the supervisor holds the socket; the connection waits in its
  // backlog until the next worker accepts it).
  await sendOnce(join(dir, 'agent.sock'), record('after-the-crash'));
  const s = await waitFor(async () => {
    const st = await agent.status();
    return st.state === 'running' && st.worker!.pid !== w1 && st.counters.exported === 1 && st;
  }, 'a new worker, and the record sent after the crash exported');
  assert.equal(s.restarts, 1);
  assert.deepEqual(keysOf(fileOutput(join(dir, 'out')).lines), ['after-the-crash']);
  assert.equal((await agent.stop()).code, 0);
});

test('socket: a stale file is replaced; a live socket is never stolen (exit 1, SK_ERR_SOCKET_IN_USE)', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const sock = join(dir, 'agent.sock');
  // a live listener on the agent's path
  const other = net.createServer((s) => s.end());
  await new Promise<void>((r) => other.listen(sock, r));
  t.after(() => other.close());
  scope.writeConfig();
  let agent = await scope.startAgent({ ready: false });
  const r = await agent.exited;
  assert.equal(r.code, 1);
  assert.match(agent.stderr(), /SK_ERR_SOCKET_IN_USE/);
  await new Promise<void>((res, rej) => {
    const c = net.connect(sock, () => {
      c.destroy();
      res();
    });
    c.on('error', rej);
  });
  await new Promise<void>((r2) => other.close(() => r2()));
  // a stale socket file: bound, then its owner died without unlinking it
  spawnSync(process.execPath, [
    '-e',
    `const s=require('net').createServer().listen(${JSON.stringify(sock)},()=>process.kill(process.pid,'SIGKILL'))`,
  ]);
  assert.ok(existsSync(sock) && statSync(sock).isSocket(), 'a stale socket file is left behind');
  agent = await scope.startAgent();
  assert.equal((statSync(sock).mode & 0o777).toString(8), '660', 'socketMode applied');
  await sendOnce(sock, record('x'));
  await waitFor(async () => (await agent.status()).counters.exported === 1, 'the record exported');
  // a second agent on the same config must not steal the live socket either
  const second = await scope.startAgent({ ready: false });
  assert.equal((await second.exited).code, 1);
  assert.match(second.stderr(), /SK_ERR_SOCKET_IN_USE/, 'refused because the socket is in use, not for another reason');
  await sendOnce(sock, record('y'));
  await waitFor(async () => (await agent.status()).counters.exported === 2, 'the first agent still serves');
  assert.equal((await agent.stop()).code, 0);
  assert.ok(!existsSync(sock), 'a clean stop removes its own socket file');
});

test('file exporter: many concurrent and slow clients, mixed invalid input; output is exactly the good lines', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  scope.writeConfig({ maxRecordBytes: 1024, metrics: { listen: '127.0.0.1:0' }, batch: { maxRecords: 30 } });
  const agent = await scope.startAgent();
  const sock = join(dir, 'agent.sock');
  const good: string[] = [];
  const expectInvalid = { too_large: 0, not_json: 0, not_object: 0 };
  const tasks: Promise<void>[] = [];
  for (let c = 0; c < 40; c++) {
    let data = '';
    for (let i = 0; i < 25; i++) {
      const k = `g-${c}-${i}`;
      good.push(k);
      data += record(k, 100 + ((c * 7 + i * 13) % 400));
      if (i % 5 === 0) {
        data += `{"k":"huge","pad":"${'z'.repeat(2000)}"}\n`;
        expectInvalid.too_large++;
      }
      if (i % 7 === 0) {
        data += 'this is not json\n';
        expectInvalid.not_json++;
      }
      if (i % 9 === 0) {
        data += '["an","array"]\n';
        expectInvalid.not_object++;
      }
      if (i % 11 === 0) {
        data += '\x00\x01\xff\xfebinary\n';
        expectInvalid.not_json++;
      }
    }
    const buf = Buffer.from(data, 'latin1');
    if (c % 4 === 0) {
      // a slow client: tiny writes with pauses (lines split across many reads)
      tasks.push(
        new Promise<void>((resolve, reject) => {
          const s = net.connect(sock);
          s.on('error', reject);
          let pos = 0;
          const tick = (): void => {
            if (pos >= buf.length) {
              s.end();
              return;
            }
            s.write(buf.subarray(pos, pos + 97));
            pos += 97;
            setTimeout(tick, 1);
          };
          s.on('connect', tick);
          s.on('close', () => resolve());
        }),
      );
    } else {
      tasks.push(sendOnce(sock, buf));
    }
  }
  await Promise.all(tasks);
  const s = await waitFor(async () => {
    const st = await agent.status();
    return st.counters.exported === good.length && st;
  }, 'all good records exported');
  assert.deepEqual({ ...s.counters.invalid }, { ...expectInvalid, bad_control: 0, stalled: 0 });
  assert.equal(s.counters.received, good.length + Object.values(expectInvalid).reduce((a, b) => a + b, 0));
  const out = fileOutput(join(dir, 'out'));
  const b = balance(good, keysOf(out.lines));
  assert.deepEqual(b.missing, []);
  assert.equal(b.duplicates, 0);
  assert.ok(out.files.length >= 2, 'one file per batch');
  assert.deepEqual(readdirSync(join(dir, 'out', '.tmp')), [], 'no half-written file left');
  // Prometheus text
  const port = s.metrics!.port!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  assert.match(text, new RegExp(`sidekick_agent_exported_records_total ${good.length}`));
  assert.match(
    text,
    new RegExp(`sidekick_agent_invalid_records_total\\{reason="too_large"\\} ${expectInvalid.too_large}`),
  );
  assert.match(text, /sidekick_agent_breaker_state 0/);
  assert.equal((await agent.stop()).code, 0);
});

test('SIGHUP with a new agent.socket: re-bound via a recycle; open connections keep working, the old path goes', async (t) => {
  const scope = agentScope(t);
  const dir = scope.dir;
  const base = agentConfig(dir);
  writeConfig(dir, base);
  const agent = await scope.startAgent();
  const oldSock = join(dir, 'agent.sock');
  const newSock = join(dir, 'moved.sock');
  const client = new Client(oldSock);
  await client.ready;
  await client.write(record('before-0') + record('before-1'));
  await waitFor(async () => (await agent.status()).counters.exported === 2, 'first records exported');
  writeConfig(dir, { ...base, socket: newSock });
  process.kill(agent.pid, 'SIGHUP');
  const s = await waitFor(async () => {
    const st = (await agent.status()) as Awaited<ReturnType<typeof agent.status>> & { socket: string };
    return st.socket === newSock && st.worker?.generation === 2 && st.state === 'running' && st;
  }, 'the agent to move to the new socket');
  assert.equal(s.recycles, 1);
  assert.ok(existsSync(newSock) && statSync(newSock).isSocket());
  assert.ok(!existsSync(oldSock), 'the old socket file is removed');
  await client.write(record('after-on-old-connection'));
  await client.end();
  await sendOnce(newSock, record('after-on-new-socket'));
  await waitFor(async () => (await agent.status()).counters.exported === 4, 'all four records exported');
  const keys = keysOf(fileOutput(join(dir, 'out')).lines).sort();
  assert.deepEqual(keys, ['after-on-new-socket', 'after-on-old-connection', 'before-0', 'before-1']);
  assert.equal((await agent.stop()).code, 0);
});
