// The supervisor's side of one HTTP worker's IPC channel: sends that never throw or crash the supervisor when the
// worker is gone, and latest-wins delivery of snapshots.
import type { Worker } from 'node:cluster';
import { describeError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { PrimaryToWorker } from '../sidekicks/messages.js';
import { LatestSlot } from '../sidekicks/latest-slot.js';

type VarsMessage = Extract<PrimaryToWorker, { sk: 'vars' }>;
type TaskDone = Extract<PrimaryToWorker, { sk: 'task-done' }>;

export class WorkerChannel {
  /** Names whose last snapshot is still being written to the channel … */
  private readonly varsInFlight = new Set<string>();
  /** … and the newest snapshot waiting behind it (a newer one replaces it). */
  private readonly varsWaiting = new Map<string, VarsMessage>();
  /** Progress of its tasks, latest-wins per task like snapshots: one value being written, one waiting. */
  private readonly progress = new LatestSlot<number, PrimaryToWorker>((msg, done) => this.write(msg, done));

  constructor(
    private readonly worker: Worker,
    private readonly log: Logger,
  ) {
    // A worker that dies between isConnected() and the write makes the write fail with EPIPE, reported
    // asynchronously as 'error' on the Worker; unhandled, it would crash the supervisor.
    worker.on('error', (err) => this.log.debug({ err: describeError(err) }, 'HTTP worker IPC error'));
  }

  send(msg: PrimaryToWorker): void {
    this.write(msg, () => {});
  }

  /** `done` runs once the message is written (or could not be: the worker is gone). */
  private write(msg: PrimaryToWorker, done: () => void): void {
    if (!this.worker.isConnected()) return done();
    try {
      this.worker.send(msg, undefined, undefined, (err: Error | null) => {
        if (err) this.log.debug({ err: describeError(err) }, 'send to HTTP worker failed');
        done();
      });
    } catch (err) {
      this.log.debug({ err: describeError(err) }, 'send to HTTP worker failed');
      done();
    }
  }

  sendProgress(id: number, value: unknown): void {
    this.progress.send(id, { sk: 'task-progress', id, value });
  }

  /** The task's answer, after its last progress value. */
  sendTaskDone(msg: TaskDone): void {
    this.progress.end(msg.id);
    this.send(msg);
  }

  /**
   * Snapshots are latest-wins between the supervisor and each HTTP worker: while one snapshot of a sidekick is being
   * written to a worker (a slow or busy worker does not read its IPC channel), newer ones replace each other in one
   * slot instead of queueing in this process. Memory stays bounded however fast a sidekick publishes; the worker may
   * skip intermediate snapshots, never the latest.
   */
  sendVars(msg: VarsMessage): void {
    if (!this.worker.isConnected()) return;
    if (this.varsInFlight.has(msg.name)) {
      this.varsWaiting.set(msg.name, msg);
      return;
    }
    this.varsInFlight.add(msg.name);
    const done = (): void => {
      this.varsInFlight.delete(msg.name);
      const next = this.varsWaiting.get(msg.name);
      if (next) {
        this.varsWaiting.delete(msg.name);
        this.sendVars(next);
      }
    };
    try {
      this.worker.send(msg, undefined, undefined, done);
    } catch (err) {
      this.log.debug({ err: describeError(err) }, 'send to HTTP worker failed');
      this.varsInFlight.delete(msg.name);
    }
  }
}
