// Messages between AgentSupervisor (parent) and an agent worker (child), over the fork IPC channel (JSON).
import type { AgentConfig } from '../config/schema.js';
import type { PartialRef } from './handover-partials.js';
import type { AgentMetricsSnapshot } from './metrics.js';
import type { AgentPipelineStatus, PipelineStateEvent } from './worker/pipeline.js';

/** The inherited listening socket is fd 4 in the worker (stdio: ignore, inherit, inherit, ipc, <socket>). */
export const WORKER_LISTEN_FD = 4;

export type ToWorker =
  /** Load modules and wait (`start: false`, a pre-forked replacement) or start right away. */
  /** `first`: the agent's first worker, which removes hand-over leftovers of a previous run once it holds the spool. */
  | { t: 'init'; config: AgentConfig; start: boolean; first?: boolean }
  | { t: 'start' }
  /**
   * A client connection from the previous worker; the raw handle travels with the message, its unfinished line inline
   * or in a file (handover-partials.ts).
   */
  | ({ t: 'conn'; discarding: boolean } & PartialRef)
  | { t: 'reload'; config: AgentConfig }
  | { t: 'handover' }
  | { t: 'stop'; timeoutMs: number }
  | { t: 'snapshot'; id: number };

export type FromWorker =
  | { t: 'standby' }
  | { t: 'ready' }
  | { t: 'stats'; metrics: AgentMetricsSnapshot; status: AgentPipelineStatus }
  | { t: 'snapshot'; id: number; metrics: AgentMetricsSnapshot; status: AgentPipelineStatus }
  | ({ t: 'conn'; discarding: boolean } & PartialRef)
  /** Hand-over done: spool closed, lock released. Carries the final counters. */
  | { t: 'released'; metrics: AgentMetricsSnapshot }
  | { t: 'stopped'; metrics: AgentMetricsSnapshot }
  | { t: 'reloaded'; restartRequired: string[] }
  /** The breaker or the clients' profiling state changed (first sent during start, before 'ready'). */
  | { t: 'state'; state: PipelineStateEvent }
  | { t: 'fatal'; code: string | undefined; message: string };
