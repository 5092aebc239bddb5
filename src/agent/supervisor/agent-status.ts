// What the agent reports about itself: the typed 'state' its host turns into vars, the `sidekick status` record, and
// counters that stay monotonic across workers (a retired worker's totals are carried into the sum).
import type { WorkerHandle, WorkerReport, WorkerState } from './worker-handle.js';
import {
  addCounters,
  zeroCounters,
  zeroGauges,
  type AgentCounterValues,
  type AgentGaugeValues,
  type AgentMetricsSnapshot,
} from '../metrics.js';
import type { AgentPipelineStatus, PipelineStateEvent } from '../worker/pipeline.js';
import type { LogCounts } from '../../log/logger.js';

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
    | {
        pid: number | undefined;
        generation: number;
        state: WorkerState;
        spawnedAt: number;
        readyAt: number;
        /** Date.now() of the worker's last report (about once a second while its event loop runs). */
        reportedAt: number;
      }
    | undefined;
  recycles: number;
  restarts: number;
  lastRecycle: { reason: string; at: number } | undefined;
  lastCrash: { at: number; code: number | null; signal: string | null; message?: string } | undefined;
  counters: AgentCounterValues;
  gauges: AgentGaugeValues;
  /** Over the last ~10 s of worker reports. */
  rates: { receivedPerSec: number; exportedPerSec: number; windowMs: number };
  /** Present while a backlog of REPLAY_REPORT_MIN_RECORDS or more is waiting for central. */
  replay: ReplayProgress | undefined;
  pipeline: AgentPipelineStatus | undefined;
  /** This (supervisor) process's log lines and drops; the workers' are in counters.logLines/logDropped. */
  log: LogCounts;
}

/** Counter totals across the workers of one agent run. */
export class CounterTotals {
  private retired: AgentCounterValues = zeroCounters();

  /** A worker is gone: its last counters join the retired totals. */
  retire(w: WorkerHandle): void {
    this.retired = addCounters(this.retired, w.lastCounters ?? zeroCounters());
  }

  /** Retired totals + every live worker's (`current`'s from `live` when given); gauges from `live`. */
  sum(
    workers: Iterable<WorkerHandle>,
    current: WorkerHandle | undefined,
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

/** Received and exported records per second over the last `windowMs`, from the counters each worker report carries. */
export class RateWindow {
  private readonly samples: { at: number; received: number; exported: number }[] = [];

  constructor(private readonly windowMs = 10_000) {}

  add(at: number, received: number, exported: number): void {
    this.samples.push({ at, received, exported });
    while (this.samples.length > 2 && at - this.samples[0]!.at > this.windowMs) this.samples.shift();
  }

  rates(): { receivedPerSec: number; exportedPerSec: number; windowMs: number } {
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (!first || !last || last.at <= first.at) return { receivedPerSec: 0, exportedPerSec: 0, windowMs: 0 };
    const s = (last.at - first.at) / 1000;
    return {
      // A worker restart can make a sum step back for a moment (its last report lost): never report a negative rate.
      receivedPerSec: Math.max(0, (last.received - first.received) / s),
      exportedPerSec: Math.max(0, (last.exported - first.exported) / s),
      windowMs: last.at - first.at,
    };
  }
}

/** A backlog being replayed to central: records left, the export rate, and when it should be done. */
export interface ReplayProgress {
  backlogRecords: number;
  exportedPerSec: number;
  /** Seconds until the backlog is gone at the current rate; undefined while nothing is being exported. */
  etaSeconds: number | undefined;
}

/** Backlogs below this are ordinary batching, not a replay worth reporting. */
export const REPLAY_REPORT_MIN_RECORDS = 10_000;

export function replayProgress(backlogRecords: number, exportedPerSec: number): ReplayProgress | undefined {
  if (backlogRecords < REPLAY_REPORT_MIN_RECORDS) return undefined;
  return {
    backlogRecords,
    exportedPerSec: Math.round(exportedPerSec),
    etaSeconds: exportedPerSec > 0 ? Math.round(backlogRecords / exportedPerSec) : undefined,
  };
}
