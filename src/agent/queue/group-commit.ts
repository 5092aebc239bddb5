// Group commit: fsync requests are coalesced. After a write the writer asks for an fsync within syncIntervalMs (one
// timer, however many writes land meanwhile), or right away when the interval is 0; flush() and close() ask for one
// now and wait. One sync runs at a time; requests that arrive while it runs are served by the next one, so a waiter
// only resolves once a sync that started after its request has finished (and is rejected if that sync failed).
// What is synced, in which order, is the segment table's business (SegmentTable.syncDirty). A failed sync (EIO, or
// ENOSPC from a filesystem that allocates late) rejects its waiters, is logged, and is retried on its own (1 s doubling
// to 30 s) even if no write comes to schedule one: the table keeps what is dirty until a sync succeeds.
//
// Durability this gives: a SIGKILL loses only what the writer had not yet written (writer.ts); power loss at most
// syncIntervalMs more, and ledger positions only ever point into synced data (the table's sync order).
import { describeError } from '../../errors.js';
import type { Logger } from '../../log/logger.js';

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;

export class GroupCommit {
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private requested = 0;
  private done = 0;
  private running = false;
  private waiters: Array<{ gen: number; resolve: () => void; reject: (err: unknown) => void }> = [];
  private stopped = false;
  private current: Promise<void> | undefined;

  constructor(
    private readonly dir: string,
    /** 0 = fsync after every write. */
    readonly intervalMs: number,
    private readonly syncDirty: () => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** fsync within intervalMs (no-op if one is already scheduled, or after stop()). */
  schedule(delayMs = this.intervalMs): void {
    if (this.timer || this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.sync().catch(() => {});
    }, delayMs);
    this.timer.unref();
  }

  /** fsync everything written so far; resolves when a sync started after this call has finished. Coalesced. */
  sync(): Promise<void> {
    const gen = ++this.requested;
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ gen, resolve, reject }));
    if (!this.running) {
      this.running = true;
      this.current = this.loop();
    }
    return p;
  }

  /** performance.now() when the fsync in progress began; 0 when none runs. */
  private syncStartedAt = 0;

  /** How long the fsync in progress has been waiting for the filesystem (0 if none). */
  get stalledMs(): number {
    return this.syncStartedAt === 0 ? 0 : Math.round(performance.now() - this.syncStartedAt);
  }

  /** A sync is running (close() waits them out before the final one). */
  get busy(): boolean {
    return this.running;
  }

  /** Resolves once no sync is running (the spool switches directories between two syncs). */
  async idle(): Promise<void> {
    while (this.running) await this.current;
  }

  /** Forget the failures and their backoff, and sync soon (the spool's directory was recreated). */
  retrySoon(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.failures = 0;
    this.schedule();
  }

  /** No more timers (close). sync() still works. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private async loop(): Promise<void> {
    try {
      while (this.done < this.requested) {
        const target = this.requested;
        let error: unknown;
        try {
          this.syncStartedAt = performance.now();
          await this.syncDirty();
        } catch (err) {
          error = err;
          this.failures++;
          this.log.error({ dir: this.dir, err: describeError(err) }, 'spool fsync failed; retried');
        }
        this.syncStartedAt = 0;
        if (error === undefined) this.failures = 0;
        this.done = target;
        const keep: typeof this.waiters = [];
        for (const w of this.waiters) {
          if (w.gen > target) keep.push(w);
          else if (error === undefined) w.resolve();
          else w.reject(error);
        }
        this.waiters = keep;
      }
    } finally {
      this.running = false;
      if (this.failures > 0) this.schedule(Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (this.failures - 1)));
    }
  }
}
