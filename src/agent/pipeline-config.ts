// How the pipeline's parts are set up from the `agent` config, and which settings need a new worker to change.
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/schema.js';
import type { RetryPolicy, SendShape } from './exporters/dispatcher.js';
import type { BatchPolicy } from './processors/batcher.js';
import type { SpoolOptions } from './queue/spool.js';

const MIN_BATCH_BYTES = 64 * 1024;
/** Retry-After is honoured up to max(retry.maxDelayMs, breaker.halfOpenAfterMs, this). */
const RETRY_AFTER_CAP_FLOOR_MS = 60_000;

/** Settings that cannot change on a running pipeline (a new worker, or a restart, applies them). */
export function restartOnlyChanges(a: AgentConfig, b: AgentConfig): string[] {
  const out: string[] = [];
  if (a.socket !== b.socket) out.push('socket');
  if (a.spool.dir !== b.spool.dir) out.push('spool.dir');
  if (a.spool.maxBytes !== b.spool.maxBytes) out.push('spool.maxBytes');
  if (a.spool.segmentBytes !== b.spool.segmentBytes) out.push('spool.segmentBytes');
  if (a.spool.syncIntervalMs !== b.spool.syncIntervalMs) out.push('spool.syncIntervalMs');
  if (a.spill.dir !== b.spill.dir) out.push('spill.dir');
  if (a.spill.scanIntervalMs !== b.spill.scanIntervalMs) out.push('spill.scanIntervalMs');
  return out;
}

export function spoolOptions(cfg: AgentConfig, log: Logger): SpoolOptions {
  return {
    dir: cfg.spool.dir,
    maxBytes: cfg.spool.maxBytes,
    segmentBytes: cfg.spool.segmentBytes,
    syncIntervalMs: cfg.spool.syncIntervalMs,
    // The spool's unwritten-data cap is half the memory bound; its back-pressure (1/8 of that) pauses reading.
    maxBufferedBytes: Math.max(1024 * 1024, Math.floor(cfg.memory.maxBytes / 2)),
    log,
  };
}

export function batchPolicy(cfg: AgentConfig): BatchPolicy {
  return {
    maxRecords: cfg.batch.maxRecords,
    // A spool batch feeds 4 windows' worth of parts, so the window stays full between spool reads.
    cutRecords: cfg.batch.maxRecords * cfg.batch.maxInFlight * 4,
    maxDelayMs: cfg.batch.maxDelayMs,
    maxBytes: Math.max(MIN_BATCH_BYTES, cfg.maxRecordBytes, Math.floor(cfg.memory.maxBytes / 4)),
  };
}

export function sendShape(cfg: AgentConfig): SendShape {
  return {
    maxRecords: cfg.batch.maxRecords,
    maxInFlight: cfg.batch.maxInFlight,
    partsPerSecond: cfg.spool.replayBatchesPerSecond,
  };
}

export function retryPolicy(cfg: AgentConfig): RetryPolicy {
  return {
    initialDelayMs: cfg.retry.initialDelayMs,
    maxDelayMs: Math.max(cfg.retry.initialDelayMs, cfg.retry.maxDelayMs),
    retryAfterCapMs: Math.max(cfg.retry.maxDelayMs, cfg.breaker.halfOpenAfterMs, RETRY_AFTER_CAP_FLOOR_MS),
  };
}
