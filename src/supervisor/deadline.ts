// Bounded waits. Every wait in Sidekick has a deadline, and a timeout says what timed out and after how long.
import { SidekickError } from '../errors.js';

/** Resolves with `promise`, or rejects with SK_ERR_TIMEOUT naming `what` after `ms`. Clears its timer either way. */
export function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new SidekickError('SK_ERR_TIMEOUT', `${what} timed out after ${ms} ms`, { what, timeoutMs: ms })),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
