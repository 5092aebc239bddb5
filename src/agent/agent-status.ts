// What the agent reports about itself: the typed 'state' its host turns into vars, the `sidekick status` record, and
// counters that stay monotonic across workers (a retired worker's totals are carried into the sum).
import type { AgentWorker, WorkerReport, WorkerState } from './agent-worker.js';
import {
  addCounters,
  zeroCounters,
  zeroGauges,
  type AgentCounterValues,
  type AgentGaugeValues,
  type AgentMetricsSnapshot,
} from './metrics.js';
import type { AgentPipelineStatus, PipelineStateEvent } from './pipeline.js';

/**
 * What the agent tells its host when it changes (event 'state'): `sidekick serve` turns it into the `agent` vars.
 * `state`: 'running' while a worker accepts, 'starting' while none does (first start, a crash restart, the moment of
 * a recycle), 'stopping' from stop() on. `breaker`, `profiling`, `sampleRate`, `reason`: the last the pipeline
 * reported, which is also what clients read from the agent.state file (before the first report: breaker 'unknown',
 * profiling and sample rate as configured).
 */
export interface AgentState {
  state: 'starting' | 'running' | 'stopping';
  breaker: PipelineStateEvent['breaker'] | 'unknown';
  profiling: boolean;
  sampleRate: number;
  reason: PipelineStateEvent['reason'];
  socket: string;
}

/** `sidekick status` (the `agent` part). */
export interface AgentStatus {
  state: AgentState['state'];
  pid: number;
  startedAt: number;
  config: string | undefined;
  socket: string;
  metrics: { listen: string | undefined; port: number | undefined } | undefined;
  worker:
    { pid: number | undefined; generation: number; state: WorkerState; spawnedAt: number; readyAt: number } | undefined;
  recycles: number;
  restarts: number;
  lastRecycle: { reason: string; at: number } | undefined;
  lastCrash: { at: number; code: number | null; signal: string | null; message?: string } | undefined;
  counters: AgentCounterValues;
  gauges: AgentGaugeValues;
  pipeline: AgentPipelineStatus | undefined;
}

/** Counter totals across the workers of one agent run. */
export class CounterTotals {
  private retired: AgentCounterValues = zeroCounters();

  /** A worker is gone: its last counters join the retired totals. */
  retire(w: AgentWorker): void {
    this.retired = addCounters(this.retired, w.lastCounters ?? zeroCounters());
  }

  /** Retired totals + every live worker's (`current`'s from `live` when given); gauges from `live`. */
  sum(
    workers: Iterable<AgentWorker>,
    current: AgentWorker | undefined,
    live: WorkerReport | undefined,
  ): AgentMetricsSnapshot {
    let counters = this.retired;
    for (const w of workers) {
      const c = w === current && live ? live.metrics.counters : w.lastCounters;
      if (c) counters = addCounters(counters, c);
    }
    return { counters, gauges: live?.metrics.gauges ?? zeroGauges() };
  }
}
