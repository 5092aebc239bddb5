// The pipeline's read-outs (pipeline.ts): its status, and its counters and gauges for the metrics.
// Reads only: what they return does not depend on how often they are called.
import type { AgentConfig } from '../../config/schema.js';
import type { ExporterBreaker } from '../breaker/breaker.js';
import type { Dispatcher } from '../exporters/dispatcher.js';
import { exporterTarget } from '../exporters/target.js';
import type { AgentCounterValues, AgentMetricsSnapshot } from '../metrics.js';
import type { MemoryBudget } from './memory-budget.js';
import type { Spool, SpoolStats } from '../queue/spool.js';
import type { ClientState } from '../receivers/control.js';
import type { SpillReceiver, SpillStats } from '../receivers/spill.js';
import type { UnixSocketReceiver } from '../receivers/unix-socket.js';

export type PipelineState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

export interface AgentPipelineStatus {
  state: PipelineState;
  pid: number;
  startedAt: number;
  socket: string;
  connections: number;
  exporter: { type: string; target: string };
  breaker: ReturnType<ExporterBreaker['toJSON']> | undefined;
  spool: (SpoolStats & { dir: string }) | undefined;
  spill: SpillStats | undefined;
  /** The state line clients are given (profiling on/off and why, sample rate). */
  clients: ClientState;
  memory: ReturnType<MemoryBudget['usage']>;
  lastExportError: { message: string; at: number } | undefined;
  nextAttemptAt: number | undefined;
}

/** What the read-outs look at: the pipeline's parts (those after the budget are absent before start). */
export interface PipelineParts {
  state: PipelineState;
  startedAt: number;
  cfg: AgentConfig;
  counters: AgentCounterValues;
  budget: MemoryBudget;
  spool: Spool | undefined;
  receiver: UnixSocketReceiver | undefined;
  spill: SpillReceiver | undefined;
  breaker: ExporterBreaker | undefined;
  dispatcher: Dispatcher | undefined;
  /** The state line clients are given now. */
  clients(): ClientState;
}

/** Counters and gauges now. */
export function metricsOf(p: PipelineParts, rssBytes: number): AgentMetricsSnapshot {
  const st = p.spool?.stats();
  const spill = p.spill?.snapshot();
  const counters = structuredClone(p.counters);
  if (st) {
    // The spool counts its own drops and corrupt frames. disk_full: accepted records it could not write (its
    // buffer cap while the disk was full, or unwritten at close); spool_removed: records in segment files removed
    // with the spool directory that it could not read back; the rest of its drops are the size cap.
    counters.dropped.spool_full = st.droppedRecords - st.diskFullDroppedRecords - st.removedDroppedRecords;
    counters.dropped.disk_full = st.diskFullDroppedRecords;
    counters.dropped.spool_removed = st.removedDroppedRecords;
    counters.dropped.spool_corrupt = st.corruptRecords;
    counters.spoolCorruptFrames = st.corruptFrames;
  }
  return {
    counters,
    gauges: {
      breakerState: p.breaker?.stateCode ?? 0,
      spoolBytes: st?.pendingBytes ?? 0,
      spoolRecords: st?.pendingRecords ?? 0,
      spoolSegments: st?.segments ?? 0,
      openConnections: p.receiver?.connectionCount ?? 0,
      spillPendingBytes: spill?.pendingBytes ?? 0,
      spillOldestSeconds: Math.round((spill?.oldestPendingMs ?? 0) / 1000),
      memoryBufferedBytes: p.budget.used,
      rssBytes,
    },
  };
}

export function statusOf(p: PipelineParts): AgentPipelineStatus {
  const exp = p.cfg.exporter;
  const st = p.spool?.stats();
  return {
    state: p.state,
    pid: process.pid,
    startedAt: p.startedAt,
    socket: p.cfg.socket,
    connections: p.receiver?.connectionCount ?? 0,
    exporter: { type: exp.type, target: exporterTarget(exp) },
    breaker: p.breaker?.toJSON(),
    spool: st ? { ...st, dir: p.cfg.spool.dir } : undefined,
    spill: p.spill?.snapshot(),
    clients: p.clients(),
    memory: p.budget.usage(),
    lastExportError: p.dispatcher?.lastError,
    nextAttemptAt: p.dispatcher?.lastError ? p.dispatcher.nextAttemptAt : undefined,
  };
}

/**
 * The worker's RSS, or the last one read: reading it opens /proc/self/stat, which fails with EMFILE when the
 * process is out of file descriptors (a throw here used to crash the worker from its stats timer).
 */
export class RssGauge {
  private last = 0;

  read(): number {
    try {
      this.last = process.memoryUsage.rss();
    } catch {
      // keep the last value
    }
    return this.last;
  }
}
