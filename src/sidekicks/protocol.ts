// Messages between the supervisor side (registry, main thread) and a sidekick's worker thread.

export interface ThreadData {
  app: string;
  name: string;
  entrypoint: string;
  generation: number;
  everyMs: number | undefined;
  maxVarsBytes: number;
  taskQueue: number;
}

export type ErrorData = { code?: string; message: string; stack?: string; details?: Record<string, unknown> };

/** main → thread */
export type ToThread =
  | { t: 'stop' }
  | { t: 'task'; id: number; payload: unknown; reply: boolean }
  /** The last `vars` message was taken: the thread may post the next one (latest-wins flow control). */
  | { t: 'vars-ack' };

/** thread → main */
export type FromThread =
  /** `skipped`: snapshots published since the last post that were replaced by a newer one before they could go. */
  | { t: 'vars'; vars: Record<string, string>; skipped: number }
  | { t: 'task-done'; id: number; ok: true; value: unknown }
  | { t: 'task-done'; id: number; ok: false; error: ErrorData };
