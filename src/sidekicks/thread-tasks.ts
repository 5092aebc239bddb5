// A sidekick thread's side of tasks: runs each task through the handler with its own AbortController (aborted on the
// caller's cancel or the sidekick's stop) and a progress function, holds tasks that arrive before handleTasks, and
// sends progress latest-wins (one value per task on its way to the main thread until it acks it, one waiting).
import { SidekickError, errorToData } from '../errors.js';
import type { TaskHandler } from './context.js';
import { LatestSlot } from './latest-slot.js';
import type { FromThread, ToThread } from './messages.js';

type TaskMsg = Extract<ToThread, { sk: 'task' }>;

export class ThreadTasks {
  private handler: TaskHandler | undefined;
  /** Set once the sidekick published without having called handleTasks: tasks then fail at once instead of waiting. */
  private noHandler = false;
  private readonly early: TaskMsg[] = [];
  private readonly running = new Map<number, AbortController>();
  private readonly progress: LatestSlot<number, FromThread>;

  constructor(
    private readonly post: (msg: FromThread) => void,
    private readonly who: string,
    private readonly maxEarly: number,
  ) {
    // A progress message is "taken" when the main thread acks it (progressAcked).
    this.progress = new LatestSlot((msg) => post(msg));
  }

  get hasHandler(): boolean {
    return this.handler !== undefined;
  }

  setHandler(fn: TaskHandler): void {
    this.handler = fn;
    this.noHandler = false;
    for (const task of this.early.splice(0)) void this.run(task, fn);
  }

  onTask(task: TaskMsg): void {
    if (this.handler) void this.run(task, this.handler);
    else if (!this.noHandler && this.early.length < this.maxEarly) this.early.push(task);
    else this.reject(task.id, new SidekickError('SK_ERR_NO_TASK_HANDLER', `${this.who} has not called handleTasks`));
  }

  onCancel(id: number, reason: Error): void {
    const controller = this.running.get(id);
    if (controller) return controller.abort(reason);
    // Still waiting for handleTasks: it never runs.
    const i = this.early.findIndex((t) => t.id === id);
    if (i >= 0) {
      this.early.splice(i, 1);
      this.reject(id, reason);
    }
  }

  progressAcked(id: number): void {
    this.progress.done(id);
  }

  /** The sidekick published without a handler: waiting tasks fail with SK_ERR_NO_TASK_HANDLER (see thread-main). */
  settleWithoutHandler(): void {
    if (this.handler) return;
    this.noHandler = true;
    for (const task of this.early.splice(0)) this.onTask(task);
  }

  /** The sidekick is stopping: every running handler's signal aborts with `reason`. */
  abortAll(reason: Error): void {
    for (const c of this.running.values()) c.abort(reason);
  }

  private async run(task: TaskMsg, fn: TaskHandler): Promise<void> {
    const controller = new AbortController();
    this.running.set(task.id, controller);
    const progress = task.progress
      ? (value: unknown): void => {
          if (this.running.get(task.id) === controller)
            this.progress.send(task.id, { sk: 'task-progress', id: task.id, value });
        }
      : (): void => {};
    let done: FromThread;
    try {
      const value = await fn(task.payload, { signal: controller.signal, progress });
      done = { sk: 'task-done', id: task.id, ok: true, value: task.reply ? value : undefined };
    } catch (err) {
      done = {
        sk: 'task-done',
        id: task.id,
        ok: false,
        error: errorToData(
          new SidekickError('SK_ERR_TASK_FAILED', `${this.who}: task handler threw: ${errorToData(err).message}`),
        ),
      };
    }
    this.running.delete(task.id);
    if (task.progress) this.progress.end(task.id); // the last progress value goes before the result
    try {
      this.post(done);
    } catch (err) {
      // A result that cannot be cloned (a function, a socket) fails the task rather than the thread.
      this.reject(
        task.id,
        new SidekickError('SK_ERR_TASK_FAILED', `${this.who}: task result: ${errorToData(err).message}`),
      );
    }
  }

  private reject(id: number, error: Error): void {
    this.post({ sk: 'task-done', id, ok: false, error: errorToData(error) });
  }
}
