// Every message of the sidekick runtime, tagged the same way (`sk`): between the supervisor side (registry, main
// thread) and a sidekick's worker thread, and between an HTTP worker process and the `sidekick serve` supervisor over
// cluster IPC (advanced serialization, so snapshots are structured-cloned, not JSON-encoded).
import type { ErrorData } from '../errors.js';
import type { ListenAddress } from '../config/schema.js';
import type { SourceConfig } from '../config/sources.js';

type Snapshot = Record<string, string>;

/** A sidekick thread's workerData. */
export interface ThreadData {
  app: string;
  name: string;
  entrypoint: string;
  generation: number;
  everyMs: number | undefined;
  maxVarsBytes: number;
  taskQueue: number;
  /** A built-in source runs instead of the entrypoint. */
  source: SourceConfig | undefined;
  /** Index of this thread in its task pool (0 when there is no pool); only thread 0 may publish. */
  thread: number;
  /** Threads of its task pool (1 without a pool). */
  threads: number;
}

/** main thread → sidekick thread */
export type ToThread =
  | { sk: 'stop' }
  /** `progress`: the caller listens for progress values (without it, progress() in the handler is a no-op). */
  | { sk: 'task'; id: number; payload: unknown; reply: boolean; progress: boolean }
  /** The caller gave up: the handler's signal aborts with this reason. */
  | { sk: 'task-cancel'; id: number; reason: ErrorData }
  /** The last `task-progress` of task `id` was taken: the thread may post the next one (latest-wins). */
  | { sk: 'progress-ack'; id: number }
  /** The last `vars` message was taken: the thread may post the next one (latest-wins flow control). */
  | { sk: 'vars-ack' };

/** sidekick thread → main thread */
export type FromThread =
  /** `skipped`: snapshots published since the last post that were replaced by a newer one before they could go. */
  | { sk: 'vars'; vars: Snapshot; skipped: number }
  | { sk: 'task-done'; id: number; ok: true; value: unknown }
  | { sk: 'task-done'; id: number; ok: false; error: ErrorData }
  | { sk: 'task-progress'; id: number; value: unknown }
  /** handleTasks was called: a task pool thread is up (it never publishes, so this is its "first publish"). */
  | { sk: 'tasks-ready' }
  /** A built-in source rides out bad data, keeping its last snapshot (src/sources/report.ts); undefined: fine again. */
  | { sk: 'source-error'; error: string | undefined };

/** What an HTTP worker needs to run its app; sent in the `init` answer to its `hello`. */
export interface WorkerSettings {
  app: string;
  handler: string;
  listen: ListenAddress;
  drainTimeoutMs: number;
  /** A request not answered (no headers sent) within this is answered 503; 0 = off. */
  handlerTimeoutMs: number;
  /** Tasks in flight per sidekick from this worker before SK_ERR_TASK_QUEUE_FULL. */
  taskQueue: number;
}

/** An HTTP worker's answer to a ping: its RSS and handler counters (totals since it started). */
export interface HealthSample {
  rss: number;
  handlerErrors: number;
  handlerTimeouts: number;
  /** requestTask calls in this worker that ended SK_ERR_TIMEOUT. */
  taskTimeouts: number;
  /** Log lines of this worker, and those dropped because stderr was not drained (src/log/stderr-writer.ts). */
  log: { lines: number; dropped: number };
}

/** HTTP worker → supervisor */
export type WorkerToPrimary =
  | { sk: 'hello' }
  | { sk: 'ensure'; name: string }
  | { sk: 'task'; id: number; name: string; payload: unknown; reply: boolean; progress: boolean }
  /** The requestTask's deadline passed or its signal aborted. */
  | { sk: 'task-cancel'; id: number; reason: ErrorData }
  | { sk: 'listen-error'; message: string }
  /** The answer to `ping`: the event loop is turning. Counters are totals since the worker started. */
  | ({ sk: 'pong'; id: number } & HealthSample);

/** supervisor → HTTP worker */
export type PrimaryToWorker =
  | { sk: 'init'; settings: WorkerSettings; snapshots: { name: string; vars: Snapshot; generation: number }[] }
  | { sk: 'vars'; name: string; vars: Snapshot; generation: number }
  | { sk: 'failed'; name: string; error: ErrorData }
  | { sk: 'task-done'; id: number; ok: true; value: unknown }
  | { sk: 'task-done'; id: number; ok: false; error: ErrorData }
  | { sk: 'task-progress'; id: number; value: unknown }
  | { sk: 'drain' }
  | { sk: 'ping'; id: number };

/** Ours, as opposed to node:cluster's internal messages or the app's own on the same channel. */
export function isSidekickMessage(msg: unknown): msg is { sk: string } {
  return typeof msg === 'object' && msg !== null && typeof (msg as { sk?: unknown }).sk === 'string';
}
