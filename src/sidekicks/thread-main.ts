// Entry point of a sidekick's worker thread. Loads the app's entrypoint module, binds the in-sidekick API, and runs
// the default export once (long-running style) or on its `every` schedule (never overlapping).
//
// Exit rules (read by the supervisor in instance.ts): an uncaught error → the thread dies with it (boot failure if
// nothing was published in this run, crash otherwise); the event loop running empty → clean exit (code 0).
// On 'stop' the signal aborts; once the default export has settled the thread exits at once, so a sidekick holding
// a watcher or a timer does not hold up a reload.
import { parentPort, workerData } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { SidekickError, errorFromData } from '../errors.js';
import { makeSnapshot, sameVars, type Vars } from '../vars/snapshot.js';
import { bindSidekickRuntime, type SidekickContext } from './context.js';
import type { FromThread, ThreadData, ToThread } from './messages.js';
import { ThreadTasks } from './thread-tasks.js';

const data = workerData as ThreadData & { previousVars?: Record<string, string> };
const port = parentPort!;
const who =
  data.threads > 1
    ? `sidekick "${data.name}" (app "${data.app}", thread ${data.thread})`
    : `sidekick "${data.name}" (app "${data.app}")`;
const controller = new AbortController();
let stopping = false;
let mainSettled = false;
let lastPublished: Vars | undefined;

const post = (msg: FromThread): void => port.postMessage(msg);
const tasks = new ThreadTasks(post, who, data.taskQueue);

// Latest-wins toward the supervisor: at most one `vars` message on its way (until the supervisor acknowledges it)
// and at most one waiting behind it, replaced by every newer publish. A sidekick publishing in a loop costs memory
// for two snapshots, not a queue; intermediate snapshots are skipped (counted), the latest always goes.
let varsInFlight = false;
let varsWaiting: Record<string, string> | undefined;
let varsSkipped = 0;

function postVars(snapshot: Record<string, string>): void {
  if (varsInFlight) {
    if (varsWaiting) varsSkipped++;
    varsWaiting = snapshot;
    return;
  }
  varsInFlight = true;
  post({ sk: 'vars', vars: snapshot, skipped: varsSkipped });
  varsSkipped = 0;
}

function varsAcked(): void {
  varsInFlight = false;
  const next = varsWaiting;
  varsWaiting = undefined;
  if (next) postVars(next);
}

// A thread that ends (returns, throws, exits) with a snapshot still waiting posts it now: the latest is never lost.
process.on('exit', () => {
  if (varsWaiting) post({ sk: 'vars', vars: varsWaiting, skipped: varsSkipped });
});

function exitIfDone(): void {
  // process.exit in a worker thread ends only this thread.
  if (stopping && mainSettled) setImmediate(() => process.exit(0));
}

port.on('message', (msg: ToThread) => {
  if (msg.sk === 'vars-ack') {
    varsAcked();
  } else if (msg.sk === 'stop') {
    if (stopping) return;
    stopping = true;
    const reason = new SidekickError('SK_ERR_STOPPED', `${who} is stopping`);
    controller.abort(reason);
    tasks.abortAll(reason);
    exitIfDone();
  } else if (msg.sk === 'task') {
    tasks.onTask(msg);
  } else if (msg.sk === 'task-cancel') {
    tasks.onCancel(msg.id, errorFromData(msg.reason));
  } else if (msg.sk === 'progress-ack') {
    tasks.progressAcked(msg.id);
  }
});

/**
 * Tasks that arrive before the sidekick is up wait for handleTasks. A sidekick that publishes without having called
 * it (in the same turn) is taken not to handle tasks: waiting tasks fail with SK_ERR_NO_TASK_HANDLER rather than
 * waiting out the caller's timeout. Calling handleTasks later still works for later tasks.
 */
function settleEarlyTasks(): void {
  setImmediate(() => tasks.settleWithoutHandler());
}

const ctx: SidekickContext = {
  app: data.app,
  name: data.name,
  generation: data.generation,
  thread: data.thread,
  signal: controller.signal,
  previousVars: data.previousVars ? makeSnapshot(data.previousVars, Infinity, who) : undefined,
  setVars(vars) {
    if (data.thread > 0) {
      throw new SidekickError(
        'SK_ERR_VARS_NOT_PUBLISHER',
        `${who}: only thread 0 of a task pool publishes its vars (one snapshot per sidekick); check ctx.thread`,
        { name: data.name, thread: data.thread },
      );
    }
    const snapshot = makeSnapshot(vars, data.maxVarsBytes, who);
    if (sameVars(lastPublished, snapshot)) return;
    if (lastPublished === undefined) settleEarlyTasks();
    lastPublished = snapshot;
    postVars(snapshot);
  },
  shouldStop: () => stopping,
  handleTasks(fn) {
    if (typeof fn !== 'function') throw new TypeError('handleTasks expects a function');
    const first = !tasks.hasHandler;
    port.ref(); // a task handler keeps the thread up to answer, even after the default export returned
    tasks.setHandler(fn);
    if (first) post({ sk: 'tasks-ready' });
  },
};
bindSidekickRuntime(ctx);

const entry = data.source
  ? await (await import('../sources/index.js')).loadSource(data.source)
  : await loadEntrypoint(data.entrypoint);

async function loadEntrypoint(entrypoint: string): Promise<(ctx: SidekickContext) => unknown> {
  const mod = (await import(pathToFileURL(entrypoint).href)) as { default?: unknown };
  if (typeof mod.default !== 'function') {
    throw new Error(`entrypoint ${entrypoint} has no default export function (got ${typeof mod.default})`);
  }
  return mod.default as (ctx: SidekickContext) => unknown;
}

if (data.everyMs === undefined) {
  await entry(ctx);
} else {
  // Fixed-rate schedule that never overlaps: a run that overruns its slot starts the next one right away.
  while (!stopping) {
    const started = performance.now();
    await entry(ctx);
    const wait = data.everyMs - (performance.now() - started);
    if (stopping) break;
    if (wait > 0) await sleep(wait, undefined, { signal: controller.signal }).catch(() => undefined);
  }
}
mainSettled = true;
// The port's message listener would keep this thread alive for ever, so a default export that returned with nothing
// left in its event loop would never end: the clean exit the supervisor reruns (instance.ts) could not happen. Once
// the main has settled, the port alone no longer holds the thread, unless the sidekick serves tasks (handleTasks).
if (!tasks.hasHandler) port.unref();
exitIfDone();
