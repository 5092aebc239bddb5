// One bounded wait for the tests: a promise, or a rejection that says what was awaited and for how long.

/** `promise`, or an Error "timed out after `ms` ms waiting for `what`" (the timer never outlives the race). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
