// The spool's writer. One async loop writes the frames queued by append() (frame-queue.ts: the write buffer, the
// memory cap, back-pressure) at the end of the write segment (pwritev, positional: up to 512 frames / 4 MiB a call),
// rolls to a new segment before one would pass segmentBytes, and after each write asks group commit for an fsync. A
// SIGKILL loses only what was not yet written (a few ms).
//
// NO SYNCHRONOUS I/O ON THE EVENT LOOP: every write, roll and statfs goes through the thread pool, never a *Sync call.
// A filesystem that stops answering (a stalled disk, an NFS or FUSE mount whose server hangs) then holds one pool
// thread and this loop's promise, not the event loop: ingest (into the bounded write buffer, then back-pressure),
// health and status answers, the exporter and the stop path go on (docs/agent.md "What happens when…", the spool's
// filesystem stops answering; test/agent-spool-hang.test.ts). Until commit 0b38c04 was undone, small frames were
// written inline with a synchronous pwritev to save the thread pool's round trip in B7's arrival pattern; a frozen
// FUSE mount then blocked the worker's event loop until the filesystem answered, and its own stop with it. With
// paced turns the completion of an async write is picked up by the next turn's wake-up, so the saving was small
// (docs/benchmarks.md "The spool's filesystem stops answering: no synchronous spool I/O"). `writeStartedAt` tells
// status how long the write in progress has been waiting (stalledMs).
//
// A failed write keeps its frames queued, in order, and is retried with backoff (100 ms doubling to 5 s); a retry
// writes at the same position, so a partial write is overwritten, never left in the middle of the data. Back-pressure
// (frame-queue.ts) holds the receivers until writes succeed again.
//
// DISK FULL (ENOSPC/EDQUOT) never wedges the spool, and the rule for records it cannot write is:
//   accepted records stay in the bounded write buffer and are written as soon as space is freed; past
//   maxBufferedBytes the oldest unwritten are dropped, and what is still unwritten at close is dropped too (spool.ts),
//   both counted diskFullDroppedRecords (dropped{reason="disk_full"}) and logged (SK_ERR_SPOOL_FULL: the buffer's cap;
//   SK_ERR_SPOOL_WRITE: at close), never only logged. The bound and its counting are frame-queue.ts's (MEMORY CAP).
// Meanwhile the writer works to free space:
//   - a failed write's partial bytes are truncated away and the write segment is closed off (rolled, below
//     segmentBytes, if it holds anything), since a write segment is never deleted: once acked it goes through the
//     ledger-first delete (reader.ts, segment-table.ts rule (2));
//   - every segment deletion retries the write at once (spaceFreed) rather than after the backoff, one frame per write
//     until one succeeds (a 4 MiB write would wait for 4 MiB of free space);
//   - under space pressure (a write failed for lack of space and no reclaim since, or less free space than
//     segmentBytes), an ack that consumes the whole write segment has it rolled (reclaim()), so acknowledged data does
//     not sit on a nearly full disk waiting for segmentBytes;
//   - a failed roll (no inode, no directory block) changes no state: logged, retried with the next attempt.
// Failed fsyncs are group-commit's: logged, the dirty state kept, retried with the next sync (group-commit.ts).
// A READ-ONLY or INACCESSIBLE directory (EROFS, EACCES, EPERM, EIO) follows the same rule without the reclaiming: the
// data stays in the bounded write buffer, back-pressure holds the receivers, the write (or the roll) is retried with
// backoff and succeeds once the directory is writable again; past maxBufferedBytes, and at close, what is unwritten
// is dropped and counted disk_full. A write failing with ENOENT (the directory removed) is reported (hooks.failed),
// and the spool recreates the directory while the writer is paused (pause(), prepend(), resume()).
import { statfs } from 'node:fs/promises';
import { FrameQueue, type QueuedFrame } from './frame-queue.js';
import type { GroupCommit } from './group-commit.js';
import type { SegmentTable } from './segment-table.js';
import { writeAllV } from './segment.js';
import type { Segment, SpoolCounters, SpoolLogs } from './types.js';
import { describeError } from '../../errors.js';

const MAX_WRITE_BYTES = 4 * 1024 * 1024;
const MAX_IOV = 512;
/** The write failed for lack of space (disk full, or the user's quota). */
export function isDiskFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

export interface WriterOptions {
  segmentBytes: number;
  maxBufferedBytes: number;
}

/** What the writer tells the rest of the spool, in this order after each successful write. */
export interface WriterHooks {
  /** Frames reached the OS: a reader may find new data. */
  written(): void;
  /** Unwritten data fell below half the high-water mark after append() had returned false. */
  drained(): void;
  /** The segment files grew (the size cap may apply). */
  grew(): void;
  /** The write segment filled up and a new one was started; `old` is now a closed segment. */
  rolled(old: Segment): void;
  /** A write or a roll failed (ENOENT: the directory may be gone). */
  failed(err: unknown): void;
}

export class SpoolWriter {
  private readonly segmentBytes: number;
  /** Appended, not yet written (frame-queue.ts). */
  private readonly queue: FrameQueue;
  private writing = false;
  private writeWaiters: Array<(ok: boolean) => void> = [];
  private writeFailures = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private paused = false;
  /** The write loop in progress (stop() waits for it). */
  private loop: Promise<void> | undefined;
  /** Roll the write segment at the loop's next turn (reclaim()). */
  private rollWanted = false;
  /** retryNow() came while the loop was running: retry when it ends, if it ended in a failure. */
  private retryAfterLoop = false;
  /** A write failed for lack of space and the write segment has not been reclaimed since. */
  private spaceShort = false;
  private diskFullSince = 0;
  /** The last write error, until a write succeeds. */
  lastError: Error | undefined;
  /** The last write failed with ENOSPC/EDQUOT and none has succeeded since. */
  diskFull = false;

  constructor(
    private readonly table: SegmentTable,
    private readonly commit: GroupCommit,
    opts: WriterOptions,
    private readonly counters: SpoolCounters,
    private readonly logs: SpoolLogs,
    private readonly hooks: WriterHooks,
  ) {
    this.segmentBytes = opts.segmentBytes;
    this.queue = new FrameQueue(table.dir, opts.maxBufferedBytes, counters, logs, {
      queued: () => this.kick(),
      lastError: () => this.lastError,
    });
  }

  /** Appended bytes not yet written to the OS (write buffer + queued frames). */
  get bufferedBytes(): number {
    return this.queue.bufferedBytes;
  }

  get bufferedRecords(): number {
    return this.queue.bufferedRecords;
  }

  /** See Spool.append. */
  append(lines: Buffer): boolean {
    return this.queue.append(lines);
  }

  /** See Spool.writeSoon. */
  writeSoon(): void {
    if (!this.stopped) this.queue.seal();
  }

  /** Starts the write loop if idle. */
  private kick(): void {
    if (this.writing || this.retryTimer || this.stopped || this.paused) return;
    if (this.queue.length === 0 && !this.rollWanted) return;
    this.writing = true;
    this.loop = this.writeLoop();
  }

  /** Retry now rather than after the backoff (drain, reclaim, space freed); after the write in progress if any. */
  private retryNow(): void {
    if (this.writing) {
      this.retryAfterLoop = true;
      return;
    }
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.kick();
  }

  private async writeLoop(): Promise<void> {
    try {
      while (!this.stopped && !this.paused) {
        if (this.rollWanted) {
          this.rollWanted = false;
          const failed = await this.closeOff();
          if (failed) {
            this.onWriteError(failed);
            break;
          }
          this.spaceShort = false;
          continue;
        }
        if (this.queue.length === 0 || this.retryTimer) break;
        const seg = this.table.writeSeg;
        const first = this.queue.peek(0)!;
        if (seg.size > 0 && seg.size + first.frame.length > this.segmentBytes) {
          this.hooks.rolled(await this.roll());
          continue;
        }
        let k = 0;
        let bytes = 0;
        let records = 0;
        // After a disk-full error, one frame at a time until space is reclaimed (not only until one write succeeds):
        // whatever space is left is used as soon as a frame fits, and a write that fails again truncates away one
        // frame's partial bytes, not a whole multi-frame write's (which left up to MAX_WRITE_BYTES of a full disk
        // unused between the retries).
        const maxFrames = this.diskFull || this.spaceShort ? 1 : MAX_IOV;
        while (k < this.queue.length && k < maxFrames) {
          const f = this.queue.peek(k)!;
          const fits =
            seg.size + bytes + f.frame.length <= this.segmentBytes && bytes + f.frame.length <= MAX_WRITE_BYTES;
          if (k > 0 && !fits) break;
          bytes += f.frame.length;
          records += f.records;
          k++;
        }
        const taken = this.queue.take(k);
        try {
          this.writeStartedAt = performance.now();
          this.inWriteRecords = records;
          await writeAllV(
            this.table.writeHandle,
            taken.map((f) => f.frame),
            seg.size,
          );
          this.writeStartedAt = 0;
        } catch (err) {
          this.writeStartedAt = 0;
          this.queue.putBack(taken);
          if (isDiskFull(err)) {
            this.spaceShort = true;
            // Free what the partial write took, and close the segment off so it can go once acked.
            await this.table.writeHandle.truncate(seg.size).catch(() => {});
            await this.closeOff();
          }
          this.onWriteError(err);
          return;
        }
        if (this.diskFull) {
          this.logs.log.info(
            { dir: this.table.dir, ms: Date.now() - this.diskFullSince, unwrittenBytes: this.queue.sealedBytes },
            'spool writes resumed after the disk was full',
          );
          this.diskFull = false;
        }
        this.afterWrite(taken, bytes, records);
        if (this.commit.intervalMs === 0) await this.commit.sync().catch(() => {});
        else this.commit.schedule();
      }
    } catch (err) {
      this.onWriteError(err);
    } finally {
      this.writing = false;
      if (this.retryAfterLoop) {
        this.retryAfterLoop = false;
        if (this.retryTimer) this.retryNow();
      }
    }
  }

  /** A write of `taken` (`bytes`, `records` in all) succeeded: account for it and tell the rest of the spool. */
  private afterWrite(taken: QueuedFrame[], bytes: number, records: number): void {
    this.writeFailures = 0;
    this.lastError = undefined;
    this.table.written(bytes, records);
    this.queue.written(taken, bytes, records);
    this.wakeWaiters(true);
    this.hooks.written();
    if (this.queue.drainDue()) this.hooks.drained();
    this.hooks.grew();
  }

  private async roll(): Promise<Segment> {
    this.writeStartedAt = performance.now();
    this.inWriteRecords = 0;
    try {
      const old = await this.table.roll();
      this.commit.schedule(); // fsyncs and closes the full segment
      return old;
    } finally {
      this.writeStartedAt = 0;
    }
  }

  /** performance.now() when the write (or roll) in progress began; 0 when none is waiting on the filesystem. */
  private writeStartedAt = 0;
  /** Records in the write in progress (valid while writeStartedAt is set by a write). */
  private inWriteRecords = 0;

  /**
   * The spool's close did not finish by the stop deadline (the filesystem does not answer): no more writes; what is
   * unwritten (the write buffer, the queue and the write still waiting) is dropped and counted as at close
   * (FrameQueue.dropUnwritten). `inDoubt`: the records of the write that never answered, which the filesystem may
   * still complete after the process is gone (then they are on disk and delivered after the next start).
   */
  abandon(): { dropped: number; inDoubt: number } {
    const inDoubt = this.writeStartedAt !== 0 ? this.inWriteRecords : 0;
    this.stopped = true;
    this.queue.stop();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    return { dropped: this.queue.dropUnwritten(), inDoubt };
  }

  /** How long the write or roll in progress has been waiting for the filesystem (0 if none). */
  get stalledMs(): number {
    return this.writeStartedAt === 0 ? 0 : Math.round(performance.now() - this.writeStartedAt);
  }

  /**
   * Roll the write segment now, below segmentBytes, if it holds anything: the closed segment is deleted once acked
   * (hooks.rolled). Returns the error if the new segment could not be opened (nothing changed; tried again first
   * thing at the next attempt).
   */
  private async closeOff(): Promise<unknown> {
    if (this.table.writeSeg.size === 0) return undefined;
    try {
      this.hooks.rolled(await this.roll());
      return undefined;
    } catch (err) {
      this.rollWanted = true;
      this.logs.write.warn(
        { code: 'SK_ERR_SPOOL_WRITE', dir: this.table.dir, err: describeError(err) },
        'SK_ERR_SPOOL_WRITE: could not start a new spool segment to free space; tried again with the next write',
      );
      return err;
    }
  }

  private onWriteError(err: unknown): void {
    this.lastError = err instanceof Error ? err : new Error(describeError(err));
    this.counters.writeErrors++;
    this.writeFailures++;
    const delay = this.retryDelay();
    const fields = {
      dir: this.table.dir,
      err: describeError(err),
      retryInMs: delay,
      unwrittenBytes: this.queue.sealedBytes,
    };
    if (isDiskFull(err)) {
      if (!this.diskFull) this.diskFullSince = Date.now();
      this.diskFull = true;
      this.logs.write.warn(
        { code: 'SK_ERR_SPOOL_WRITE', ...fields, unwrittenRecords: this.bufferedRecords },
        'SK_ERR_SPOOL_WRITE: spool write failed, disk full; freeing acknowledged segments, data stays buffered (bounded) and the write is retried',
      );
    } else {
      this.diskFull = false;
      this.logs.log.error(
        { code: 'SK_ERR_SPOOL_WRITE', ...fields, unwrittenRecords: this.bufferedRecords },
        'SK_ERR_SPOOL_WRITE: spool write failed (read-only, inaccessible or failing directory); data stays buffered (bounded) and the write is retried',
      );
    }
    this.hooks.failed(err);
    this.wakeWaiters(false);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (!this.stopped && !this.paused) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.kick();
      }, delay);
    }
  }

  /** The backoff after `writeFailures` failed writes in a row: 100 ms doubling to 5 s. */
  private retryDelay(): number {
    return Math.min(5000, 50 * 2 ** Math.min(this.writeFailures, 7));
  }

  private wakeWaiters(ok: boolean): void {
    const w = this.writeWaiters;
    this.writeWaiters = [];
    for (const f of w) f(ok);
  }

  /** Resolves after the next write attempt: true if it succeeded. */
  private nextWrite(): Promise<boolean> {
    return new Promise((res) => this.writeWaiters.push(res));
  }

  /** Something appended is not yet written to the OS. */
  hasUnwritten(): boolean {
    return this.queue.hasUnwritten();
  }

  /**
   * Seal the write buffer and start writing now (the reader caught up): true if the next write succeeded. False at
   * once while writes are failing (a retry is scheduled): the reader must not wait on it, its acks may free the space.
   */
  writeNow(): Promise<boolean> {
    if (this.retryTimer || this.stopped) {
      this.queue.seal();
      return Promise.resolve(false);
    }
    const next = this.nextWrite();
    this.queue.seal();
    this.kick();
    return next;
  }

  /**
   * A fully acked write segment should be rolled (and so deleted) rather than grow on: a write failed for lack of
   * space and no reclaim since, or the filesystem has less free space than segmentBytes, so the segment could never
   * reach its roll size and its acked bytes would sit on a nearly full disk. Asked only when an ack consumes the whole
   * write segment (one statfs at most per batch, through the thread pool).
   */
  async underSpacePressure(): Promise<boolean> {
    if (this.spaceShort) return true;
    try {
      const fs = await statfs(this.table.dir);
      return fs.bavail * fs.bsize < this.segmentBytes;
    } catch {
      return false;
    }
  }

  /** Roll the write segment (below segmentBytes) at the writer's next turn, so it can be deleted: it is acked. */
  reclaim(): void {
    if (this.stopped) return;
    this.rollWanted = true;
    this.retryNow();
  }

  /** A segment file was deleted: a write waiting out its backoff after a disk-full error is retried now. */
  spaceFreed(): void {
    if (this.diskFull && (this.retryTimer || this.writing) && !this.stopped) this.retryNow();
  }

  /** Write everything sealed so far, retrying at once rather than after the backoff; false if a write failed. */
  async drain(): Promise<boolean> {
    this.queue.seal();
    const target = this.queue.bytesSealed;
    while (this.queue.bytesSettled < target) {
      const next = this.nextWrite();
      this.retryNow();
      if (!(await next)) return false;
    }
    return true;
  }

  /** No writes until resume() (the spool recreates its directory meanwhile); resolves once a write in progress ended. */
  async pause(): Promise<void> {
    this.paused = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    await this.loop;
  }

  /**
   * Write again: at once into the recreated directory (`rebuilt`); else (recreating it failed, nothing changed) after
   * the backoff of the failures so far, so a directory that cannot be recreated is not retried in a tight loop (each
   * failed roll makes the spool check the directory and try the rebuild again).
   */
  resume(rebuilt = true): void {
    this.paused = false;
    if (rebuilt) {
      this.writeFailures = 0;
      this.rollWanted = false; // the fresh write segment is empty
      this.retryNow();
      return;
    }
    if (this.writeFailures === 0 || this.stopped) {
      this.kick();
      return;
    }
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.kick();
    }, this.retryDelay());
  }

  /** Frames read back from the removed directory go ahead of everything unwritten (FrameQueue.prepend). */
  prepend(frames: Array<{ frame: Buffer; records: number }>): void {
    this.queue.prepend(frames);
  }

  /** No more writes or timers (close, after a last drain()); resolves once a write in progress has ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.queue.stop();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    await this.loop;
  }

  /** After stop(): give up what is unwritten, counted (FrameQueue.dropUnwritten); returns the records dropped. */
  dropUnwritten(): number {
    return this.queue.dropUnwritten();
  }
}
