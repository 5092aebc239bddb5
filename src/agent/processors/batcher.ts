// Batching: when to cut the next batch out of the spool.
//
// A batch is cut when `batch.maxRecords` records are pending, or when the oldest pending record has waited
// `batch.maxDelayMs`, whichever comes first (and at once while stopping). Once cut, a batch is fixed: the spool hands
// out the same id and payload after a release or a restart, so we only ask for one when it is due.
//
// The age of the oldest pending record is tracked here, in memory, with coarse marks (time, cumulative count) taken
// as records are appended: cheap on the hot path and exact enough for a deadline in seconds. Records already pending
// when this process opened the spool are treated as overdue (they waited through a restart), so a backlog ships at
// once. A batch is cut with up to `cutRecords` (= maxRecords × batch.maxInFlight × 4) records: the dispatcher sends it
// as parts of ≤ maxRecords in parallel.
//
// What wakes a waiting next(): the count (noteAppended, when maxRecords are pending, or at the first record after an
// idle spell, to start its deadline), the deadline (a plain timer), a stop or a policy change; the spool's writes only
// while a cut found the records still in its write buffer. Not every spool write: when records trickle in (one per
// client write, B7), the spool writes every few ms, and running the batcher each time (a stats() copy of every
// counter, an AbortController and a new timer) was a measurable share of the agent's CPU per record.
import type { EventEmitter } from 'node:events';
import type { AgentCounterValues } from '../metrics.js';
import type { AcceptedTimes } from '../queue/types.js';

export interface SpoolBatchLike {
  id: string;
  records: number;
  bytes: number;
  payload: Buffer;
  firstAppendedAt: number;
  acceptedAt?: AcceptedTimes;
}

/** The slice of the Spool API batching needs. */
export interface BatchSource extends EventEmitter {
  nextBatch(maxRecords: number, maxBytes?: number): Promise<SpoolBatchLike | undefined>;
  /** Records not yet acked (written or not), and records dropped so far (cheap: asked at every look). */
  pending(): { pendingRecords: number; droppedRecords: number };
}

export interface BatchPolicy {
  /** A batch is due once this many records are pending. */
  maxRecords: number;
  /** Records per spool batch (maxRecords × maxInFlight × 4). */
  cutRecords: number;
  maxDelayMs: number;
  /** Cap on one batch's payload (memory bound); a single bigger record still goes alone. */
  maxBytes: number;
}

const MARK_GRANULARITY_MS = 5;
const IDLE_RECHECK_MS = 1000;

export class Batcher {
  private marks: { at: number; upTo: number }[] = [];
  private total: number;
  private consumed = 0;
  private readonly droppedAtOpen: number;
  private lastId: string | undefined;
  /** The pending wait of next(): its timer, and what ends it early (wake). A plain timer: no AbortController per wait. */
  private waiting: { timer: NodeJS.Timeout; done: () => void } | undefined;
  /**
   * next() found records pending that the spool could not hand out yet (still in its write buffer): the spool's
   * next write ('data') wakes it. Otherwise 'data' does not: the count (noteAppended) and the deadline (the timer)
   * are what make a batch due, so a spool write a few ms apart does not run the batcher each time.
   */
  private awaitingData = false;
  /** next() waits with nothing pending: the first append wakes it, to start the deadline of the records it brings. */
  private idle = false;

  constructor(
    private readonly source: BatchSource,
    private policy: BatchPolicy,
    private readonly counters: AgentCounterValues,
  ) {
    const st = source.pending();
    // The backlog found at open counts as overdue: one mark at time 0.
    this.total = st.pendingRecords;
    this.droppedAtOpen = st.droppedRecords;
    if (this.total > 0) this.marks.push({ at: 0, upTo: this.total });
    source.on('data', () => {
      if (this.awaitingData) this.wake();
    });
  }

  setPolicy(policy: BatchPolicy): void {
    this.policy = policy;
    this.wake();
  }

  /** Called for every append (the hot path: O(1)). */
  noteAppended(records: number): void {
    const now = Date.now();
    this.total += records;
    const last = this.marks[this.marks.length - 1];
    if (last && now - last.at < MARK_GRANULARITY_MS) last.upTo = this.total;
    else this.marks.push({ at: now, upTo: this.total });
    if (this.waiting && (this.idle || this.total - this.consumed >= this.policy.maxRecords)) this.wake();
  }

  /** Wakes a waiting next() (new data, stop requested, policy change). */
  wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    if (!w) return;
    clearTimeout(w.timer);
    w.done();
  }

  /** Waits `ms`, or until wake(). */
  private wait(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        if (this.waiting?.timer === timer) this.waiting = undefined;
        resolve();
      }, ms);
      this.waiting = { timer, done: resolve };
    });
  }

  /** Time the oldest pending record was appended (0 = from before this process), or undefined if none pending. */
  oldestPendingAt(): number | undefined {
    const dropped = this.source.pending().droppedRecords - this.droppedAtOpen;
    const gone = this.consumed + Math.max(0, dropped);
    while (this.marks.length > 0 && this.marks[0]!.upTo <= gone) this.marks.shift();
    return this.marks[0]?.at;
  }

  /**
   * The next batch when it is due; undefined when `signal` aborts. With `flush` (stopping) every pending record is
   * due at once, and it returns undefined as soon as nothing is pending.
   */
  async next(signal: AbortSignal, flush: boolean): Promise<SpoolBatchLike | undefined> {
    // `signal` wakes the sleep through wake(): one listener per call, one plain signal per sleep (a long-lived signal
    // combined per sleep with AbortSignal.any grows the heap on Node 20).
    const onAbort = (): void => this.wake();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      while (!signal.aborted) {
        const pending = this.source.pending().pendingRecords;
        this.awaitingData = false;
        this.idle = pending === 0;
        if (pending === 0 && flush) return undefined;
        let waitMs = IDLE_RECHECK_MS;
        if (pending > 0) {
          const oldest = this.oldestPendingAt() ?? 0;
          const due = oldest + this.policy.maxDelayMs;
          const now = Date.now();
          if (pending >= this.policy.maxRecords || flush || now >= due) {
            const batch = await this.source.nextBatch(this.policy.cutRecords, this.policy.maxBytes);
            if (batch) {
              if (batch.id !== this.lastId) {
                this.lastId = batch.id;
                this.consumed += batch.records;
                this.counters.batched += batch.records;
                this.counters.batchedBatches++;
              }
              return batch;
            }
            waitMs = 50; // pending but not readable yet (still in the write buffer): look again shortly
            this.awaitingData = true; // or at the spool's next write
          } else {
            waitMs = Math.min(IDLE_RECHECK_MS, due - now);
          }
        }
        if (signal.aborted) break;
        await this.wait(Math.max(1, waitMs));
      }
      return undefined;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }
}
