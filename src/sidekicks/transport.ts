// How the app-side API reaches sidekicks. In `sidekick serve` an HTTP worker talks to the supervisor over IPC;
// in library mode the registry lives in this process and its threads.
import type { SidekickError } from '../errors.js';
import type { VarsStore } from '../vars/store.js';
import type { SidekickRegistry } from './registry.js';
import { rebuildError } from './instance.js';
import type { PrimaryToWorker, WorkerToPrimary } from './ipc-protocol.js';
import { isSidekickMessage } from './ipc-protocol.js';
import { adoptSnapshot } from '../vars/snapshot.js';

export interface Transport {
  readonly app: string;
  /** Start `name` if needed. Problems are reported by throwing (local) or by failing the store's waiters (IPC). */
  ensure(name: string): void;
  task(name: string, payload: unknown, reply: boolean): Promise<unknown>;
  stop(): Promise<void>;
}

export class LocalTransport implements Transport {
  constructor(
    private readonly store: VarsStore,
    private readonly registry: SidekickRegistry,
  ) {
    registry.on('vars', (name, vars, generation) => store.publish(name, vars, generation));
    registry.on('failed', (name, error: SidekickError) => store.fail(name, error));
  }

  get app(): string {
    return this.registry.app;
  }

  ensure(name: string): void {
    this.registry.ensure(name);
  }

  task(name: string, payload: unknown, reply: boolean): Promise<unknown> {
    return this.registry.task(name, payload, reply);
  }

  stop(): Promise<void> {
    return this.registry.stop();
  }

  get registryForStatus(): SidekickRegistry {
    return this.registry;
  }
}

/** HTTP worker side of `sidekick serve`. */
export class IpcTransport implements Transport {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private initialised!: () => void;
  /** Resolves once the supervisor sent every existing snapshot: the worker listens only after that. */
  readonly ready = new Promise<void>((resolve) => (this.initialised = resolve));

  constructor(
    readonly app: string,
    private readonly store: VarsStore,
  ) {
    process.on('message', (msg: unknown) => {
      if (isSidekickMessage(msg)) this.onMessage(msg as PrimaryToWorker);
    });
    // Messages sent before this listener existed would be lost, so ask for the snapshots only now.
    this.send({ sk: 'hello' });
  }

  private onMessage(msg: PrimaryToWorker): void {
    switch (msg.sk) {
      case 'init':
        for (const s of msg.snapshots) this.store.publish(s.name, adoptSnapshot(s.vars), s.generation);
        this.initialised();
        break;
      case 'vars':
        this.store.publish(msg.name, adoptSnapshot(msg.vars), msg.generation);
        break;
      case 'failed':
        this.store.fail(msg.name, rebuildError(msg.error));
        break;
      case 'task-done': {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.ok) p.resolve(msg.value);
        else p.reject(rebuildError(msg.error));
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

  task(name: string, payload: unknown, reply: boolean): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.send({ sk: 'task', id, name, payload, reply });
    });
  }

  async stop(): Promise<void> {}
}
