// What the spool accepted and has not yet written to the OS: the 64 KiB write buffer append() copies lines into, and
// the sealed frames queued for the writer (writer.ts takes them from the front, and puts them back if a write fails).
// The buffer is sealed into a frame when full or 2 ms after its first line.
//
// Back-pressure: append() returns false past the high-water mark (an eighth of maxBufferedBytes); the writer's
// hooks.drained() follows once unwritten data is below half of it, so only after writes succeed again. The pipeline
// holds its receivers on that (MemoryBudget): while the disk fails, sockets stop being read and memory stays near the
// high-water mark.
//
// MEMORY CAP (the bound in writer.ts's disk-full rule): past maxBufferedBytes the oldest unwritten frames are dropped,
// and what is still unwritten at close is dropped too (dropUnwritten(), called by spool.ts), both counted
// diskFullDroppedRecords (dropped{reason="disk_full"}) and logged (SK_ERR_SPOOL_FULL: the buffer's cap, here;
// SK_ERR_SPOOL_WRITE: at close, spool.ts), never only logged.
import { FRAME_HEADER_BYTES, sealFrame } from './segment.js';
import { countLines } from './lines.js';
import type { SpoolCounters, SpoolLogs } from './types.js';
import { describeError } from '../../errors.js';

export const WRITE_BUFFER_BYTES = 64 * 1024;
const FLUSH_DELAY_MS = 2;
const BUFFER_POOL_MAX = 8;

export interface QueuedFrame {
  frame: Buffer;
  records: number;
  /** The full-size write buffer the frame is a view of, recycled once written. */
  pooled: Buffer | undefined;
}

export class FrameQueue {
  private readonly highWaterBytes: number;
  private buf: Buffer = Buffer.allocUnsafe(FRAME_HEADER_BYTES + WRITE_BUFFER_BYTES);
  /** Written write buffers, reused: at full speed that is ~20 fewer 64 KiB allocations per MB, and a flat RSS. */
  private pool: Buffer[] = [];
  private bufUsed = 0;
  private bufRecords = 0;
  private bufFirstAt = 0;
  private flushTimer: NodeJS.Timeout | undefined;
  private queue: QueuedFrame[] = [];
  private unwrittenBytes = 0; // sealed, not yet written (queued + being written)
  private unwrittenRecords = 0;
  private needDrain = false;
  /** Cumulative: sealed (drain() waits until settled reaches it). */
  bytesSealed = 0;
  /** Cumulative: written, or dropped unwritten. */
  bytesSettled = 0;

  constructor(
    private readonly dir: string,
    private readonly maxBufferedBytes: number,
    private readonly counters: SpoolCounters,
    private readonly logs: SpoolLogs,
    /**
     * A frame was queued (the writer starts if idle); the writer's last error, for the cap's log line.
     */
    private readonly writer: { queued(): void; lastError(): Error | undefined },
  ) {
    this.highWaterBytes = Math.max(WRITE_BUFFER_BYTES * 2, Math.floor(maxBufferedBytes / 8));
  }

  /** Appended bytes not yet written to the OS (write buffer + queued frames). */
  get bufferedBytes(): number {
    return this.unwrittenBytes + this.bufUsed;
  }

  get bufferedRecords(): number {
    return this.unwrittenRecords + this.bufRecords;
  }

  /** Sealed and not yet written (queued, or being written): the write buffer not included. */
  get sealedBytes(): number {
    return this.unwrittenBytes;
  }

  /** Frames queued (not being written). */
  get length(): number {
    return this.queue.length;
  }

  /** See Spool.append. */
  append(lines: Buffer): boolean {
    const len = lines.length;
    if (len === 0) return true;
    const terminated = lines[len - 1] === 10;
    const n = countLines(lines) + (terminated ? 0 : 1);
    const need = len + (terminated ? 0 : 1);
    if (this.bufUsed > 0 && this.bufUsed + need > WRITE_BUFFER_BYTES) this.seal();
    if (need > WRITE_BUFFER_BYTES) {
      const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + need);
      lines.copy(frame, FRAME_HEADER_BYTES);
      if (!terminated) frame[FRAME_HEADER_BYTES + len] = 10;
      sealFrame(frame, n, Date.now());
      this.enqueue(frame, n, undefined);
    } else {
      if (this.bufUsed === 0) this.bufFirstAt = Date.now();
      lines.copy(this.buf, FRAME_HEADER_BYTES + this.bufUsed);
      this.bufUsed += len;
      if (!terminated) this.buf[FRAME_HEADER_BYTES + this.bufUsed++] = 10;
      this.bufRecords += n;
      if (this.bufUsed >= WRITE_BUFFER_BYTES) this.seal();
      else this.flushTimer ??= setTimeout(this.onFlushTimer, FLUSH_DELAY_MS);
    }
    this.counters.appendedRecords += n;
    const ok = this.unwrittenBytes + this.bufUsed < this.highWaterBytes;
    if (!ok) this.needDrain = true;
    return ok;
  }

  private readonly onFlushTimer = (): void => {
    this.flushTimer = undefined;
    this.seal();
  };

  /** Turn the write buffer into a frame and queue it for the writer. */
  seal(): void {
    if (this.flushTimer) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
    }
    if (this.bufUsed === 0) return;
    const size = FRAME_HEADER_BYTES + this.bufUsed;
    let frame: Buffer;
    let pooled: Buffer | undefined;
    if (this.bufUsed < WRITE_BUFFER_BYTES / 2) {
      // small frame (a quiet moment): copy it out and keep the big buffer, so memory follows the data
      frame = Buffer.allocUnsafe(size);
      this.buf.copy(frame, 0, 0, size);
    } else {
      pooled = this.buf;
      frame = this.buf.subarray(0, size);
      this.buf = this.pool.pop() ?? Buffer.allocUnsafe(FRAME_HEADER_BYTES + WRITE_BUFFER_BYTES);
    }
    sealFrame(frame, this.bufRecords, this.bufFirstAt);
    const n = this.bufRecords;
    this.bufUsed = 0;
    this.bufRecords = 0;
    this.enqueue(frame, n, pooled);
  }

  private enqueue(frame: Buffer, records: number, pooled: Buffer | undefined): void {
    this.queue.push({ frame, records, pooled });
    this.unwrittenBytes += frame.length;
    this.unwrittenRecords += records;
    this.bytesSealed += frame.length;
    // Bounded memory when the disk is full, fails or cannot keep up: drop the oldest unwritten frames, counted.
    while (this.unwrittenBytes > this.maxBufferedBytes && this.queue.length > 1) {
      const old = this.queue.shift()!;
      this.unwrittenBytes -= old.frame.length;
      this.unwrittenRecords -= old.records;
      this.bytesSettled += old.frame.length;
      this.countUnwrittenDrop(old.records);
      const lastError = this.writer.lastError();
      this.logs.full.warn(
        {
          code: 'SK_ERR_SPOOL_FULL',
          reason: 'disk_full',
          dir: this.dir,
          droppedRecords: old.records,
          maxBufferedBytes: this.maxBufferedBytes,
          err: lastError ? describeError(lastError) : undefined,
        },
        'SK_ERR_SPOOL_FULL: spool write backlog over its memory cap (disk full, failing or slow); dropped the oldest unwritten records (counted disk_full)',
      );
    }
    this.writer.queued();
  }

  private countUnwrittenDrop(records: number): void {
    this.counters.droppedRecords += records;
    this.counters.diskFullDroppedRecords += records;
    this.counters.droppedBatches++;
  }

  /** The k-th queued frame. */
  peek(k: number): QueuedFrame | undefined {
    return this.queue[k];
  }

  /** The first k queued frames, taken out for a write. */
  take(k: number): QueuedFrame[] {
    return this.queue.splice(0, k);
  }

  /** A failed write's frames go back to the front, in order. */
  putBack(taken: QueuedFrame[]): void {
    this.queue.unshift(...taken);
  }

  /** The frames taken were written (`bytes`, `records` in all): they are settled and their buffers recycled. */
  written(taken: QueuedFrame[], bytes: number, records: number): void {
    this.unwrittenBytes -= bytes;
    this.unwrittenRecords -= records;
    this.bytesSettled += bytes;
    for (const f of taken) if (f.pooled && this.pool.length < BUFFER_POOL_MAX) this.pool.push(f.pooled);
  }

  /** True once, when append() had returned false and unwritten data is now below half the high-water mark. */
  drainDue(): boolean {
    if (!this.needDrain || this.unwrittenBytes + this.bufUsed >= this.highWaterBytes / 2) return false;
    this.needDrain = false;
    return true;
  }

  /** Something appended is not yet written to the OS. */
  hasUnwritten(): boolean {
    return this.bufUsed > 0 || this.unwrittenBytes > 0;
  }

  /**
   * Frames read back from the removed directory (salvage.ts) go ahead of everything unwritten: they are older. Not
   * counted as appended (they were, once); the memory cap applies to them with the next append.
   */
  prepend(frames: Array<{ frame: Buffer; records: number }>): void {
    for (const f of frames) {
      this.unwrittenBytes += f.frame.length;
      this.unwrittenRecords += f.records;
      this.bytesSealed += f.frame.length;
    }
    this.queue.unshift(...frames.map((f) => ({ frame: f.frame, records: f.records, pooled: undefined })));
  }

  /** No more flush timer (close). */
  stop(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
  }

  /**
   * After the writer stopped: give up what is still unwritten (the last drain failed), counted as
   * diskFullDroppedRecords. Returns the records dropped.
   */
  dropUnwritten(): number {
    this.seal();
    const records = this.bufferedRecords;
    for (const f of this.queue) this.bytesSettled += f.frame.length;
    this.queue = [];
    this.unwrittenBytes = 0;
    this.unwrittenRecords = 0;
    if (records > 0) this.countUnwrittenDrop(records);
    return records;
  }
}
