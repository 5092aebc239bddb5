// Fault injection, client side (issue 8): a real `sidekick agent` against clients that flood it with idle
// connections, send an endless line, or exhaust its file descriptors. Each test checks that well-behaved clients are
// still served, what the user sees (counters, SK_ERR_* log lines) and ends with the count: records sent = delivered
// (by the key `k` each record carries) + counted drops/invalid lines.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileOutput, keysOf, record, sendOnce, waitFor, type AgentProcess } from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';

/** CPU time (user + system) a process has used, in seconds. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Opens a connection and resolves once connected; `closed` tells whether the agent has closed it since. */
function connect(sock: string): Promise<{ socket: net.Socket; closed: () => boolean }> {
  return new Promise((resolve, reject) => {
    let closed = false;
    const socket = net.connect(sock);
    socket.on('error', () => undefined);
    socket.on('close', () => (closed = true));
    socket.on('end', () => socket.end());
    socket.once('connect', () => resolve({ socket, closed: () => closed }));
    socket.once('error', reject);
  });
}

async function workerPid(agent: AgentProcess): Promise<number> {
  return (await agent.status()).worker!.pid;
}

/** Every record key in the file exporter's output. */
function delivered(dir: string): string[] {
  return keysOf(fileOutput(join(dir, 'out')).lines);
}

test('file-descriptor limit: connections past the cap are closed and counted, held ones served, no crash or spin', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({ batch: { maxRecords: 20, maxDelayMs: 50 }, metrics: { listen: '127.0.0.1:0' } });
  const limit = 256; // the worker takes 256 - 128 = 128 client connections (the rest is kept for spool and exporter)
  const agent = await scope.startAgent({ wrap: ['prlimit', `--nofile=${limit}:${limit}`, '--'] });
  const wpid = await workerPid(agent);
  const conns: Awaited<ReturnType<typeof connect>>[] = [];
  const settled = (): Promise<Awaited<ReturnType<AgentProcess['status']>>> =>
    waitFor(async () => {
      const s = await agent.status();
      const closed = conns.filter((c) => c.closed()).length;
      return s.gauges.openConnections + closed === conns.length && s;
    }, 'every connection held or closed by the agent');
  for (let i = 0; i < 160; i++) conns.push(await connect(scope.sock));
  const s1 = await settled();
  assert.equal(s1.gauges.openConnections, 128, 'held up to the cap');
  assert.equal(conns.filter((c) => c.closed()).length, 32, 'the agent closed the connections past the cap');
  assert.equal(s1.counters.rejectedConnections, 32);
  assert.equal(s1.counters.connections, 128);
  assert.ok(openFds(wpid) < limit, `the worker keeps descriptors free (${openFds(wpid)} of ${limit})`);
  const capLogs = agent.logs().filter((l) => l.code === 'SK_ERR_TOO_MANY_CONNECTIONS');
  assert.equal(capLogs.length, 1, 'logged once (rate-limited), counted exactly');
  assert.match(String(capLogs[0]!.msg), /128 client connections open/);
  const metrics = await (await fetch(`http://127.0.0.1:${s1.metrics!.port!}/metrics`)).text();
  assert.match(metrics, /sidekick_agent_rejected_connections_total 32/);
  // The connections it holds are served: records on every 4th one are delivered while the cap is reached.
  const held = conns.filter((c) => !c.closed());
  const sent: string[] = [];
  for (let i = 0; i < held.length; i += 4) {
    const keys = Array.from({ length: 5 }, (_, j) => `held-${i}-${j}`);
    sent.push(...keys);
    held[i]!.socket.write(keys.map((k) => record(k)).join(''));
  }
  await waitFor(() => delivered(scope.dir).length === sent.length, 'records on held connections delivered');
  // More connection attempts at the cap: each is closed at once; the worker does not spin.
  const cpu0 = cpuSeconds(wpid);
  for (let i = 0; i < 40; i++) {
    conns.push(await connect(scope.sock));
    await new Promise((r) => setTimeout(r, 25)); // pacing the attempts, not a synchronisation
  }
  const s2 = await settled();
  const cpu = cpuSeconds(wpid) - cpu0;
  assert.equal(s2.counters.rejectedConnections, 72);
  assert.ok(cpu < 1, `worker CPU over 40 rejected attempts: ${cpu.toFixed(2)} s (a hot accept loop burns a core)`);
  // Connections close: the agent accepts again.
  for (const c of held) c.socket.destroy();
  await waitFor(async () => (await agent.status()).gauges.openConnections === 0, 'held connections gone');
  const after = Array.from({ length: 10 }, (_, i) => `after-${i}`);
  sent.push(...after);
  await sendOnce(scope.sock, after.map((k) => record(k)).join(''));
  await waitFor(() => delivered(scope.dir).length === sent.length, 'records after recovery delivered');
  assert.deepEqual(delivered(scope.dir).sort(), [...sent].sort(), 'sent = delivered, each once');
  const s3 = await agent.status();
  assert.equal(s3.worker!.pid, wpid, 'the same worker all along');
  assert.equal(s3.restarts, 0);
  for (const c of conns) c.socket.destroy();
  assert.equal((await agent.stop()).code, 0);
});

test('descriptors exhausted for real (limit lowered under a running worker): libuv closes new connections, the worker survives and recovers', async (t) => {
  const scope = agentScope(t);
  scope.writeConfig({ batch: { maxRecords: 20, maxDelayMs: 50 } });
  const agent = await scope.startAgent();
  const wpid = await workerPid(agent);
  // The cap was computed from the limit at start (20000 here); lowering the limit now makes accept() fail with EMFILE.
  const limit = openFds(wpid) + 32;
  execFileSync('prlimit', [`--pid=${wpid}`, `--nofile=${limit}:${limit}`]);
  const conns: Awaited<ReturnType<typeof connect>>[] = [];
  for (let i = 0; i < 60; i++) conns.push(await connect(scope.sock));
  const cpu0 = cpuSeconds(wpid);
  // Status reads the worker's RSS (an open of /proc/self/stat): it used to throw EMFILE and crash the worker.
  const s1 = await waitFor(async () => {
    const s = await agent.status();
    const closed = conns.filter((c) => c.closed()).length;
    return s.gauges.openConnections + closed === conns.length && s;
  }, 'every connection held or closed');
  const held = conns.filter((c) => !c.closed());
  assert.ok(held.length > 0 && held.length < 60, `some held (${held.length}), the rest closed by libuv at EMFILE`);
  const sent = Array.from({ length: 10 }, (_, i) => `held-${i}`);
  held[0]!.socket.write(sent.map((k) => record(k)).join(''));
  await waitFor(async () => (await agent.status()).counters.spooled === 10, 'records on a held connection spooled');
  assert.ok(cpuSeconds(wpid) - cpu0 < 1, 'no hot loop at EMFILE');
  for (const c of conns) c.socket.destroy();
  await waitFor(async () => (await agent.status()).gauges.openConnections === 0, 'connections gone');
  const after = Array.from({ length: 10 }, (_, i) => `after-${i}`);
  await sendOnce(scope.sock, after.map((k) => record(k)).join(''));
  sent.push(...after);
  await waitFor(
    () => delivered(scope.dir).length === sent.length,
    'everything delivered once descriptors are free',
    20_000,
  );
  assert.deepEqual(delivered(scope.dir).sort(), [...sent].sort());
  const s2 = await agent.status();
  assert.equal(s2.worker!.pid, wpid, 'the worker did not crash');
  assert.equal(s2.restarts, 0);
  assert.ok(s1.gauges.rssBytes > 0, 'the last RSS reading is reported');
  assert.equal((await agent.stop()).code, 0);
});
