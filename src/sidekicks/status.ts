// What a sidekick reports about itself (`sidekick status`, /metrics, the status page), and what a new sidekick host
// takes over from a dead one. Plain data: it crosses the host ↔ supervisor channel.
import type { Vars } from '../vars/snapshot.js';

export type SidekickState = 'starting' | 'running' | 'backoff' | 'failed' | 'stopping' | 'stopped';

export interface SidekickStatus {
  app: string;
  name: string;
  state: SidekickState;
  ready: boolean;
  generation: number;
  bootFailures: number;
  crashes: number;
  consecutiveFailures: number;
  /** Boot failures in a row (reset by a publish); at sidekicks.maxBootFailures waiting callers get SK_ERR_BOOT_FAILED. */
  consecutiveBootFailures: number;
  lastError: string | undefined;
  /** A built-in source's current problem with its data (bad file, …) while it keeps serving its last snapshot. */
  sourceError: string | undefined;
  publishedAt: number | undefined;
  keys: number;
  /** UTF-8 bytes of the latest snapshot's keys and values. */
  bytes: number;
  /** Threads started (first start, restarts, reloads). */
  starts: number;
  /** Why threads were started again: each counts one restart. */
  restarts: { crash: number; boot_failure: number; clean_exit: number; reload: number };
  /** Snapshots with new content (identical re-publishes are not counted). */
  publishes: number;
  tasks: TaskCounts;
  tasksInFlight: number;
  /** Its task pool (src/sidekicks/pool.ts): one thread without `declare.NAME.tasks`. */
  pool?: PoolStatus;
}

export interface TaskCounts {
  sent: number;
  completed: number;
  failed: number;
  /** Tasks whose caller gave up (deadline, signal, HTTP worker died) before the answer. */
  cancelled?: number;
}

export interface PoolStatus {
  threads: number;
  /** Threads running at least one task. */
  busy: number;
  /** Tasks waiting for a free thread (the pool's queue depth). */
  queued: number;
  /** Thread deaths of the pool's threads (each failed its own tasks with SK_ERR_TASK_CRASHED). */
  crashes: number;
  /** Run time of answered tasks, from the moment a thread took one to its answer (task-stats.ts buckets). */
  durations: Histogram;
  /** Thread 1… of the pool (thread 0 is the sidekick's own fields above). */
  members: { thread: number; state: SidekickState; generation: number; crashes: number; lastError?: string }[];
}

export interface Histogram {
  /** Upper bounds in seconds, ascending; `counts[i]` answered in ≤ bounds[i] (not cumulative), the last is +Inf. */
  bounds: number[];
  counts: number[];
  sum: number;
  count: number;
}

/** A sidekick as a dead sidekick host left it: where a new host takes it over (SidekickInstance.resume). */
export interface SidekickResume {
  status: SidekickStatus;
  vars: Vars | undefined;
}
