// AgentPipeline in-process (how `sidekick serve` can host it): binds its own socket, delivers, reloads, stops
// cleanly, and leaves no process-global state behind (signal handlers, socket file).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';
import { AgentPipeline } from '../src/agent/pipeline.ts';
import { validateConfig } from '../src/config/load.ts';
import { agentConfigOf } from '../src/config/load.ts';
import { agentConfig, fileOutput, keysOf, record, sendOnce, tmpDir, waitFor } from './helpers/agent.ts';

test('AgentPipeline runs in-process: start, ingest, reload, stop; no signal handlers, socket removed', async () => {
  const { dir, cleanup } = tmpDir();
  const signalsBefore = ['SIGTERM', 'SIGINT', 'SIGHUP'].map((s) => process.listenerCount(s));
  const cfg = agentConfigOf(validateConfig({ agent: agentConfig(dir) }, dir).config);
  const pipeline = new AgentPipeline({ config: cfg, log: pino({ level: 'silent' }) });
  try {
    await pipeline.start();
    assert.equal(pipeline.state, 'running');
    const sock = join(dir, 'agent.sock');
    await sendOnce(sock, record('a') + 'junk\n' + record('b'));
    await waitFor(() => pipeline.metrics().counters.exported === 2, 'two records exported');
    const r = await pipeline.reload({ ...cfg, batch: { ...cfg.batch, maxRecords: 7 } });
    assert.deepEqual(r.restartRequired, []);
    const other = join(dir, 'other.sock');
    const moved = await pipeline.reload({ ...cfg, socket: other });
    assert.deepEqual(moved.restartRequired, [], 'in-process, a new socket is bound by the pipeline itself');
    assert.ok(!existsSync(sock), 'the old socket file is gone');
    await sendOnce(other, record('c'));
    await waitFor(() => pipeline.metrics().counters.exported === 3, 'third record exported');
    const m = pipeline.metrics();
    assert.equal(m.counters.invalid.not_json, 1);
    assert.equal(m.counters.received, 4);
    assert.equal(pipeline.status().breaker?.state, 'closed');
    await pipeline.stop(5000);
    assert.equal(pipeline.state, 'stopped');
    assert.ok(!existsSync(other), 'its own socket file is removed at stop');
    assert.deepEqual(keysOf(fileOutput(join(dir, 'out')).lines).sort(), ['a', 'b', 'c']);
    assert.deepEqual(
      ['SIGTERM', 'SIGINT', 'SIGHUP'].map((s) => process.listenerCount(s)),
      signalsBefore,
      'no signal handlers installed',
    );
  } finally {
    await pipeline.stop(1000);
    cleanup();
  }
});
