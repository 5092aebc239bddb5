// Waiting on vars in library-mode tests (the sources' tests): events with a deadline, never polling with sleeps.
import { onVars, peekVars, type Vars } from 'sidekick-runtime';

/** Resolves with the first snapshot of `name` (the current one included) that `pred` accepts; rejects after `ms`. */
export function varsWhere(name: string, pred: (v: Vars) => boolean, what: string, ms = 15_000): Promise<Vars> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`${name}: ${what}: not seen within ${ms} ms (last: ${JSON.stringify(peekVars(name))})`));
    }, ms);
    const done = (v: Vars): void => {
      clearTimeout(timer);
      off();
      resolve(v);
    };
    const off = onVars(name, (v) => pred(v) && done(v));
    const now = peekVars(name);
    if (now && pred(now)) done(now);
  });
}

/** Every snapshot of `name` published from now on. */
export function recordVars(name: string): { seen: Vars[]; stop: () => void } {
  const seen: Vars[] = [];
  return { seen, stop: onVars(name, (v) => seen.push(v)) };
}
