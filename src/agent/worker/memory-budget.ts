// The memory bound (`agent.memory.maxBytes`).
//
// Every record is on disk (the spool) within milliseconds of being read, so the heap never holds a backlog; what the
// bound caps are the buffers *between* the client socket and the disk, and between the disk and central:
//   receiver  — unfinished lines carried across socket reads (each ≤ maxRecordBytes)
//   spool     — bytes appended but not yet written to the OS (the spool's write buffer; the spool signals
//               back-pressure past its high-water mark, which holds the receiver like an exhausted budget)
//   inflight  — the batch being exported (its payload, plus its gzip copy)
// Past maxBytes the receiver stops reading client sockets (the kernel socket buffers and then the clients' own
// non-blocking drop counters absorb the burst) until usage falls back under the low-water mark (75%). Unfinished
// lines alone never block here (only reading on can finish them); each is capped by maxRecordBytes, and together they
// have their own share, `partialLimit` (a quarter of maxBytes), which the receiver keeps by reading one connection at
// a time while they are over it (receivers/unix-socket.ts, "Unfinished lines").
import { EventEmitter } from 'node:events';

export type MemoryPool = 'receiver' | 'spool' | 'inflight';

export class MemoryBudget extends EventEmitter {
  private readonly pools: Record<MemoryPool, number> = { receiver: 0, spool: 0, inflight: 0 };
  private total = 0;
  private blocked = false;
  private readonly holds = new Set<string>();

  constructor(private maxBytes: number) {
    super();
    this.setMaxListeners(0);
  }

  setMaxBytes(n: number): void {
    this.maxBytes = n;
    this.check();
  }

  add(pool: MemoryPool, delta: number): void {
    if (delta === 0) return;
    this.pools[pool] += delta;
    this.total += delta;
    this.check();
  }

  set(pool: MemoryPool, bytes: number): void {
    this.add(pool, bytes - this.pools[pool]);
  }

  get used(): number {
    return this.total;
  }

  /** Bytes in one pool now. */
  pool(name: MemoryPool): number {
    return this.pools[name];
  }

  /** What unfinished lines may hold together before the receiver reads one connection at a time: maxBytes / 4. */
  get partialLimit(): number {
    return Math.floor(this.maxBytes / 4);
  }

  usage(): Record<MemoryPool, number> & { total: number; limit: number } {
    return { ...this.pools, total: this.total, limit: this.maxBytes };
  }

  /** True while readers should hold off. */
  get exhausted(): boolean {
    return this.blocked;
  }

  /** An external reason to hold readers (e.g. the spool's back-pressure) until `release(name)`. */
  hold(name: string): void {
    this.holds.add(name);
    this.check();
  }

  release(name: string): void {
    if (this.holds.delete(name)) this.check();
  }

  private check(): void {
    // Unfinished lines only shrink by reading on (the line completes and goes to the spool): when nothing else holds
    // memory, they must not block by themselves, or readers paused mid-line would wait for relief forever.
    const drains = this.pools.spool + this.pools.inflight > 0;
    const over = (this.total > this.maxBytes && drains) || this.holds.size > 0;
    if (!this.blocked && over) {
      this.blocked = true;
      this.emit('exhausted');
    } else if (this.blocked && this.holds.size === 0 && (this.total <= this.maxBytes * 0.75 || !drains)) {
      this.blocked = false;
      this.emit('relief');
    }
  }
}
