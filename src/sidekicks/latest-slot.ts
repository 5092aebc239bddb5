// Latest-wins delivery per key (a task's progress values), for one hop (a thread port, an IPC channel): at most one
// message per key on its way and one waiting behind it, replaced by every newer one. A handler calling progress() in
// a tight loop costs two messages' memory per hop, never a queue; intermediate values are skipped, order is kept, and
// the value waiting when the task ends goes out before the result (end()).
export class LatestSlot<K, M> {
  private readonly inFlight = new Set<K>();
  private readonly waiting = new Map<K, M>();

  /** `write` sends one message and calls `done` once the hop took it (an ack, a send callback). */
  constructor(private readonly write: (msg: M, done: () => void) => void) {}

  send(key: K, msg: M): void {
    if (this.inFlight.has(key)) {
      this.waiting.set(key, msg);
      return;
    }
    this.inFlight.add(key);
    try {
      this.write(msg, () => this.done(key));
    } catch (err) {
      this.inFlight.delete(key); // e.g. a value that cannot be cloned: the caller hears it, the slot stays usable
      throw err;
    }
  }

  /** The hop took the message in flight for `key`: the waiting one (if any) goes next. */
  done(key: K): void {
    if (!this.inFlight.delete(key)) return;
    const next = this.waiting.get(key);
    if (next === undefined) return;
    this.waiting.delete(key);
    this.send(key, next);
  }

  /** `key` is finished: the waiting message goes now (before whatever the caller sends next), then nothing is kept. */
  end(key: K): void {
    const next = this.waiting.get(key);
    this.waiting.delete(key);
    this.inFlight.delete(key);
    if (next !== undefined) this.write(next, () => {});
  }

  get size(): number {
    return this.inFlight.size + this.waiting.size;
  }
}
