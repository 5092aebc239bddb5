// How the app-side API reaches sidekicks. In `sidekick serve` an HTTP worker talks to the supervisor over IPC;
// in library mode the registry lives in this process and its threads.
import type { SidekickError } from '../errors.js';
import type { TaskCall, TaskHandle } from './task-handle.js';
import type { VarsStore } from '../vars/store.js';
import type { SidekickRegistry } from './registry.js';
import { errorFromData, errorToData } from '../errors.js';
import { isSidekickMessage, type PrimaryToWorker, type WorkerSettings, type WorkerToPrimary } from './messages.js';
import { adoptSnapshot } from '../vars/snapshot.js';

export interface Transport {
  readonly app: string;
  /** Tasks in flight per sidekick from this process before SK_ERR_TASK_QUEUE_FULL (`sidekicks.taskQueue`). */
  readonly taskQueue: number;
  /** Start `name` if needed. Problems are reported by throwing (local) or by failing the store's waiters (IPC). */
  ensure(name: string): void;
  task(name: string, payload: unknown, call: TaskCall): TaskHandle;
  stop(): Promise<void>;
}

export class LocalTransport implements Transport {
  constructor(
    private readonly store: VarsStore,
    private readonly registry: SidekickRegistry,
  ) {
    registry.on('vars', (name, vars) => store.publish(name, vars));
    registry.on('failed', (name, error: SidekickError) => store.fail(name, error));
  }

  get app(): string {
    return this.registry.app;
  }

  get taskQueue(): number {
    return this.registry.config.taskQueue;
  }

  ensure(name: string): void {
    this.registry.ensure(name);
  }

  task(name: string, payload: unknown, call: TaskCall): TaskHandle {
    return this.registry.task(name, payload, call);
  }

  stop(): Promise<void> {
    return this.registry.stop();
  }
}

/** HTTP worker side of `sidekick serve`: the supervisor answers `hello` with this worker's settings and every snapshot. */
export class IpcTransport implements Transport {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; onProgress: TaskCall['onProgress'] }
  >();
  private initialised!: (settings: WorkerSettings) => void;
  /** Resolves with the worker's settings once the supervisor sent them and every existing snapshot. */
  readonly ready = new Promise<WorkerSettings>((resolve) => (this.initialised = resolve));
  private settings: WorkerSettings | undefined;

  constructor(private readonly store: VarsStore) {
    process.on('message', (msg: unknown) => {
      if (isSidekickMessage(msg)) this.onMessage(msg as PrimaryToWorker);
    });
    // Messages sent before this listener existed would be lost, so ask for the settings and snapshots only now.
    this.send({ sk: 'hello' });
  }

  get app(): string {
    return this.settings?.app ?? process.env.SIDEKICK_SERVE_APP ?? '';
  }

  get taskQueue(): number {
    // The app's module is loaded only after `ready`, so no task can be sent before the settings are here.
    return this.settings?.taskQueue ?? 0;
  }

  private onMessage(msg: PrimaryToWorker): void {
    switch (msg.sk) {
      case 'init':
        for (const s of msg.snapshots) this.store.publish(s.name, adoptSnapshot(s.vars));
        this.settings = msg.settings;
        this.initialised(msg.settings);
        break;
      case 'vars':
        this.store.publish(msg.name, adoptSnapshot(msg.vars));
        break;
      case 'failed':
        this.store.fail(msg.name, errorFromData(msg.error));
        break;
      case 'task-progress':
        this.pending.get(msg.id)?.onProgress?.(msg.value);
        break;
      case 'task-done': {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.ok) p.resolve(msg.value);
        else p.reject(errorFromData(msg.error));
        break;
      }
      default:
        break;
    }
  }

  private send(msg: WorkerToPrimary): void {
    process.send!(msg);
  }

  ensure(name: string): void {
    this.send({ sk: 'ensure', name });
  }

  task(name: string, payload: unknown, { reply, onProgress }: TaskCall): TaskHandle {
    const id = this.nextId++;
    const result = new Promise<unknown>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      this.send({ sk: 'task', id, name, payload, reply, progress: onProgress !== undefined });
    });
    // The answer still comes (the handler sees its signal abort and ends); the slot is freed by it.
    const cancel = (reason: Error): void => {
      if (this.pending.has(id)) this.send({ sk: 'task-cancel', id, reason: errorToData(reason) });
    };
    return { result, cancel };
  }

  async stop(): Promise<void> {}
}
