// Entry point of an app's sidekick host process under `sidekick serve` (forked by serve/sidekick-host.ts).
//
// Why a process: sidekicks are user code, and a worker thread's heap limit is not a wall (Node's `resourceLimits`
// is best effort: one large allocation in a thread can abort the whole process, nodejs/node#47224), nor is a thread
// safe from a native addon's crash. The supervisor holds every app's listening socket and every last snapshot, so
// it runs no user code: each app's sidekick threads live here, and when this process dies the supervisor keeps
// serving the last snapshots and starts a new host, whose sidekicks carry on with generation + 1.
//
// This process only bridges its SidekickRegistry to the supervisor. Snapshots go up latest-wins: per sidekick at
// most one `vars` message in flight (until the supervisor acks it) and one waiting, replaced by every newer one.
import { describeError, errorFromData, errorToData } from '../errors.js';
import { childLogger, logCounts } from '../log/logger.js';
import { SidekickRegistry } from '../sidekicks/registry.js';
import type { Vars } from '../vars/snapshot.js';
import { LatestSlot } from '../sidekicks/latest-slot.js';
import { failedTask, type TaskHandle } from '../sidekicks/task-handle.js';
import type { FromHost, HostInit, ToHost } from './host-protocol.js';

const log = childLogger({ component: 'sidekick-host' });
let registry: SidekickRegistry | undefined;
let stopping = false;

function send(msg: FromHost, then?: () => void): void {
  if (!process.connected) return then?.();
  try {
    process.send!(msg, undefined, undefined, (err: Error | null) => {
      if (err) log.debug({ err: describeError(err) }, 'send to the supervisor failed');
      then?.();
    });
  } catch (err) {
    log.debug({ err: describeError(err) }, 'send to the supervisor failed');
    then?.();
  }
}

const varsInFlight = new Set<string>();
const varsWaiting = new Map<string, Extract<FromHost, { sk: 'vars' }>>();

function sendVars(name: string, vars: Vars, generation: number): void {
  const msg: FromHost = { sk: 'vars', name, vars, generation };
  if (varsInFlight.has(name)) {
    varsWaiting.set(name, msg);
    return;
  }
  varsInFlight.add(name);
  send(msg);
}

function varsAcked(name: string): void {
  varsInFlight.delete(name);
  const next = varsWaiting.get(name);
  if (!next) return;
  varsWaiting.delete(name);
  varsInFlight.add(name);
  send(next);
}

function start(init: HostInit): void {
  const reg = new SidekickRegistry(init.app, init.config);
  registry = reg;
  reg.on('vars', (name, vars, generation) => sendVars(name, vars, generation));
  reg.on('failed', (name, error) => send({ sk: 'failed', name, error: errorToData(error) }));
  reg.on('lifecycle', (name, e) =>
    send({ sk: 'lifecycle', name, kind: e.kind, generation: e.generation, detail: e.detail }),
  );
  if (init.resume.length > 0) reg.resume(init.resume, init.previousHostExit ?? 'sidekick host process died');
  reg.startDeclared();
  // Counters reach the supervisor with every lifecycle event and once a second, so a host that dies leaves a recent
  // account of each sidekick for the next one to carry on from.
  reg.on('lifecycle', () => pushStatus());
  setInterval(pushStatus, 1000).unref();
}

function pushStatus(id = 0): void {
  send({ sk: 'status', id, sidekicks: registry?.status() ?? [], rss: process.memoryUsage.rss(), log: logCounts() });
}

function ensure(name: string): void {
  try {
    registry!.ensure(name);
  } catch (err) {
    send({ sk: 'failed', name, error: errorToData(err) });
  }
}

// Tasks in this host by the supervisor's id (to cancel them), and their progress, latest-wins per task toward the
// supervisor: one value being written to the channel, one waiting (a newer one replaces it).
const tasks = new Map<number, TaskHandle>();
const progress = new LatestSlot<number, FromHost>((msg, done) => send(msg, done));

function task(msg: Extract<ToHost, { sk: 'task' }>): void {
  const { id } = msg;
  const onProgress = msg.progress
    ? (value: unknown): void => progress.send(id, { sk: 'task-progress', id, value })
    : undefined;
  let handle: TaskHandle;
  try {
    handle = registry!.task(msg.name, msg.payload, { reply: msg.reply, onProgress });
  } catch (err) {
    handle = failedTask(err as Error);
  }
  tasks.set(id, handle);
  const done = (answer: FromHost): void => {
    tasks.delete(id);
    progress.end(id); // its last progress value goes before the answer
    send(answer);
  };
  handle.result.then(
    (value) => done({ sk: 'task-done', id, ok: true, value }),
    (err: unknown) => done({ sk: 'task-done', id, ok: false, error: errorToData(err) }),
  );
}

async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await registry?.stop();
  // Snapshots still waiting behind one in flight go now, and the process leaves once the last message is written
  // (closing the channel earlier could cancel writes still queued on it).
  for (const msg of varsWaiting.values()) send(msg);
  varsWaiting.clear();
  send({ sk: 'stopped' }, () => process.exit(0));
}

process.on('message', (msg: ToHost) => {
  switch (msg.sk) {
    case 'host-init':
      if (!stopping) start(msg.init);
      break;
    case 'ensure':
      ensure(msg.name);
      break;
    case 'task':
      task(msg);
      break;
    case 'task-cancel':
      tasks.get(msg.id)?.cancel(errorFromData(msg.reason));
      break;
    case 'vars-ack':
      varsAcked(msg.name);
      break;
    case 'reconfigure':
      registry?.reconfigure(msg.config);
      break;
    case 'restart-all':
      void registry!.restartAll().finally(() => send({ sk: 'done', id: msg.id }));
      break;
    case 'status':
      pushStatus(msg.id);
      break;
    case 'stop':
      void stop();
      break;
    default:
      break;
  }
});

send({ sk: 'hello' });

// The supervisor decides when this process ends: a terminal's Ctrl-C reaches the whole process group.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => void stop());
// The supervisor is gone (killed): nobody reads our snapshots any more. Stop the sidekicks (their grace applies) and
// leave, rather than run unsupervised.
process.on('disconnect', () => {
  if (!stopping) {
    log.warn('the supervisor went away; stopping the sidekicks');
    void stop();
  }
});
