// A sidekick as the registry sees it: its thread(s) and its tasks. Without `declare.NAME.tasks` it is one thread
// (SidekickInstance) that gets every task at once, as it always did. With it, it is a task pool: `threads` instances
// of the same entrypoint, each running at most `concurrency` tasks; a task goes to an idle thread (the first one, the
// warmest) or waits in one FIFO queue of at most `queue` tasks (served in arrival order). Each thread has
// its own life (restart with backoff, generations): a thread that dies fails only its own tasks (SK_ERR_TASK_CRASHED)
// and is replaced while the others go on. Thread 0 is the sidekick itself: its vars, readiness and `failed` are the
// sidekick's (the other threads cannot publish: SK_ERR_VARS_NOT_PUBLISHER).
import { EventEmitter } from 'node:events';
import { SidekickError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { SidekicksConfig } from '../config/schema.js';
import type { Vars } from '../vars/snapshot.js';
import { SidekickInstance, type InstanceEvents, type InstanceTaskHandle, type SidekickStatus } from './instance.js';
import type { TaskCall, TaskHandle } from './task-handle.js';
import { TaskStats } from './task-stats.js';

interface Waiting {
  payload: unknown;
  call: TaskCall;
  resolve(v: unknown): void;
  reject(e: Error): void;
  /** Set once a thread took it. */
  handle?: InstanceTaskHandle;
  settled: boolean;
  cancelled: boolean;
}

export class SidekickPool extends EventEmitter<InstanceEvents> {
  private readonly members: SidekickInstance[];
  private readonly stats = new TaskStats();
  private readonly waiting: Waiting[] = [];
  private stopping = false;
  /** Declared with `tasks`: dispatch through the queue; otherwise every task goes straight to the one thread. */
  private readonly pooled: boolean;

  constructor(
    readonly app: string,
    readonly name: string,
    private readonly config: SidekicksConfig,
    log: Logger,
    unref: boolean,
  ) {
    super();
    const tasks = config.declare[name]?.tasks;
    this.pooled = tasks !== undefined;
    // Read once: a reload applies new `queue` and `concurrency` at once, a new thread count when the host restarts.
    const threads = tasks?.threads ?? 1;
    this.members = Array.from(
      { length: threads },
      (_, thread) =>
        new SidekickInstance(app, name, config, thread ? log.child({ thread }) : log, unref, {
          thread,
          threads,
          pooled: this.pooled,
          stats: this.stats,
          // A thread with room again takes the next waiting task (no queue without a pool).
          onTaskDone: this.pooled ? () => this.dispatch() : undefined,
        }),
    );
    this.members.forEach((m, thread) => {
      if (thread === 0) {
        m.on('vars', (vars, generation) => this.emit('vars', vars, generation));
        m.on('lifecycle', (e) => this.emit('lifecycle', e));
      } else {
        m.on('lifecycle', (e) =>
          this.emit('lifecycle', { ...e, detail: e.detail ? `thread ${thread}: ${e.detail}` : `thread ${thread}` }),
        );
      }
      m.on('failed', (error) => {
        if (thread === 0) this.emit('failed', error);
        // Every thread gave up booting: nothing will ever take the waiting tasks.
        if (this.members.every((x) => x.isFailed)) this.failWaiting(error);
      });
      // A new thread (first start, restart after a crash, reload) can take waiting tasks.
      m.on('lifecycle', (e) => {
        if (e.kind === 'sidekick_started') this.dispatch();
      });
    });
  }

  private get limits(): { concurrency: number; queue: number } {
    const t = this.config.declare[this.name]?.tasks;
    return { concurrency: t?.concurrency ?? 1, queue: t?.queue ?? 0 };
  }

  get current(): { vars: Vars; generation: number } | undefined {
    return this.members[0]!.current;
  }

  /** Thread 0 (the sidekick's vars) gave up booting: a new request starts fresh attempts. */
  get isFailed(): boolean {
    return this.members[0]!.isFailed;
  }

  start(): void {
    this.stopping = false;
    for (const m of this.members) m.start();
  }

  task(payload: unknown, call: TaskCall): TaskHandle {
    if (!this.pooled) return this.counted(this.members[0]!.task(payload, call));
    if (this.stopping) {
      const result = Promise.reject(new SidekickError('SK_ERR_STOPPED', `sidekick "${this.name}" is stopped`));
      return { result, cancel: () => {} };
    }
    // The common case first: nothing waits and a thread is idle, so the task goes straight to it.
    const idle = this.waiting.length === 0 ? this.idleMember() : undefined;
    if (idle) return this.counted(idle.task(payload, call));
    const { queue } = this.limits;
    if (this.waiting.length >= queue) {
      const result = Promise.reject(
        new SidekickError(
          'SK_ERR_TASK_QUEUE_FULL',
          `task pool of sidekick "${this.name}" is full: every thread is busy and ${queue} tasks wait (declare.${this.name}.tasks.queue)`,
          { name: this.name, limit: queue },
        ),
      );
      return { result, cancel: () => {} };
    }
    const entry = { payload, call, settled: false, cancelled: false } as Waiting;
    const result = new Promise<unknown>((resolve, reject) => {
      entry.resolve = (v) => {
        entry.settled = true;
        resolve(v);
      };
      entry.reject = (e) => {
        entry.settled = true;
        reject(e);
      };
    });
    this.waiting.push(entry);
    return { result, cancel: (reason) => this.cancel(entry, reason) };
  }

  /**
   * The first thread (lowest index) with room for a task. Tasks are served in arrival order (FIFO), so none waits
   * behind a later one; among idle threads the lowest one is the warmest: handing every task to the next thread in
   * turn woke a colder thread each time (+14 µs per empty round trip with 2 threads, bench/tasks-pool.ts).
   */
  private idleMember(): SidekickInstance | undefined {
    const { concurrency } = this.limits;
    for (const m of this.members) if (m.hasThread && m.inFlight < concurrency) return m;
    return undefined;
  }

  /** Hands waiting tasks to idle threads, oldest task first. Runs whenever a thread frees up or starts. */
  private dispatch(): void {
    while (this.waiting.length > 0) {
      const chosen = this.idleMember();
      if (!chosen) return;
      const entry = this.waiting.shift()!;
      entry.handle = chosen.task(entry.payload, entry.call);
      entry.handle.result.then(entry.resolve, entry.reject);
    }
  }

  /** A thread's handle whose cancel is counted (by the thread's own verdict: once, and only before the answer). */
  private counted(handle: InstanceTaskHandle): TaskHandle {
    return {
      result: handle.result,
      cancel: (reason) => {
        if (handle.cancel(reason)) this.stats.counts.cancelled++;
      },
    };
  }

  private cancel(entry: Waiting, reason: Error): void {
    if (entry.settled || entry.cancelled) return;
    entry.cancelled = true;
    if (entry.handle) {
      if (entry.handle.cancel(reason)) this.stats.counts.cancelled++;
      return;
    }
    this.stats.counts.cancelled++;
    const i = this.waiting.indexOf(entry);
    if (i >= 0) this.waiting.splice(i, 1); // never runs
    entry.reject(reason);
  }

  private failWaiting(error: Error): void {
    for (const entry of this.waiting.splice(0)) entry.reject(error);
  }

  async restart(): Promise<void> {
    await Promise.all(this.members.map((m) => m.restart()));
  }

  async stop(graceMs?: number): Promise<void> {
    this.stopping = true;
    this.failWaiting(new SidekickError('SK_ERR_STOPPED', `sidekick "${this.name}" is stopping`));
    await Promise.all(this.members.map((m) => m.stop(graceMs)));
  }

  /** Takes over from a dead sidekick host: thread 0 from the sidekick's status, the others from their entries. */
  resume(prev: SidekickStatus, vars: Vars | undefined, reason: string): void {
    this.stats.restore(prev.tasks, prev.pool?.durations);
    this.members[0]!.resume(prev, vars, reason);
    this.members.slice(1).forEach((m, i) => {
      const seat = prev.pool?.members[i];
      if (!seat) return m.start();
      m.resume(
        { ...prev, state: seat.state, generation: seat.generation, crashes: seat.crashes, lastError: seat.lastError },
        undefined,
        reason,
      );
    });
  }

  status(): SidekickStatus {
    const own = this.members[0]!.status();
    const inFlight = this.members.reduce((n, m) => n + m.inFlight, 0);
    const rest = this.members.slice(1).map((m) => m.status());
    return {
      ...own,
      tasks: { ...this.stats.counts },
      tasksInFlight: inFlight + this.waiting.length,
      pool: {
        threads: this.members.length,
        busy: this.members.filter((m) => m.inFlight > 0).length,
        queued: this.waiting.length,
        crashes: own.crashes + rest.reduce((n, s) => n + s.crashes, 0),
        durations: this.stats.durations(),
        members: rest.map((s, i) => ({
          thread: i + 1,
          state: s.state,
          generation: s.generation,
          crashes: s.crashes,
          ...(s.lastError ? { lastError: s.lastError } : {}),
        })),
      },
    };
  }
}
