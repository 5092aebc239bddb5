// AgentSupervisor hosted in-process (how `sidekick serve` runs it; its pipeline in a forked worker): starts, delivers,
// reloads live settings and a new socket, stops cleanly, tells its host its state by events, and leaves no
// process-global state behind (signal handlers, socket file).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';
import { AgentSupervisor, type AgentState } from '../src/agent/supervisor/supervisor.ts';
import { validateConfig } from '../src/config/load.ts';
import { agentConfigOf } from '../src/config/load.ts';
import { agentConfig, fileOutput, keysOf, record, sendOnce, tmpDir, waitFor } from './helpers/agent.ts';

test('AgentSupervisor runs in-process: start, ingest, reload, stop; no signal handlers, socket removed', async () => {
  const { dir, cleanup } = tmpDir();
  const signalsBefore = ['SIGTERM', 'SIGINT', 'SIGHUP'].map((s) => process.listenerCount(s));
  const cfg = agentConfigOf(validateConfig({ agent: agentConfig(dir) }, dir).config);
  const agent = new AgentSupervisor({ config: cfg, log: pino({ level: 'silent' }) });
  const states: AgentState[] = [];
  agent.on('state', (s) => states.push(s));
  const counters = async (): Promise<Awaited<ReturnType<AgentSupervisor['snapshot']>>['metrics']['counters']> =>
    (await agent.snapshot()).metrics.counters;
  try {
    await agent.start();
    assert.equal((await agent.status()).state, 'running');
    const sock = join(dir, 'agent.sock');
    await sendOnce(sock, record('a') + 'junk\n' + record('b'));
    await waitFor(async () => (await counters()).exported === 2, 'two records exported');
    await agent.reload({ ...cfg, batch: { ...cfg.batch, maxRecords: 7 } });
    assert.equal((await agent.status()).worker?.generation, 1, 'live settings apply without a new worker');
    const other = join(dir, 'other.sock');
    await agent.reload({ ...cfg, socket: other });
    assert.ok(!existsSync(sock), 'the old socket file is gone');
    await sendOnce(other, record('c'));
    await waitFor(async () => (await counters()).exported === 3, 'third record exported');
    const m = await counters();
    assert.equal(m.invalid.not_json, 1);
    assert.equal(m.received, 4);
    assert.equal((await agent.status()).pipeline?.breaker?.state, 'closed');
    assert.deepEqual(
      states.at(-1),
      { state: 'running', breaker: 'closed', profiling: true, sampleRate: 1, reason: 'ok', socket: other },
      'the state event follows the move to the new socket',
    );
    await agent.stop();
    await agent.done;
    assert.ok(!existsSync(other), 'its own socket file is removed at stop');
    assert.deepEqual(keysOf(fileOutput(join(dir, 'out')).lines).sort(), ['a', 'b', 'c']);
    assert.deepEqual(
      ['SIGTERM', 'SIGINT', 'SIGHUP'].map((s) => process.listenerCount(s)),
      signalsBefore,
      'no signal handlers installed',
    );
  } finally {
    await agent.stop();
    cleanup();
  }
});
