// Fault injection, spool side (issue 8): the spool directory removed, its filesystem made read-only, or its
// permissions removed while a real `sidekick agent` runs with records flowing, central up and then central down
// (503). Each test injects the fault mid-stream, holds it while the stream goes on, undoes it where that applies, and
// ends with the count: records sent = delivered (by the key `k` each record carries, de-duplicated) + counted drops by
// reason + client drops + dead-lettered, the missing keys being exactly the counted drops; the agent never exited and
// its worker never restarted; the user sees the fault in the log (a catalogued SK_ERR_* code) and in the counters
// (docs/agent.md "Spool directory lost or read-only").
// - Removed (`rm -rf`): detected within a second, the directory recreated, what open files still held read back,
//   the rest counted spool_removed (SK_ERR_SPOOL_REMOVED).
// - Read-only: `mount -o remount,ro` of the spool's tmpfs is refused by the kernel while the agent holds its segment
//   and ledger open for writing (EBUSY; checked). A read-only bind mount over the spool directory gives every path
//   operation EROFS (rolls, deletes, side files) while open files stay writable, like a read-only filesystem to
//   everything the spool opens by name; `umount` undoes it. Root only (skipped otherwise).
// - chmod 000: root ignores it, so the agent runs as nobody (setpriv) for it, from an installed copy of the package in
//   its temp dir (the checkout may be out of nobody's reach); EACCES behaves like EROFS. Root only.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { dedupedByBatchId, keysOf, sendLoad, waitFor, type AgentProcess, type AgentStatus } from './helpers/agent.ts';
import { agentScope, type AgentScope } from './helpers/agent-scope.ts';
import { installedCopy, NOBODY } from './helpers/installed-copy.ts';

const CONNECTIONS = 4;
const PER_CONNECTION = 2500; // 4 × 2500 × 200 B = 2 MB over ~1.5 s (pauseMs): the fault lands mid-stream
const SENT = CONNECTIONS * PER_CONNECTION;
const SEGMENT_BYTES = 128 * 1024; // several segments in a short outage
const HOLD_MS = 1500;

interface SpoolView {
  pendingRecords: number;
  segments: number;
  writeErrors: number;
  removedDroppedRecords: number;
  salvagedRecords: number;
  dirLost: number;
}

function spoolOf(s: AgentStatus): SpoolView {
  const spool = s.pipeline?.spool as SpoolView | undefined;
  assert.ok(spool, 'status has pipeline.spool');
  return spool;
}

function droppedTotal(s: AgentStatus): number {
  return Object.values(s.counters.dropped).reduce((a, b) => a + b, 0);
}

interface Fault {
  centralUp: boolean;
  spoolDir: string;
  /** Injects the fault, mid-stream. */
  inject(): void;
  /** Undoes it, after HOLD_MS with the stream going on. */
  undo?(): void;
  /** Runs the agent under this wrapper (e.g. as another user). */
  wrap?: string[];
  /** Runs this bin/sidekick.js (e.g. an installedCopy() the other user can read). */
  bin?: string;
}

interface Outcome {
  agent: AgentProcess;
  end: AgentStatus;
  /** The status at the end of the hold, the fault still in place. */
  held: AgentStatus;
  logs: Record<string, unknown>[];
}

/** One run: stream, fault, hold, undo, central back, settle; asserts the end-to-end count and that nothing restarted. */
async function run(t: TestContext, scope: AgentScope, fault: Fault): Promise<Outcome> {
  let up = fault.centralUp;
  const central = await scope.startCentral(() => ({ status: up ? 200 : 503 }));
  scope.writeConfig({
    spool: { dir: fault.spoolDir, segmentBytes: SEGMENT_BYTES },
    exporter: { type: 'http', url: central.url, timeoutMs: 5000, gzip: false },
    batch: { maxRecords: 200, maxDelayMs: 50, maxInFlight: 2 },
    breaker: { failures: 5, halfOpenAfterMs: 200 },
    memory: { maxBytes: 16 * 1024 * 1024 },
  });
  const agent = await scope.startAgent({ wrap: fault.wrap, bin: fault.bin });
  const first = await agent.status();
  let sendDone = false;
  const sending = sendLoad(scope.sock, {
    connections: CONNECTIONS,
    count: PER_CONNECTION,
    prefix: 'r',
    size: 200,
    chunk: 50,
    pauseMs: 25,
  }).finally(() => (sendDone = true));
  await waitFor(async () => (await agent.status()).counters.received >= SENT / 3, 'a third of the records received');
  if (!fault.centralUp) {
    await waitFor(async () => spoolOf(await agent.status()).segments >= 4, 'a backlog of several segments');
  }
  fault.inject();
  const holdUntil = Date.now() + HOLD_MS;
  let held = await agent.status();
  while (Date.now() < holdUntil) {
    held = await agent.status();
    assert.equal(held.restarts, 0, `the worker did not restart\n${agent.stderr()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  fault.undo?.();
  up = true;
  await waitFor(() => sendDone, 'the clients to finish (no wedge)', 20_000, 50);
  const sent = await sending;
  assert.equal(sent.length, SENT);
  const delivered = (): Set<string> => new Set(keysOf(central.delivered));
  const end = await waitFor(
    async () => {
      const s = await agent.status();
      return (
        spoolOf(s).pendingRecords === 0 &&
        delivered().size + droppedTotal(s) + s.counters.deadLettered + s.counters.clientDropped >= SENT &&
        s
      );
    },
    'every record delivered or counted',
    30_000,
    100,
  );
  const got = delivered();
  const counted = droppedTotal(end) + end.counters.deadLettered + end.counters.clientDropped;
  t.diagnostic(
    `sent ${SENT} = delivered ${got.size} (${central.delivered.length} with duplicates) + dropped ` +
      `${JSON.stringify(end.counters.dropped)} + client drops ${end.counters.clientDropped} + dead-lettered ` +
      `${end.counters.deadLettered}; during the fault: received ${held.counters.received}, write errors ` +
      `${spoolOf(held).writeErrors}; spool ${JSON.stringify({ salvaged: spoolOf(end).salvagedRecords, dirLost: spoolOf(end).dirLost })}`,
  );
  assert.equal(SENT, got.size + counted, 'sent = delivered + dropped + client drops + dead-lettered');
  const missing = sent.filter((k) => !got.has(k));
  assert.equal(missing.length, counted, 'the missing records are exactly the counted ones');
  for (const k of got) assert.ok(k.startsWith('r-'), `only sent records arrive (${k})`);
  const once = keysOf(dedupedByBatchId(central));
  if (once.length !== new Set(once).size) {
    // which batch ids carried the same records, and when (the spool's log lines around it tell the sequence)
    const idsOf = new Map<string, string[]>();
    for (const r of central.requests) {
      if (r.status < 200 || r.status >= 300) continue;
      for (const k of keysOf(r.records)) idsOf.set(k, [...(idsOf.get(k) ?? []), `${r.batchId}@${r.at}`]);
    }
    const twice = new Set<string>();
    for (const ids of idsOf.values()) if (new Set(ids.map((i) => i.split('@')[0])).size > 1) twice.add(ids.join(' '));
    t.diagnostic(`records under two batch ids: ${[...twice].slice(0, 20).join(' | ')}`);
    t.diagnostic(
      `spool logs: ${JSON.stringify(agent.logs().filter((l) => /spool|SPOOL/.test(String(l.msg ?? l.code))))}`,
    );
  }
  assert.equal(once.length, new Set(once).size, 'a record delivered twice was so under the same batch id');
  assert.equal(end.counters.received, SENT);
  assert.equal(end.state, 'running');
  assert.equal(end.restarts, 0, 'the worker never restarted');
  assert.equal(end.worker?.pid, first.worker?.pid, 'the same worker throughout');
  assert.equal(agent.child.exitCode, null, 'the agent never exited');
  return { agent, end, held, logs: agent.logs() };
}

function withCode(logs: Record<string, unknown>[], code: string): Record<string, unknown>[] {
  return logs.filter((l) => l.code === code);
}

const FORK_PROBE = "require('node:child_process').execFileSync(process.execPath, ['-e', '0'])";

function isRoot(t: TestContext, what: string): boolean {
  if (process.getuid?.() === 0) return true;
  t.skip(`needs root to ${what}`);
  return false;
}

/**
 * A 16 MiB tmpfs outside the scope's directory (whose teardown removes files), unmounted after the test: register it
 * after agentScope(t), so the agents are gone first. Never throws in teardown.
 */
function mountTmpfs(t: TestContext): string {
  const base = join('/tmp', `sk-spool-fs-${process.pid}-${Date.now()}`);
  mkdirSync(base);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', base], { stdio: 'pipe' });
  t.after(() => {
    const spool = join(base, 'spool');
    for (const target of [spool, base]) {
      // the bind mount over the spool directory (if the undo did not run), then the tmpfs
      if (!execFileSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' }).split('\n').includes(target))
        continue;
      try {
        execFileSync('umount', [target], { stdio: 'pipe' });
      } catch {
        execFileSync('umount', ['-l', target], { stdio: 'pipe' }); // still busy: detached now, freed when released
      }
    }
    rmSync(base, { recursive: true, force: true });
  });
  return base;
}

for (const centralUp of [true, false]) {
  const central = centralUp ? 'central up' : 'central down';

  test(`spool directory removed (rm -rf) mid-stream, ${central}: recreated, read back or counted spool_removed`, async (t) => {
    const scope = agentScope(t);
    const spoolDir = join(scope.dir, 'spool');
    const { end, logs } = await run(t, scope, {
      centralUp,
      spoolDir,
      // Gone from its path in one step (a recursive rm races the agent, which keeps writing, and fails ENOTEMPTY);
      // for the agent that is the same as rm -rf: the path is missing, its open files still work.
      inject: () => {
        renameSync(spoolDir, `${spoolDir}.removed`);
        rmSync(`${spoolDir}.removed`, { recursive: true, force: true, maxRetries: 5 });
      },
    });
    const lines = withCode(logs, 'SK_ERR_SPOOL_REMOVED');
    assert.ok(lines.length >= 1, 'SK_ERR_SPOOL_REMOVED logged');
    assert.equal(lines[0]!.level, 'error');
    // only the agent recreates the directory here: nothing of its own may be in it to recover (a writer roll landing
    // in it mid-rebuild was recovered there and read back through the open file too: two batch ids per record)
    for (const l of lines) assert.equal(l.foundRecords ?? 0, 0, `nothing recovered from the recreated directory`);
    const removed = end.counters.dropped.spool_removed;
    assert.equal(
      lines.reduce((n, l) => n + (l.droppedRecords as number), 0),
      removed,
      'the log lines add up to the spool_removed counter',
    );
    assert.equal(spoolOf(end).removedDroppedRecords, removed);
    assert.ok(spoolOf(end).dirLost >= 1);
    const others = { ...end.counters.dropped, spool_removed: 0 };
    assert.deepEqual(Object.values(others), [0, 0, 0, 0], 'no other drop reason (before: spool_corrupt)');
    if (!centralUp) {
      // the closed segments no file was open on went with the directory: counted, and only those
      assert.ok(removed > 0, 'records on closed segments were lost with the directory, and counted');
      assert.ok(spoolOf(end).salvagedRecords > 0, 'the write segment was read back through its open file');
    }
    // the directory is a working spool again: lock, ledger, segments
    const names = readdirSync(spoolDir);
    assert.ok(names.includes('LOCK') && names.includes('ledger'), `recreated spool: ${names.join(', ')}`);
    t.diagnostic(`SK_ERR_SPOOL_REMOVED: ${JSON.stringify(lines[0])}`);
  });

  test(`spool filesystem read-only mid-stream, ${central}: buffered, held back, resumes once writable`, async (t) => {
    if (!isRoot(t, 'mount a tmpfs')) return;
    const scope = agentScope(t); // first: its teardown (the agents killed) runs before the unmount
    const mnt = mountTmpfs(t);
    const spoolDir = join(mnt, 'spool');
    let remount = '';
    const { end, held, logs } = await run(t, scope, {
      centralUp,
      spoolDir,
      inject: () => {
        try {
          execFileSync('mount', ['-o', 'remount,ro', mnt], { stdio: 'pipe' });
          remount = 'done';
        } catch (err) {
          remount = String((err as { stderr?: Buffer }).stderr ?? err).split('\n')[0]!;
        }
        // the same through a read-only bind mount over the spool directory: every path operation gets EROFS
        execFileSync('mount', ['--bind', spoolDir, spoolDir], { stdio: 'pipe' });
        execFileSync('mount', ['-o', 'remount,bind,ro', spoolDir], { stdio: 'pipe' });
      },
      undo: () => {
        if (remount === 'done') execFileSync('mount', ['-o', 'remount,rw', mnt], { stdio: 'pipe' });
        // Lazy: the worker may hold a segment open for reading through the read-only bind (its reader moved on to a
        // segment during the fault: reading is allowed); that file stays readable, new opens see the writable mount.
        execFileSync('umount', ['--lazy', spoolDir], { stdio: 'pipe' });
      },
    });
    t.diagnostic(`mount -o remount,ro with the agent running: ${remount}`);
    assert.match(remount, /busy/, 'the kernel refuses a read-only remount while the spool has files open to write');
    assert.ok(spoolOf(held).writeErrors > 0, 'writes failed while read-only (the segment roll)');
    assert.ok(held.counters.received < SENT, 'back-pressure held the clients while read-only');
    assert.deepEqual(end.counters.dropped, { spool_full: 0, spool_corrupt: 0, disk_full: 0, spool_removed: 0 });
    const write = withCode(logs, 'SK_ERR_SPOOL_WRITE');
    assert.ok(
      write.some((l) => String(l.err).includes('EROFS')),
      'SK_ERR_SPOOL_WRITE logged with the EROFS error',
    );
    assert.equal(withCode(logs, 'SK_ERR_SPOOL_REMOVED').length, 0, 'not mistaken for a removed directory');
  });

  test(`spool directory chmod 000 mid-stream, ${central}: buffered, held back, resumes once accessible`, async (t) => {
    // Root ignores directory permissions: the agent runs as nobody for this one.
    if (!isRoot(t, 'run the agent as another user (root ignores chmod 000)')) return;
    // nobody must be able to run this node binary (e.g. one unpacked into a private temp dir). Probed two levels deep,
    // as the agent forks its worker: setpriv itself may still pass a directory check its child then fails.
    const probe = spawnSync('setpriv', [
      `--reuid=${NOBODY}`,
      `--regid=${NOBODY}`,
      '--clear-groups',
      '--',
      process.execPath,
      '-e',
      FORK_PROBE,
    ]);
    if (probe.status !== 0) {
      const why = `user nobody cannot run ${process.execPath}: ${probe.stderr?.toString().trim() || probe.error?.message}`;
      if (process.env.CI === 'true') assert.fail(why);
      t.skip(why);
      return;
    }
    const scope = agentScope(t);
    const spoolDir = join(scope.dir, 'spool');
    mkdirSync(spoolDir);
    chmodSync(scope.dir, 0o755);
    for (const p of [scope.dir, spoolDir]) chownSync(p, NOBODY, NOBODY);
    const { end, held, logs } = await run(t, scope, {
      centralUp,
      spoolDir,
      // Not the checkout: it may lie under a directory nobody cannot traverse (root's 0700 home, a mktemp -d).
      bin: installedCopy(join(scope.dir, 'pkg')),
      wrap: ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--'],
      inject: () => chmodSync(spoolDir, 0),
      undo: () => chmodSync(spoolDir, 0o750),
    });
    assert.equal(statSync(join(spoolDir, 'LOCK')).uid, NOBODY, 'the agent ran as nobody');
    assert.ok(spoolOf(held).writeErrors > 0, 'writes failed while inaccessible (the segment roll)');
    assert.ok(held.counters.received < SENT, 'back-pressure held the clients while inaccessible');
    assert.deepEqual(end.counters.dropped, { spool_full: 0, spool_corrupt: 0, disk_full: 0, spool_removed: 0 });
    assert.ok(
      withCode(logs, 'SK_ERR_SPOOL_WRITE').some((l) => String(l.err).includes('EACCES')),
      'SK_ERR_SPOOL_WRITE logged with the EACCES error',
    );
    assert.equal(withCode(logs, 'SK_ERR_SPOOL_REMOVED').length, 0);
    assert.ok(existsSync(spoolDir));
  });
}
