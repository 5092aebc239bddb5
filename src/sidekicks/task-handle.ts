// One task on its way from a caller to a handler, as every layer between them sees it (api → transport → supervisor →
// sidekick host → registry → pool → thread): the result, a way to say the caller gave up, and where progress goes.
// Each layer hands the next one's handle up, wrapped, so a cancel walks down the same path the task took.

/** How a task is sent. */
export interface TaskCall {
  /** false: fire-and-forget (sendTask); the result is dropped where it is produced. */
  reply: boolean;
  /** Progress values from the handler's `progress(value)`, latest-wins and in order, all before the result. */
  onProgress?: ((value: unknown) => void) | undefined;
}

export interface TaskHandle {
  readonly result: Promise<unknown>;
  /**
   * The caller gave up (its deadline, its signal, or the HTTP worker that asked died): the handler's `signal` aborts
   * with `reason`. A task still waiting for a thread is dropped and never runs. Idempotent; no-op once answered.
   */
  cancel(reason: Error): void;
}

/** A handle for a task that failed before it went anywhere. */
export function failedTask(error: Error): TaskHandle {
  const result = Promise.reject(error);
  result.catch(() => undefined);
  return { result, cancel: () => {} };
}
