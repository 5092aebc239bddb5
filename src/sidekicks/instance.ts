// One sidekick (app + name) across its whole life: worker thread per generation, restarts with backoff, boot
// failures vs crashes, graceful stop with a grace period then forced termination, and its task queue.
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { SidekickError, describeError, errorFromData, errorToData } from '../errors.js';
import { RateLimitedLog, threadLogging, type Logger } from '../log/logger.js';
import { RestartBackoff } from '../common/backoff.js';
import { adoptSnapshot, sameVars, snapshotBytes, type Vars } from '../vars/snapshot.js';
import type { SidekicksConfig } from '../config/schema.js';
import { settleWithin } from '../common/async.js';
import type { LifecycleKind } from '../common/lifecycle.js';
import type { FromThread, ThreadData, ToThread } from './messages.js';
import type { TaskCall, TaskHandle } from './task-handle.js';
import type { SidekickState, SidekickStatus } from './status.js';
import { TaskStats } from './task-stats.js';

const THREAD_MAIN = new URL('./thread-main.js', import.meta.url);

// The status shapes live in status.ts (the supervisor, metrics and the CLI read them without this class).
export type { Histogram, PoolStatus, SidekickResume, SidekickState, SidekickStatus, TaskCounts } from './status.js';

type PendingTask = {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  reply: boolean;
  onProgress: ((value: unknown) => void) | undefined;
  /** performance.now() when it was sent: its run time goes to the pool's histogram. */
  sentAt: number;
  cancelled?: boolean;
};

/** A thread's task: `cancel` says whether this call cancelled it (it was not answered nor cancelled before). */
export interface InstanceTaskHandle extends TaskHandle {
  cancel(reason: Error): boolean;
}

/** Where this instance sits in its task pool (pool.ts); `{ thread: 0, threads: 1, pooled: false }` without one. */
export interface PoolSeat {
  thread: number;
  threads: number;
  /** Declared with `tasks`: handleTasks counts as "up" (a pool thread need not publish), like a first publish. */
  pooled: boolean;
  /** Where its tasks are counted: the pool's, shared by its threads. */
  stats: TaskStats;
  /** Called after each of its tasks is answered (or failed), when it has room again: the pool's next dispatch. */
  onTaskDone?: () => void;
}

export interface InstanceEvents {
  vars: [vars: Vars, generation: number];
  failed: [error: SidekickError];
  lifecycle: [event: { kind: LifecycleKind; generation: number; detail?: string }];
}

export class SidekickInstance extends EventEmitter<InstanceEvents> {
  private worker: Worker | undefined;
  private state: SidekickState = 'stopped';
  private vars: Vars | undefined;
  private publishedAt: number | undefined;
  private publishedThisRun = false;
  private generation = -1;
  private bootFailures = 0;
  private crashes = 0;
  private consecutiveBootFailures = 0;
  private lastError: string | undefined;
  private sourceError: string | undefined;
  private lastThreadError: unknown;
  private restartTimer: NodeJS.Timeout | undefined;
  /**
   * Set by stop() (before its first await) until a start()/restart() begins a new life: while it is set nothing
   * schedules or starts a thread. The state alone could not say it: a thread's first publish, arriving after stop()
   * set 'stopping', turned it back into 'running', so that thread's crash scheduled a restart that outlived the stop
   * (issue 16, item 4: "stopped" logged, then "sidekick crashed; restarting" for ever).
   */
  private stopRequested = false;
  /** Set by the final stop (not a reload's): a restart() under way does not start a new generation after it. */
  private closed = false;
  private readonly backoff = new RestartBackoff();
  private nextTaskId = 1;
  private readonly tasks = new Map<number, PendingTask>();
  private readonly queued: { id: number; payload: unknown; reply: boolean; progress: boolean }[] = [];
  private exited: Promise<void> = Promise.resolve();
  /** Snapshots the thread replaced before they could be delivered (latest-wins); logged at most 1 line / 10 s. */
  private skippedSnapshots = 0;
  private starts = 0;
  private readonly restarts = { crash: 0, boot_failure: 0, clean_exit: 0, reload: 0 };
  private publishes = 0;
  private bytes = 0;
  private readonly fastLog: RateLimitedLog;

  constructor(
    readonly app: string,
    readonly name: string,
    /** Shared with the registry, so a reload's new settings apply to the next generation. */
    private readonly config: SidekicksConfig,
    private readonly log: Logger,
    private readonly unref: boolean,
    readonly seat: PoolSeat = { thread: 0, threads: 1, pooled: false, stats: new TaskStats() },
  ) {
    super();
    this.fastLog = new RateLimitedLog(log, 1, 10_000);
  }

  get current(): { vars: Vars; generation: number } | undefined {
    return this.vars ? { vars: this.vars, generation: this.generation } : undefined;
  }

  /** `sidekick "x"`, or `sidekick "x" thread 2` in a pool: what error messages name. */
  private get label(): string {
    return this.seat.threads > 1 ? `sidekick "${this.name}" thread ${this.seat.thread}` : `sidekick "${this.name}"`;
  }

  /** A thread is up or starting (not in backoff, failed or stopping): a pool may hand it tasks. */
  get hasThread(): boolean {
    return this.worker !== undefined && !this.stopRequested;
  }

  /** Tasks sent to this thread and not answered yet. */
  get inFlight(): number {
    return this.tasks.size;
  }

  private get entrypoint(): string {
    const declared = this.config.declare[this.name];
    if (declared?.source) return `built-in source "${declared.source.type}"`;
    return declared?.entrypoint ?? this.config.entrypoint ?? '(none)';
  }

  get isFailed(): boolean {
    return this.state === 'failed';
  }

  /** Starts the first generation, or a fresh series of attempts after the boot-failure cap was reached. */
  start(): void {
    if (this.closed || (this.state !== 'stopped' && this.state !== 'failed')) return;
    this.stopRequested = false;
    this.consecutiveBootFailures = 0;
    this.backoff.reset();
    this.spawn();
  }

  private spawn(): void {
    this.restartTimer = undefined;
    if (this.stopRequested) return;
    this.generation++;
    this.starts++;
    this.publishedThisRun = false;
    this.lastThreadError = undefined;
    this.sourceError = undefined; // a new run reports its own (a bad file on its first load is a boot failure)
    this.state = 'starting';
    const data: ThreadData & { previousVars?: Vars } = {
      app: this.app,
      name: this.name,
      entrypoint: this.entrypoint,
      generation: this.generation,
      everyMs: this.config.declare[this.name]?.every,
      maxVarsBytes: this.config.maxVarsBytes,
      taskQueue: this.config.taskQueue,
      source: this.config.declare[this.name]?.source,
      previousVars: this.vars,
      thread: this.seat.thread,
      threads: this.seat.threads,
    };
    const logging = threadLogging(); // its logs go through this process's bounded writer
    const worker = new Worker(THREAD_MAIN, {
      workerData: { ...data, ...logging.data },
      transferList: logging.transferList,
      argv: [this.name],
      env: {
        ...process.env,
        SIDEKICK_NAME: this.name,
        SIDEKICK_APP: this.app,
        SIDEKICK_THREAD: String(this.seat.thread),
      },
      name: `sidekick:${this.app}/${this.name}${this.seat.threads > 1 ? `#${this.seat.thread}` : ''}`,
      // A runaway sidekick (a leak, an allocation loop) hits its own limit and is restarted; the supervisor and the
      // other sidekicks go on.
      resourceLimits: { maxOldGenerationSizeMb: this.config.maxHeapMb },
    });
    if (this.unref) worker.unref();
    this.worker = worker;
    this.backoff.started();
    let onExit!: () => void;
    this.exited = new Promise((resolve) => (onExit = resolve));
    worker.on('message', (msg: FromThread) => this.onMessage(msg));
    worker.on('error', (err) => {
      this.lastThreadError = err;
    });
    worker.on('exit', (code) => {
      if (this.worker === worker) this.worker = undefined;
      this.onExit(code);
      onExit();
    });
    this.log.debug({ generation: this.generation }, 'sidekick thread started');
    this.emit('lifecycle', { kind: 'sidekick_started', generation: this.generation });
    // Tasks queued while no thread was up go to the new one.
    for (const task of this.queued.splice(0)) this.post({ sk: 'task', ...task });
  }

  private onMessage(msg: FromThread): void {
    if (msg.sk === 'vars') {
      this.post({ sk: 'vars-ack' }); // the thread may send its next snapshot (latest-wins, see thread-main)
      if (msg.skipped > 0) {
        this.skippedSnapshots += msg.skipped;
        this.fastLog.warn(
          { sidekick: this.name, skipped: this.skippedSnapshots },
          `sidekick "${this.name}" publishes faster than its snapshots can be delivered: intermediate snapshots were skipped, the latest is always delivered`,
        );
      }
      this.up();
      const snapshot = adoptSnapshot(msg.vars);
      if (sameVars(this.vars, snapshot)) return; // identical content: no new snapshot, no broadcast
      this.vars = snapshot;
      this.publishedAt = Date.now();
      this.publishes++;
      this.bytes = snapshotBytes(snapshot);
      this.emit('vars', snapshot, this.generation);
    } else if (msg.sk === 'tasks-ready') {
      if (this.seat.pooled) this.up();
    } else if (msg.sk === 'task-progress') {
      this.post({ sk: 'progress-ack', id: msg.id }); // the thread may send this task's next value (latest-wins)
      this.tasks.get(msg.id)?.onProgress?.(msg.value);
    } else if (msg.sk === 'source-error') {
      this.sourceError = msg.error;
    } else if (msg.sk === 'task-done') {
      const pending = this.tasks.get(msg.id);
      if (!pending) return;
      this.tasks.delete(msg.id);
      const stats = this.seat.stats;
      if (msg.ok) {
        stats.counts.completed++;
        stats.observe((performance.now() - pending.sentAt) / 1000);
        pending.resolve(msg.value);
      } else {
        stats.counts.failed++;
        pending.reject(errorFromData(msg.error));
      }
      this.seat.onTaskDone?.();
    }
  }

  /** The first publish of this run (or, in a task pool, handleTasks): from now on an exit is a crash. */
  private up(): void {
    if (this.publishedThisRun) return;
    this.publishedThisRun = true;
    if (!this.stopRequested) this.state = 'running';
    this.consecutiveBootFailures = 0;
  }

  private onExit(code: number): void {
    const err = this.lastThreadError;
    const reason = err !== undefined ? describeError(err) : `exited with code ${code}`;
    if (this.stopRequested || this.state === 'stopping' || this.state === 'stopped') {
      this.failTasksInFlight(
        new SidekickError('SK_ERR_STOPPED', `sidekick "${this.name}" exited before finishing the task`, {
          name: this.name,
        }),
      );
      this.state = 'stopped';
      return;
    }
    // Only this thread's tasks: a pool's other threads go on with theirs.
    this.failTasksInFlight(
      new SidekickError(
        'SK_ERR_TASK_CRASHED',
        `${this.label} died while running the task (${reason}); it is restarted, the task is not sent again`,
        { name: this.name, thread: this.seat.thread, reason },
      ),
    );
    const clean = err === undefined && code === 0;
    const { delayMs } = this.backoff.failed();
    if (!this.publishedThisRun) {
      this.bootFailures++;
      this.consecutiveBootFailures++;
      this.lastError = clean ? 'exited before its first publish (exit code 0)' : reason;
      this.log.warn(
        { attempt: this.consecutiveBootFailures, error: this.lastError, generation: this.generation },
        'sidekick boot failure',
      );
      this.emit('lifecycle', { kind: 'sidekick_boot_failed', generation: this.generation, detail: this.lastError });
      if (this.consecutiveBootFailures >= this.config.maxBootFailures && !this.vars) {
        this.state = 'failed';
        const error = new SidekickError(
          'SK_ERR_BOOT_FAILED',
          `sidekick "${this.name}" (app "${this.app}", entrypoint ${this.entrypoint}) failed to boot ${this.consecutiveBootFailures} times in a row; last error: ${this.lastError}`,
          {
            app: this.app,
            name: this.name,
            entrypoint: this.entrypoint,
            attempts: this.consecutiveBootFailures,
            lastError: this.lastError,
          },
        );
        this.log.error({ err: error.message }, 'sidekick gave up booting');
        this.emit('lifecycle', { kind: 'sidekick_gave_up', generation: this.generation, detail: this.lastError });
        this.failQueuedTasks(error);
        this.emit('failed', error);
        return;
      }
      this.restarts.boot_failure++;
    } else if (clean) {
      this.log.info({ generation: this.generation, delayMs }, 'sidekick exited cleanly; rerunning');
      this.restarts.clean_exit++;
      this.emit('lifecycle', { kind: 'sidekick_exited', generation: this.generation });
    } else {
      this.crashes++;
      this.lastError = reason;
      this.log.warn({ error: reason, generation: this.generation, delayMs }, 'sidekick crashed; restarting');
      this.restarts.crash++;
      this.emit('lifecycle', { kind: 'sidekick_crashed', generation: this.generation, detail: reason });
    }
    this.state = 'backoff';
    this.restartTimer = setTimeout(() => this.spawn(), delayMs);
    if (this.unref) this.restartTimer.unref();
  }

  /**
   * Takes over a sidekick from a sidekick host process that died (serve/sidekick-host.ts): its counters, generation
   * and last snapshot carry on, and the host's death counts as this sidekick's own thread exit with `reason` (a crash
   * if it had published in that run, else a boot failure), so it restarts with backoff as after any crash, with
   * generation + 1, and gives up as usual after maxBootFailures boot failures in a row.
   */
  resume(prev: SidekickStatus, vars: Vars | undefined, reason: string): void {
    this.generation = prev.generation;
    this.vars = vars;
    this.publishedAt = prev.publishedAt;
    this.bytes = prev.bytes;
    this.bootFailures = prev.bootFailures;
    this.crashes = prev.crashes;
    this.consecutiveBootFailures = prev.consecutiveBootFailures;
    this.lastError = prev.lastError;
    this.starts = prev.starts;
    this.publishes = prev.publishes;
    Object.assign(this.restarts, prev.restarts);
    if (prev.state === 'running' || prev.state === 'starting') {
      this.state = 'starting';
      this.publishedThisRun = prev.state === 'running';
      this.lastThreadError = new Error(reason);
      this.onExit(1);
    } else if (prev.state === 'backoff' || prev.state === 'stopping')
      this.spawn(); // due to start anyway
    else if (prev.state === 'failed') this.state = 'failed'; // stays given up until someone asks for it again
  }

  /**
   * Stop for good (the app stops): abort the signal, wait for the thread up to the grace period, then terminate it.
   * A pending restart is cancelled and none is scheduled after (a crash during the stop is not restarted).
   */
  async stop(graceMs = this.config.stopGraceMs): Promise<void> {
    this.closed = true;
    await this.stopThread(graceMs);
  }

  /** Ends the current generation (grace applies) and cancels any pending restart. */
  private async stopThread(graceMs = this.config.stopGraceMs): Promise<void> {
    this.stopRequested = true;
    this.cancelRestart();
    const worker = this.worker;
    this.state = 'stopping';
    this.failQueuedTasks(new SidekickError('SK_ERR_STOPPED', `sidekick "${this.name}" is stopping`));
    if (!worker) {
      this.state = 'stopped';
      return;
    }
    this.post({ sk: 'stop' });
    const exited = this.exited;
    const outcome = await settleWithin(
      exited.then(() => 'exited' as const),
      graceMs,
    );
    if (outcome === undefined) {
      this.log.warn({ graceMs }, 'sidekick did not stop within its grace period; terminating its thread');
      await worker.terminate();
      await exited;
    }
    this.cancelRestart(); // belt and braces: nothing may be left scheduled by a stopped instance
    this.state = 'stopped';
  }

  private cancelRestart(): void {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
  }

  /** Reload: stop this generation (grace applies) and start the next; the last snapshot keeps being served. */
  async restart(): Promise<void> {
    await this.stopThread();
    if (this.closed) return; // the app stopped meanwhile: no next generation
    this.stopRequested = false;
    this.consecutiveBootFailures = 0;
    this.backoff.reset();
    this.restarts.reload++;
    this.spawn();
  }

  /**
   * Queue a task; `reply` false = fire-and-forget (resolves when the handler finished). Bounded where tasks are sent:
   * each sending process holds at most `taskQueue` per sidekick in flight (api.ts), so this queue holds at most
   * taskQueue × senders; a task pool (pool.ts) hands a thread only what it can run.
   */
  task(payload: unknown, call: TaskCall): InstanceTaskHandle {
    if (this.state === 'stopping' || this.state === 'stopped') {
      const result = Promise.reject(new SidekickError('SK_ERR_STOPPED', `sidekick "${this.name}" is stopped`));
      return { result, cancel: () => false };
    }
    const id = this.nextTaskId++;
    this.seat.stats.counts.sent++;
    const { reply, onProgress } = call;
    const progress = onProgress !== undefined;
    const result = new Promise<unknown>((resolve, reject) => {
      this.tasks.set(id, { resolve, reject, reply, onProgress, sentAt: performance.now() });
      if (this.worker) this.post({ sk: 'task', id, payload, reply, progress });
      else this.queued.push({ id, payload, reply, progress });
    });
    return { result, cancel: (reason) => this.cancel(id, reason) };
  }

  private cancel(id: number, reason: Error): boolean {
    const pending = this.tasks.get(id);
    if (!pending || pending.cancelled) return false; // answered, or cancelled already
    pending.cancelled = true;
    const i = this.queued.findIndex((q) => q.id === id);
    if (i >= 0) {
      // Never reached a thread: it never runs.
      this.queued.splice(i, 1);
      this.tasks.delete(id);
      pending.reject(reason);
      return true;
    }
    // The thread aborts the handler's signal; its answer still comes (and frees the thread in a pool's count).
    this.post({ sk: 'task-cancel', id, reason: errorToData(reason) });
    return true;
  }

  private post(msg: ToThread): void {
    this.worker?.postMessage(msg);
  }

  private failTasksInFlight(error: SidekickError): void {
    const queuedIds = new Set(this.queued.map((q) => q.id));
    let failed = 0;
    for (const [id, pending] of this.tasks) {
      if (queuedIds.has(id)) continue;
      this.tasks.delete(id);
      failed++;
      pending.reject(error);
    }
    this.seat.stats.counts.failed += failed;
    if (failed > 0) this.seat.onTaskDone?.();
  }

  private failQueuedTasks(error: Error): void {
    for (const q of this.queued.splice(0)) {
      const pending = this.tasks.get(q.id);
      this.tasks.delete(q.id);
      this.seat.stats.counts.failed++;
      pending?.reject(error);
    }
  }

  status(): SidekickStatus {
    return {
      app: this.app,
      name: this.name,
      state: this.state,
      ready: this.vars !== undefined,
      generation: this.generation,
      bootFailures: this.bootFailures,
      crashes: this.crashes,
      consecutiveFailures: this.backoff.consecutive,
      consecutiveBootFailures: this.consecutiveBootFailures,
      lastError: this.lastError,
      sourceError: this.sourceError,
      publishedAt: this.publishedAt,
      keys: this.vars ? Object.keys(this.vars).length : 0,
      bytes: this.bytes,
      starts: this.starts,
      restarts: { ...this.restarts },
      publishes: this.publishes,
      tasks: { ...this.seat.stats.counts },
      tasksInFlight: this.tasks.size,
    };
  }
}
