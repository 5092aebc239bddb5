// How a running source says "my data is bad, I keep serving the last good snapshot" so that `sidekick status`
// shows it (the sidekick's `sourceError`), without crashing a sidekick whose snapshot is fine to keep serving.
// A source reports the error while it lasts and `undefined` once it publishes again; a new thread starts clear.
import { isMainThread, parentPort } from 'node:worker_threads';
import type { FromThread } from '../sidekicks/messages.js';

// Set by the thread runner (sidekicks/context.ts): present only inside a sidekick's thread, whose parent port is the
// supervisor's channel. Anywhere else (a user's own worker thread) there is no one to tell.
const RUNTIME = Symbol.for('sidekick.runtime');

let last: string | undefined;

/** Records (or, with undefined, clears) the error a running source rides out; repeats of the same are not sent. */
export function reportSourceError(message: string | undefined): void {
  if (message === last) return;
  last = message;
  if (isMainThread || !parentPort || !(RUNTIME in globalThis)) return;
  const msg: FromThread = {
    sk: 'source-error',
    error: message === undefined ? undefined : `SK_ERR_SOURCE: ${message}`,
  };
  parentPort.postMessage(msg);
}
