// The app-side API: getVars, readVars, onVars, sendTask, requestTask, configure, shutdown.
// Under `sidekick serve` (an HTTP worker: SIDEKICK_SERVE_APP is set and there is an IPC channel) calls go to the
// supervisor; anywhere else this is library mode and sidekicks run in worker threads of this process.
import { resolve as resolvePath } from 'node:path';
import { SidekickError, describeError } from '../errors.js';
import { sidekicksSchema, type DeclaredSidekickInput, type SidekicksConfig } from '../config/schema.js';
import { formatPath } from '../config/load.js';
import { childLogger, RateLimitedLog } from '../log/logger.js';
import { VarsStore, type VarsListener } from '../vars/store.js';
import type { Vars } from '../vars/snapshot.js';
import { withDeadline } from '../common/async.js';
import { assertName } from './names.js';
import { SidekickRegistry } from './registry.js';
import { IpcTransport, LocalTransport, type Transport } from './transport.js';
import type { TaskCall, TaskHandle } from './task-handle.js';

export type { Vars, VarsListener };

export interface GetVarsOptions {
  /** Milliseconds to wait for the first publish; default 30 000. */
  timeout?: number;
}

export interface RequestTaskOptions {
  /** Milliseconds to wait for the result; default 30 000. Past it the handler's signal aborts too (SK_ERR_TIMEOUT). */
  timeout?: number;
  /** Aborting it rejects with SK_ERR_ABORTED and aborts the handler's signal. */
  signal?: AbortSignal;
  /**
   * Called with each value the handler passes to `progress(value)`: in order, all before the result, latest-wins
   * (values produced faster than they are delivered are skipped, never the last one before the result).
   */
  onProgress?: (value: unknown) => void;
}

export type LibraryOptions = Partial<Omit<SidekicksConfig, 'declare'>> & {
  entrypoint?: string;
  /** As in a config file: `{ name: { start, every, entrypoint?, source? } }` (a source needs no entrypoint). */
  declare?: Record<string, DeclaredSidekickInput>;
  /** Scope name in library mode (default 'default'). */
  app?: string;
};

const DEFAULT_TIMEOUT_MS = 30_000;

// One client per process, shared through globalThis so that a second copy of this module still sees it.
interface ClientState {
  store: VarsStore;
  transport: Transport | undefined;
  library: LibraryOptions;
  inFlight: Map<string, number>;
  /** requestTask calls that ended SK_ERR_TIMEOUT (reported in `sidekick status` under serve). */
  taskTimeouts: number;
}
const KEY = Symbol.for('sidekick.client');
const holder = globalThis as { [KEY]?: ClientState };
const state: ClientState = (holder[KEY] ??= {
  store: new VarsStore(),
  transport: undefined,
  library: {},
  inFlight: new Map(),
  taskTimeouts: 0,
});
const store = state.store;
const taskLog = new RateLimitedLog(childLogger({ component: 'tasks' }));

/** True when this process is an HTTP worker of `sidekick serve`. */
export function isServeWorker(): boolean {
  return Boolean(process.env.SIDEKICK_SERVE_APP) && typeof process.send === 'function';
}

function transport(): Transport {
  if (state.transport) return state.transport;
  if (isServeWorker()) {
    state.transport = new IpcTransport(store);
  } else {
    const opts = state.library;
    const entrypoint = opts.entrypoint ?? process.env.SIDEKICK_ENTRYPOINT;
    // Declared sidekicks may bring their own code or a built-in source; with none of that, nothing could ever run.
    if (!entrypoint && Object.keys(opts.declare ?? {}).length === 0) {
      throw new SidekickError(
        'SK_ERR_NO_ENTRYPOINT',
        'library mode needs a sidekick entrypoint or declared sidekicks: call configure({ entrypoint }) or configure({ declare }), or set SIDEKICK_ENTRYPOINT',
      );
    }
    const { app = 'default', declare = {}, ...rest } = opts;
    // Relative paths resolve against the working directory, as the entrypoint's does.
    const declared = Object.fromEntries(
      Object.entries(declare).map(([name, d]) => [
        name,
        {
          ...d,
          ...(d.entrypoint ? { entrypoint: resolvePath(d.entrypoint) } : {}),
          ...(d.source?.type === 'file' ? { source: { ...d.source, path: resolvePath(d.source.path) } } : {}),
        },
      ]),
    );
    const parsed = sidekicksSchema.safeParse({
      ...rest,
      declare: declared,
      ...(entrypoint ? { entrypoint: resolvePath(entrypoint) } : {}),
    });
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new SidekickError('SK_ERR_CONFIG_INVALID', `configure(): ${formatPath(issue.path)}: ${issue.message}`, {
        field: formatPath(issue.path),
      });
    }
    const registry = new SidekickRegistry(app, parsed.data, true);
    state.transport = new LocalTransport(store, registry);
    registry.startDeclared();
  }
  return state.transport;
}

/** Internal: the serve worker installs its transport before loading the app, to receive the initial snapshots. */
export function installServeTransport(): IpcTransport {
  return transport() as IpcTransport;
}

/** Library mode: set the entrypoint and limits before the first getVars. */
export function configure(options: LibraryOptions): void {
  if (state.transport) {
    throw new SidekickError('SK_ERR_CONFIG_INVALID', 'configure() must be called before the first getVars/sendTask', {
      field: 'configure',
    });
  }
  state.library = { ...options };
}

function timeoutOf(options: { timeout?: number } | undefined): number {
  const t = options?.timeout ?? DEFAULT_TIMEOUT_MS;
  if (typeof t !== 'number' || Number.isNaN(t) || t < 0) {
    throw new RangeError(`timeout must be a non-negative number of milliseconds, got ${String(t)}`);
  }
  return t;
}

/**
 * Starts the sidekick(s) at most once and resolves at the first publish (at once if a snapshot exists).
 * With an array, all start in parallel under one shared deadline and the result is keyed by name.
 */
export function getVars(name: string, options?: GetVarsOptions): Promise<Vars>;
export function getVars<N extends string>(names: readonly N[], options?: GetVarsOptions): Promise<Record<N, Vars>>;
export async function getVars(
  nameOrNames: string | readonly string[],
  options?: GetVarsOptions,
): Promise<Vars | Record<string, Vars>> {
  const timeoutMs = timeoutOf(options);
  const names = typeof nameOrNames === 'string' ? [nameOrNames] : [...nameOrNames];
  names.forEach((n) => assertName(n));
  const waits = names.map((name) => {
    const ready = store.peek(name);
    if (ready) return { name, promise: Promise.resolve(ready), cancel: () => {} };
    const w = store.wait(name); // wait first, so a publish racing with ensure is not missed
    try {
      transport().ensure(name);
    } catch (err) {
      w.cancel();
      return { name, promise: Promise.reject(err as Error), cancel: () => {} };
    }
    return { name, ...w };
  });
  const all = Promise.all(waits.map((w) => w.promise));
  try {
    const values = await withDeadline(all, timeoutMs, 'getVars', {
      timeoutError: () => {
        const missing = names.filter((n) => !store.peek(n));
        return new SidekickError(
          'SK_ERR_TIMEOUT',
          `getVars(${missing.map((n) => JSON.stringify(n)).join(', ')}) timed out after ${timeoutMs} ms waiting for the first publish (app "${transport().app}")`,
          { names: missing, timeoutMs },
        );
      },
    });
    if (typeof nameOrNames === 'string') return values[0]!;
    const out: Record<string, Vars> = {};
    names.forEach((n, i) => (out[n] = values[i]!));
    return out;
  } finally {
    for (const w of waits) w.cancel();
  }
}

/** The latest snapshot, synchronously; the identical frozen object until the next publish. The per-request hot path. */
export function readVars(name: string): Vars {
  return store.read(name);
}

/** The latest snapshot, or `undefined` if `name` never published: the non-throwing readVars (e.g. at module load). */
export function peekVars(name: string): Vars | undefined {
  return store.peek(name);
}

/** Calls `listener` on every new snapshot of `name`; returns the unsubscribe function. Does not start the sidekick. */
export function onVars(name: string, listener: VarsListener): () => void {
  assertName(name);
  return store.on(name, listener);
}

/** Takes a slot in the bounded per-sidekick task queue, or throws SK_ERR_TASK_QUEUE_FULL; returns the release. */
function reserveTask(name: string): () => void {
  const limit = transport().taskQueue;
  const n = state.inFlight.get(name) ?? 0;
  if (n >= limit) {
    throw new SidekickError(
      'SK_ERR_TASK_QUEUE_FULL',
      `task queue for sidekick "${name}" is full (${limit} in flight)`,
      {
        name,
        limit,
      },
    );
  }
  state.inFlight.set(name, n + 1);
  return () => state.inFlight.set(name, (state.inFlight.get(name) ?? 1) - 1);
}

function submitTask(name: string, payload: unknown, call: TaskCall): TaskHandle {
  const release = reserveTask(name);
  try {
    const handle = transport().task(name, payload, call);
    // The slot is held until the sidekick answers, also after the caller gave up: a handler that ignores its signal
    // still counts against the bound.
    return { result: handle.result.finally(release), cancel: handle.cancel };
  } catch (err) {
    release();
    throw err;
  }
}

/** Fire-and-forget task. Throws SK_ERR_TASK_QUEUE_FULL at once when the bounded queue is full. */
export function sendTask(name: string, payload: unknown): void {
  assertName(name);
  submitTask(name, payload, { reply: false }).result.catch((err: unknown) =>
    taskLog.warn({ sidekick: name, err: describeError(err) }, 'fire-and-forget task failed'),
  );
}

/** A task whose result you wait for (bounded by `timeout`, cancellable by `signal`). */
export async function requestTask(name: string, payload: unknown, options?: RequestTaskOptions): Promise<unknown> {
  assertName(name);
  const timeoutMs = timeoutOf(options);
  const signal = options?.signal;
  if (signal?.aborted) throw new SidekickError('SK_ERR_ABORTED', `requestTask("${name}") aborted before it was sent`);
  const listener = options?.onProgress;
  if (listener !== undefined && typeof listener !== 'function') throw new TypeError('onProgress must be a function');
  let settled = false;
  const onProgress =
    listener &&
    ((value: unknown): void => {
      if (settled) return; // after a timeout or an abort the caller hears nothing more
      try {
        listener(value);
      } catch (err) {
        taskLog.warn({ sidekick: name, err: describeError(err) }, 'onProgress listener threw');
      }
    });
  const handle = submitTask(name, payload, { reply: true, onProgress });
  // The caller's deadline or signal ends the wait here and, with the same error, the handler's signal there.
  const giveUp = (error: SidekickError): SidekickError => {
    handle.cancel(error);
    return error;
  };
  const result = withDeadline(handle.result, timeoutMs, `requestTask("${name}")`, {
    signal,
    timeoutError: () => {
      state.taskTimeouts++; // `task timeouts` in sidekick status (it was never counted before)
      return giveUp(
        new SidekickError('SK_ERR_TIMEOUT', `requestTask("${name}") timed out after ${timeoutMs} ms`, {
          name,
          timeoutMs,
        }),
      );
    },
    abortError: () => giveUp(new SidekickError('SK_ERR_ABORTED', `requestTask("${name}") was aborted`, { name })),
  });
  if (!onProgress) return result;
  // After a timeout or an abort the caller's onProgress hears nothing more.
  return result.finally(() => (settled = true));
}

/** Internal: requestTask calls of this process that timed out. */
export function taskTimeouts(): number {
  return state.taskTimeouts;
}

/** Library mode: stop every sidekick of this process (grace period applies). No-op under `sidekick serve`. */
export async function shutdown(): Promise<void> {
  const t = state.transport;
  if (!t || t instanceof IpcTransport) return;
  state.transport = undefined;
  store.failAll(new SidekickError('SK_ERR_STOPPED', 'sidekicks were shut down'));
  await t.stop();
  // A later configure() + getVars starts fresh sidekicks instead of answering with the stopped ones' snapshots.
  store.clear();
}
