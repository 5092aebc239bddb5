// The per-process view of every sidekick's latest snapshot, fed by a transport (IPC from the supervisor in
// `sidekick serve`, or the in-process registry in library mode). readVars is a Map lookup: the hot path.
import { SidekickError } from '../errors.js';
import type { Vars } from './snapshot.js';

type Waiter = { resolve: (v: Vars) => void; reject: (e: Error) => void };
export type VarsListener = (vars: Vars, name: string) => void;

export class VarsStore {
  private readonly snapshots = new Map<string, Vars>();
  private readonly waiters = new Map<string, Set<Waiter>>();
  private readonly listeners = new Map<string, Set<VarsListener>>();

  /** Synchronous read of the latest snapshot; throws SK_ERR_NOT_READY if nothing was ever published. */
  read(name: string): Vars {
    const vars = this.snapshots.get(name);
    if (vars !== undefined) return vars;
    throw new SidekickError(
      'SK_ERR_NOT_READY',
      `sidekick "${name}" has not published yet; await getVars("${name}") before readVars`,
      { name },
    );
  }

  peek(name: string): Vars | undefined {
    return this.snapshots.get(name);
  }

  publish(name: string, vars: Vars): void {
    this.snapshots.set(name, vars);
    const waiting = this.waiters.get(name);
    if (waiting) {
      this.waiters.delete(name);
      for (const w of waiting) w.resolve(vars);
    }
    const listening = this.listeners.get(name);
    if (listening) {
      for (const l of [...listening]) {
        try {
          l(vars, name);
        } catch (err) {
          // A throwing listener must not stop the others or the publish; surface it like an uncaught error.
          queueMicrotask(() => {
            throw err;
          });
        }
      }
    }
  }

  /** Rejects everyone waiting for `name` (boot failures exhausted, lazy cap, shutdown). */
  fail(name: string, error: Error): void {
    const waiting = this.waiters.get(name);
    if (!waiting) return;
    this.waiters.delete(name);
    for (const w of waiting) w.reject(error);
  }

  /** Forgets every snapshot (listeners stay): after a library-mode shutdown nothing stale is served. */
  clear(): void {
    this.snapshots.clear();
  }

  failAll(error: Error): void {
    for (const name of [...this.waiters.keys()]) this.fail(name, error);
  }

  /** A promise for the first snapshot of `name`, plus a function that withdraws it (used on timeout). */
  wait(name: string): { promise: Promise<Vars>; cancel: () => void } {
    let waiter!: Waiter;
    const promise = new Promise<Vars>((resolve, reject) => {
      waiter = { resolve, reject };
    });
    let set = this.waiters.get(name);
    if (!set) this.waiters.set(name, (set = new Set()));
    set.add(waiter);
    const cancel = (): void => {
      const s = this.waiters.get(name);
      if (!s) return;
      s.delete(waiter);
      if (s.size === 0) this.waiters.delete(name);
    };
    return { promise, cancel };
  }

  on(name: string, listener: VarsListener): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }
}
