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
export type ToThread = { t: 'stop' } | { t: 'task'; id: number; payload: unknown; reply: boolean };

/** thread → main */
export type FromThread =
  | { t: 'vars'; vars: Record<string, string> }
  | { t: 'task-done'; id: number; ok: true; value: unknown }
  | { t: 'task-done'; id: number; ok: false; error: ErrorData };
