// The API a sidekick uses from inside its worker thread: setVars, shouldStop, stopSignal, handleTasks.
// The thread runner binds the live implementation before it imports the user's entrypoint; anywhere else these
// calls throw SK_ERR_NOT_IN_SIDEKICK. State hangs off globalThis so two copies of this module (e.g. a nested
// node_modules install) still see the same sidekick.
import { SidekickError } from '../errors.js';
import type { Vars } from '../vars/snapshot.js';

/** The second argument of a task handler (a one-argument handler simply ignores it). */
export interface TaskContext {
  /**
   * Aborts when the caller gave up: its `requestTask` deadline passed (reason: SK_ERR_TIMEOUT), its signal aborted or
   * the HTTP worker that asked died (SK_ERR_ABORTED), or the sidekick is stopping (SK_ERR_STOPPED). The result of a
   * cancelled task goes nowhere: stop the work.
   */
  signal: AbortSignal;
  /**
   * Sends a progress value (structured-cloneable) to the caller's `onProgress`: latest-wins (a newer value replaces one
   * not delivered yet, so a tight loop costs no memory), in order, all before the result. No-op without `onProgress`.
   */
  progress(value: unknown): void;
}

export type TaskHandler = (payload: unknown, task: TaskContext) => unknown;

export interface SidekickRuntime {
  app: string;
  name: string;
  generation: number;
  /** This thread's index in its task pool (`declare.NAME.tasks.threads`); 0 without a pool. Thread 0 publishes. */
  thread: number;
  signal: AbortSignal;
  setVars(vars: Record<string, string>): void;
  shouldStop(): boolean;
  handleTasks(fn: TaskHandler): void;
}

/** What the entrypoint's default export receives. */
export interface SidekickContext extends SidekickRuntime {
  /** The last snapshot this sidekick published (survives restarts), if any. */
  previousVars: Vars | undefined;
}

const KEY = Symbol.for('sidekick.runtime');
type Holder = { [KEY]?: SidekickRuntime };

function runtime(call: string): SidekickRuntime {
  const rt = (globalThis as Holder)[KEY];
  if (!rt) {
    throw new SidekickError('SK_ERR_NOT_IN_SIDEKICK', `${call} can only be called inside a sidekick`, { call });
  }
  return rt;
}

/** Publish a whole snapshot atomically: string keys to string values. Identical content is a no-op. */
export function setVars(vars: Record<string, string>): void {
  runtime('setVars').setVars(vars);
}

/** True once the sidekick was asked to stop (reload, shutdown, or a crash-restart of the app). */
export function shouldStop(): boolean {
  return runtime('shouldStop').shouldStop();
}

/** Register the task handler: results of `requestTask` are what it returns (or throws). */
export function handleTasks(fn: TaskHandler): void {
  runtime('handleTasks').handleTasks(fn);
}

// Outside a sidekick, `stopSignal` is this guard: any use of it throws SK_ERR_NOT_IN_SIDEKICK.
const outsideSignal = new Proxy(Object.create(null) as AbortSignal, {
  get(_t, prop) {
    if (prop === Symbol.toPrimitive || prop === 'then') return undefined;
    // Only reached from a second copy of this module inside a sidekick: forward to the real signal.
    const signal = runtime(`stopSignal.${String(prop)}`).signal;
    const value: unknown = Reflect.get(signal, prop, signal);
    return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(signal) : value;
  },
});

/** Aborted when the sidekick must stop, so `await setTimeout(ms, v, { signal: stopSignal })` and `fetch` end at once. */
// A live ESM binding: the thread runner replaces it with the real signal before user code loads.
export let stopSignal: AbortSignal = outsideSignal;

/** Called by the thread runner only (not part of the public API). */
export function bindSidekickRuntime(rt: SidekickRuntime): void {
  (globalThis as Holder)[KEY] = rt;
  stopSignal = rt.signal;
}
