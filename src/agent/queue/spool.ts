// The agent's disk spool: a write-ahead log of accepted records, read back in FIFO order by the exporter.
//
// Files in `dir` (see segment.ts and ledger.ts for the byte layouts):
//   seg-<seq>.log   append-only segments of checksummed frames (one frame = one write-buffer flush, many NDJSON lines)
//   ledger          two-slot checksummed record of the ack position, the in-flight batch boundary and the spool id
//   LOCK            owner pid (lock.ts);  state-<name>.json  small atomic side files (state.ts)
//
// This file is the facade: the public API, wiring, stats and close. One concern per part, each enforcing the
// crash-safety rules of its own concern (stated in its header); they hand over by plain calls and hooks, no cycles:
//   recovery.ts       the open-time scan: ledger vs. directory, what is pending; returns what it found
//   segment-table.ts  segments, write segment, ack position, in-flight boundary, the ledger; create/delete order
//   frame-queue.ts    write buffer, frame queue, memory cap (maxBufferedBytes), back-pressure
//   writer.ts         pwritev loop, segment roll, retry with backoff, reclaiming space on a full disk
//   group-commit.ts   coalesced fsync (syncIntervalMs; 0 = after every write)
//   reader.ts         cut/collect/ack/release batches, corrupt-region skip, the size cap (maxBytes)
//   batch-id.ts       what a batch id is made of and why;  lines.ts  line counting and collecting
//   dir-guard.ts      is the directory still the one opened and locked (a stat a second, and on ENOENT)
//   rebuild.ts        recreating a removed or replaced directory and carrying on (the rule)
//   salvage.ts        reading records back through open files of a removed directory
//
// Data flow: append() copies lines into a 64 KiB write buffer; the buffer is sealed into a frame when full or 2 ms
// after its first line, and frames are written (pwritev, positional) by one async writer; fsync follows within
// syncIntervalMs (group commit; a segment that filled up is fsynced and closed by the next group commit, off the
// write path). A SIGKILL loses only what was not yet written (a few ms), power loss at most syncIntervalMs more. The
// reader cuts batches from the ack position onwards, never across a segment end; one batch is in flight at a time
// and its boundary is in the ledger before nextBatch() returns.
//
// Disk full (ENOSPC/EDQUOT): the spool keeps working toward delivery and never wedges (writer.ts has the details).
// Acked space is reclaimed while running (the write segment is rolled early so it can be deleted; every deletion
// retries the write at once). THE RULE for records it cannot write: they stay in the bounded write buffer and are
// written as soon as space is freed; past maxBufferedBytes the oldest unwritten are dropped, and at close whatever is
// still unwritten is dropped; both counted in diskFullDroppedRecords (part of droppedRecords; the agent's
// dropped{reason="disk_full"}) and logged (SK_ERR_SPOOL_FULL, SK_ERR_SPOOL_WRITE). The ledger is written in place (two slots in its first
// 640 bytes, allocated by its first write), so it needs no new blocks on a full disk; side files (state.ts) are
// written tmp + rename, so a failed write leaves the old file. A read-only or inaccessible directory (EROFS, EACCES) is
// the same rule without the reclaiming: buffered (bounded), back-pressure, retried until writable (writer.ts).
//
// Spool directory removed or replaced while running (dir-guard.ts detects it within a second, or at once on ENOENT):
// recreated, and the spool carries on; THE RULE (what is kept, read back, counted spool_removed) is rebuild.ts's. At
// close, a directory still lost is recreated first, so the final flush never lands in an unlinked file, and a batch
// kept in memory since a rebuild is written into the spool.
import { EventEmitter } from 'node:events';
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { SidekickError, describeError } from '../../errors.js';
import { childLogger, RateLimitedLog, type Logger } from '../../log/logger.js';
import { DirGuard, dirIdentity, type DirIdentity } from './dir-guard.js';
import { GroupCommit } from './group-commit.js';
import { SpoolLock } from './lock.js';
import { SpoolReader } from './reader.js';
import { rebuildDir, rebuildFailed, type RebuildParts } from './rebuild.js';
import type { SalvagedFrame } from './salvage.js';
import { FRAME_HEADER_BYTES, sealFrame } from './segment.js';
import { recover, type Recovered } from './recovery.js';
import { SegmentTable } from './segment-table.js';
import { StateFiles } from './state.js';
import {
  newCounters,
  type SpoolBatch,
  type SpoolCounters,
  type SpoolLogs,
  type SpoolOptions,
  type SpoolStats,
} from './types.js';
import { SpoolWriter } from './writer.js';

export type { SpoolBatch, SpoolOptions, SpoolStats } from './types.js';

const MIN_SEGMENT_BYTES = 4096;

export class Spool extends EventEmitter {
  private readonly log: Logger;
  private readonly states: StateFiles;
  private readonly counters: SpoolCounters = newCounters();
  private readonly commit: GroupCommit;
  private readonly writer: SpoolWriter;
  private readonly reader: SpoolReader;
  private readonly logs: SpoolLogs;
  private readonly guard: DirGuard;
  private closing = false;
  private closed = false;
  private closePromise: Promise<void> | undefined;
  /** What a rebuild works on (rebuild.ts). */
  private readonly parts: RebuildParts;
  /** The rebuild in progress or queued (one at a time). */
  private rebuilding: Promise<boolean> | undefined;

  private constructor(
    readonly dir: string,
    opts: SpoolOptions,
    logs: SpoolLogs,
    private lock: SpoolLock,
    private readonly table: SegmentTable,
    recoveredRecords: number,
    identity: DirIdentity,
  ) {
    super();
    this.log = logs.log;
    this.logs = logs;
    this.guard = new DirGuard(dir, identity, () => void this.rebuild());
    this.states = new StateFiles(dir, logs.log, (err) => this.guard.suspect(err));
    this.counters.recoveredRecords = recoveredRecords;
    const maxBytes = opts.maxBytes;
    this.commit = new GroupCommit(dir, opts.syncIntervalMs, () => table.syncDirty(), logs.log);
    this.writer = new SpoolWriter(
      table,
      this.commit,
      {
        segmentBytes: Math.max(MIN_SEGMENT_BYTES, Math.min(opts.segmentBytes, Math.floor(maxBytes / 4))),
        maxBufferedBytes: opts.maxBufferedBytes ?? 64 * 1024 * 1024,
      },
      this.counters,
      logs,
      {
        written: () => this.safeEmit('data'),
        drained: () => this.safeEmit('drain'),
        grew: () => {
          if (table.diskBytes > maxBytes) this.reader.scheduleCap();
        },
        rolled: (old) => this.reader.rolled(old),
        failed: (err) => this.guard.suspect(err),
      },
    );
    this.reader = new SpoolReader(table, this.writer, this.commit, maxBytes, this.counters, logs, () =>
      this.guard.check(),
    );
    this.parts = {
      dir,
      logs,
      guard: this.guard,
      table,
      reader: this.reader,
      writer: this.writer,
      commit: this.commit,
      counters: this.counters,
    };
    this.guard.start();
  }

  /** Open (and recover) the spool in `opts.dir`, taking its lock. */
  static async open(opts: SpoolOptions): Promise<Spool> {
    for (const k of ['maxBytes', 'segmentBytes'] as const) {
      if (!Number.isFinite(opts[k]) || opts[k] <= 0) throw new RangeError(`spool ${k} must be > 0, got ${opts[k]}`);
    }
    if (!Number.isFinite(opts.syncIntervalMs) || opts.syncIntervalMs < 0) {
      throw new RangeError(`spool syncIntervalMs must be >= 0, got ${opts.syncIntervalMs}`);
    }
    const dir = resolve(opts.dir);
    await mkdir(dir, { recursive: true });
    const log = opts.log ?? childLogger({ component: 'spool' });
    const lock = await SpoolLock.acquire(dir, log);
    const logs: SpoolLogs = {
      log,
      full: new RateLimitedLog(log),
      corrupt: new RateLimitedLog(log),
      ledger: new RateLimitedLog(log),
      write: new RateLimitedLog(log),
    };
    let found: Recovered;
    let recoveredSegments: number;
    let table: SegmentTable | undefined;
    let identity: DirIdentity | undefined;
    try {
      identity = await dirIdentity(dir);
      if (!identity) throw new SidekickError('SK_ERR_SPOOL_REMOVED', `spool directory ${dir} vanished while opening`);
      found = await recover(dir, logs);
      recoveredSegments = found.segments.length;
      table = new SegmentTable(dir, found, logs.ledger);
      await table.start(found);
      await table.syncDirty();
    } catch (err) {
      await table?.close();
      await lock.release().catch(() => {});
      throw err;
    }
    const spool = new Spool(dir, opts, logs, lock, table, found.recoveredRecords, identity);
    if (found.recoveredRecords > 0) {
      log.info(
        { dir, records: found.recoveredRecords, segments: recoveredSegments, bytes: table.diskBytes },
        'spool recovered a backlog',
      );
    }
    if (table.diskBytes > opts.maxBytes) spool.reader.scheduleCap();
    return spool;
  }

  /**
   * Accept complete '\n'-terminated NDJSON lines (a missing final '\n' is added). Synchronous and cheap: the bytes
   * are copied into the write buffer, written to the OS within ~2 ms or at 64 KiB, fsynced per syncIntervalMs.
   * `records` is the caller's line count; the spool counts the lines itself so its counters stay exact.
   * Returns false when unwritten data passed the high-water mark (disk slower than ingest); 'drain' follows.
   */
  append(lines: Buffer, records?: number): boolean {
    void records;
    if (this.closing) throw new SidekickError('SK_ERR_STOPPED', 'append on a closed spool', { dir: this.dir });
    return this.writer.append(lines);
  }

  /**
   * Write what append() buffered now rather than when the flush timer (2 ms after the first line) fires: the receiver
   * calls it at the end of an ingest turn that read many connections at once, which saves the agent a wake-up.
   */
  writeSoon(): void {
    if (!this.closing) this.writer.writeSoon();
  }

  /**
   * The directory is gone or replaced (dir-guard.ts): recreate it and carry on (the rule is in the header). Runs after
   * the reader operations already queued, with the writer paused. Resolves true once the spool lives in a directory
   * that is there again; false if recreating failed (logged; the next check tries again).
   */
  private rebuild(): Promise<boolean> {
    this.rebuilding ??= this.reader
      .exclusive(async () => {
        if (this.closed) return false;
        this.lock = await rebuildDir(this.parts, this.lock);
        return true;
      })
      .catch((err: unknown) => {
        rebuildFailed(this.logs, this.dir, err);
        return false;
      })
      .finally(() => (this.rebuilding = undefined));
    return this.rebuilding;
  }

  /** A throwing listener must not look like a failed write (the data is on disk already). */
  private safeEmit(event: 'data' | 'drain'): void {
    try {
      this.emit(event);
    } catch (err) {
      this.log.error({ dir: this.dir, event, err: describeError(err) }, 'spool event listener threw');
    }
  }

  /** Write everything appended so far to the OS and fsync it (segment data, directory, ledger). */
  async flush(): Promise<void> {
    if (!(await this.writer.drain())) {
      throw new SidekickError('SK_ERR_SPOOL_WRITE', `spool write failed: ${describeError(this.writer.lastError)}`, {
        dir: this.dir,
      });
    }
    await this.commit.sync();
  }

  /**
   * The oldest records not yet handed out, at most `maxRecords` lines and `maxBytes` bytes (at least one line, even
   * if it alone is larger); undefined when nothing is readable. A batch never spans two segment files. One batch at a
   * time: ack() or release() it before asking again (else SK_ERR_SPOOL_BUSY).
   *
   * After release(), the same batch (same id, same payload) comes back — also after a restart, since its boundary is
   * in the ledger before this resolves. 413 "split and retry": release(id), then call nextBatch with a smaller
   * maxRecords/maxBytes (e.g. half of batch.records); the batch is re-cut from its first record under a new id (the
   * new range), and the rest follows in later batches. A single record too large for central cannot be split: the
   * exporter dead-letters it and acks.
   */
  nextBatch(maxRecords: number, maxBytes = Number.POSITIVE_INFINITY): Promise<SpoolBatch | undefined> {
    if (!Number.isInteger(maxRecords) || maxRecords < 1) {
      return Promise.reject(new RangeError(`maxRecords must be an integer >= 1, got ${maxRecords}`));
    }
    if (!(maxBytes > 0)) return Promise.reject(new RangeError(`maxBytes must be > 0, got ${maxBytes}`));
    return this.reader.nextBatch(maxRecords, maxBytes);
  }

  /** Delivered or dead-lettered: advance the durable read position; delete segment files once fully acked. */
  ack(id: string): Promise<void> {
    return this.reader.ack(id);
  }

  /** Not delivered (will retry): the same batch (same id and payload) comes back on the next nextBatch. */
  release(id: string): void {
    this.reader.release(id);
  }

  /**
   * stats().pendingRecords and droppedRecords without the rest of stats() (which copies every counter): the batcher
   * asks for them each time it looks at the spool.
   */
  pending(): { pendingRecords: number; droppedRecords: number } {
    return {
      pendingRecords: this.table.pendingOnDisk().records + this.writer.bufferedRecords + this.reader.orphanRecords,
      droppedRecords: this.counters.droppedRecords,
    };
  }

  /** stats().bufferedBytes alone: appended, not yet written to the OS (the memory budget's 'spool' pool). */
  get bufferedBytes(): number {
    return this.writer.bufferedBytes;
  }

  /**
   * How long the spool's write (or roll) or fsync in progress has been waiting for the filesystem; 0 when none is.
   * Grows without bound while the filesystem does not answer (a hung disk, NFS, FUSE): the event loop goes on.
   */
  get stalledMs(): number {
    return Math.max(this.writer.stalledMs, this.commit.stalledMs);
  }

  /**
   * close() did not finish within the stop budget because the filesystem does not answer: give up what is not known
   * to be written, counted (diskFullDroppedRecords, as for a close on a full disk) and logged SK_ERR_SPOOL_STALLED. The
   * lock file stays (its owner is about to exit: the next start takes it over as stale). What is already written
   * stays in the spool for the next start; `inDoubt` records were in a write that never answered and may still land.
   */
  abandon(): { dropped: number; inDoubt: number } {
    this.closing = true;
    this.guard.stop();
    this.commit.stop();
    const r = this.writer.abandon();
    this.log.error(
      {
        code: 'SK_ERR_SPOOL_STALLED',
        reason: 'disk_full',
        dir: this.dir,
        stalledMs: this.stalledMs,
        droppedRecords: r.dropped,
        inDoubtRecords: r.inDoubt,
        diskFullDroppedRecords: this.counters.diskFullDroppedRecords,
      },
      `SK_ERR_SPOOL_STALLED: the spool's filesystem did not answer within the stop budget; ${r.dropped} accepted records not known to be written dropped (counted disk_full)`,
    );
    return r;
  }

  stats(): SpoolStats {
    const disk = this.table.pendingOnDisk();
    return {
      ...this.counters,
      pendingRecords: disk.records + this.writer.bufferedRecords + this.reader.orphanRecords,
      pendingBytes: disk.bytes + this.writer.bufferedBytes,
      segments: this.table.segments.length,
      diskBytes: this.table.diskBytes,
      bufferedBytes: this.writer.bufferedBytes,
      diskFull: this.writer.diskFull,
      writeError: this.writer.lastError?.message,
      stalledMs: this.stalledMs,
    };
  }

  /** A small JSON side file in the spool directory (e.g. breaker state); undefined if never written. */
  readState(name: string): Promise<unknown> {
    return this.states.read(name);
  }

  /** Write a small JSON side file atomically (tmp + fsync + rename + dir fsync). */
  writeState(name: string, value: unknown): Promise<void> {
    return this.states.write(name, value);
  }

  /**
   * Flush and fsync everything, release the lock. Idempotent. Never throws for data it cannot write: that is dropped,
   * counted in diskFullDroppedRecords (and droppedRecords), and logged.
   */
  close(): Promise<void> {
    this.closePromise ??= this.doClose();
    return this.closePromise;
  }

  private async doClose(): Promise<void> {
    this.closing = true;
    this.guard.stop();
    // Never flush into an unlinked file: a directory lost since the last check is recreated first.
    if (!(await this.guardOk())) await this.rebuild();
    const kept = this.reader.takeKept();
    if (kept?.payload) this.writer.prepend(salvageOf(kept.payload, kept.records, kept.firstAppendedAt));
    let failure: unknown;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await this.flush();
        failure = undefined;
        break;
      } catch (err) {
        failure = err;
        // Disk full: the failed write closed its segment off; once the reader's queued work (an ack's delete) has
        // run, one more try may find space.
        if (!this.writer.diskFull) break;
        await this.reader.exclusive(async () => {});
      }
    }
    await this.reader.exclusive(async () => {
      this.closed = true;
      // reader calls queued before this ran still counted; from here on everything is stopped
      await this.writer.stop();
      const lost = this.writer.dropUnwritten();
      if (lost > 0) {
        this.log.error(
          {
            code: 'SK_ERR_SPOOL_WRITE',
            reason: 'disk_full',
            dir: this.dir,
            err: describeError(failure ?? this.writer.lastError),
            droppedRecords: lost,
            diskFullDroppedRecords: this.counters.diskFullDroppedRecords,
          },
          `SK_ERR_SPOOL_WRITE: spool close could not write everything; ${lost} accepted records dropped (counted disk_full)`,
        );
      } else if (failure !== undefined) {
        this.log.error({ dir: this.dir, err: describeError(failure) }, 'spool close: the last flush failed');
      }
      this.commit.stop();
      await this.reader.stop();
      await this.table.writeLedger();
      while (this.commit.busy) await this.commit.sync().catch(() => {});
      await this.table
        .syncDirty()
        .catch((err: unknown) =>
          this.log.error({ dir: this.dir, err: describeError(err) }, 'spool final fsync failed'),
        );
      await this.table.close();
    });
    await this.lock.release();
  }

  /** The directory check, without the guard (stopped at close). */
  private async guardOk(): Promise<boolean> {
    const now = await dirIdentity(this.dir);
    return now !== undefined && this.guard.is(now);
  }
}

/** A kept batch's payload as one frame, written into the spool at close. */
function salvageOf(payload: Buffer, records: number, firstAppendedAt: number): SalvagedFrame[] {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  payload.copy(frame, FRAME_HEADER_BYTES);
  sealFrame(frame, records, firstAppendedAt);
  return [{ frame, records }];
}
