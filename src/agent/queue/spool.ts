// The agent's disk spool: a write-ahead log of accepted records, read back in FIFO order by the exporter.
//
// Files in `dir` (see segment.ts and ledger.ts for the byte layouts):
//   seg-<seq>.log   append-only segments of checksummed frames (one frame = one write-buffer flush, many NDJSON lines)
//   ledger          two-slot checksummed record of the ack position, the in-flight batch boundary and the spool id
//   LOCK            owner pid (lock.ts);  state-<name>.json  small atomic side files (state.ts)
//
// Data flow: append() copies lines into a 64 KiB write buffer; the buffer is sealed into a frame when full or 2 ms
// after its first line, and frames are written (pwritev, positional) by one async writer; fsync follows within
// syncIntervalMs (group commit; 0 = after every write; a segment that filled up is fsynced and closed by the next
// group commit, off the write path). A SIGKILL loses only what was not yet written (a few ms), power loss at most
// syncIntervalMs more. The reader cuts batches from the ack position onwards, never across a
// segment end; one batch is in flight at a time and its boundary is in the ledger before nextBatch() returns.
//
// Batch ids are `<spool id>-<seq>-<start>-<end>-<records>-<first frame's append time>`: a pure function of the
// spool's identity, the exact record range and data read back from disk. The same range always gets the same id
// (after release, after a restart: central dedupes), and a different range never does (a re-cut after a 413, or a
// range re-cut after the ledger was lost, gets a new id, so central never drops new records as duplicates; at worst
// it sees some records twice). The spool id is random, kept in the ledger; a lost ledger gets a new one, so seqs
// restarting from 1 cannot collide with ids already delivered; the append time (from the CRC-checked frame header)
// covers the last corner: a seq reused after power loss took the newest ledger slot with it.
//
// CRASH SAFETY (Vector #25570: a crash between "delete data file" and "write ledger" must never wedge us).
// Invariants: (1) a segment is never appended to after a restart (a fresh one is started at every open, with a seq
// above every seq the ledger or the directory knows), so bytes at a position never change once written; (2) the ledger is the only authority on what is consumed: every segment older than the
// ledger's ack segment is garbage; (3) recovery never trusts a position blindly. At open:
//   - segments with seq < ack.seq are deleted (finishes a delete that a crash interrupted: ledger written first);
//   - if the ack segment itself is missing (deleted, crash before the ledger write landed: the other order), the
//     position moves to the oldest segment that exists — those records were acked or dropped before the delete;
//   - a position past a segment's end (ledger synced, data tail lost to power loss) reads as "segment consumed";
//   - an unreadable ledger (both slots torn) replays every segment from the start under a new spool id: duplicates,
//     never loss, logged as SK_ERR_SPOOL_CORRUPT;
//   - torn tails, flipped bits and zeroed blocks fail the header or payload CRC: the reader skips to the next valid
//     header (resync), counts corruptFrames/corruptBytes, logs SK_ERR_SPOOL_CORRUPT once per region, moves on.
// So "delete segment" and "write ledger" may happen in either order and a crash may hit between any two steps: every
// reachable on-disk state opens, and no state makes open() fail or loop. We still write the ledger first, then delete.
//
// The ack position and the in-flight boundary are written with pwrite before ack()/nextBatch() resolve (so they
// survive a process kill) and fsynced with the next group commit (so power loss can only cost re-delivery: under the
// same id, which central drops, or under a new id if the boundary was lost too: duplicates, never loss).
import { EventEmitter } from 'node:events';
import { mkdir, open, readdir, stat, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SidekickError, describeError } from '../../errors.js';
import { childLogger, RateLimitedLog, type Logger } from '../../log/logger.js';
import { fsyncDir, unlinkIfExists } from '../../common/atomic-file.js';
import { Ledger, type LedgerState, type Pos } from './ledger.js';
import { SpoolLock } from './lock.js';
import {
  FRAME_HEADER_BYTES,
  SegmentReader,
  parseSegmentName,
  sealFrame,
  segmentPath,
  writeAllV,
  type FrameRead,
} from './segment.js';
import { StateFiles } from './state.js';

export interface SpoolOptions {
  /** Created if missing (recursive). Must be on a local filesystem (the lock is pid based). */
  dir: string;
  /** Cap on the on-disk backlog; past it the OLDEST unacked segments are deleted, counted as dropped. */
  maxBytes: number;
  /** Roll to a new segment file past this (clamped to maxBytes / 4 so the cap can drop in useful steps). */
  segmentBytes: number;
  /** fsync at most this long after a write (group commit); 0 = fsync after every write. */
  syncIntervalMs: number;
  log?: Logger;
  /** Cap on appended data not yet written to the OS (only reached when the disk is slow or failing); past it the
   *  oldest unwritten frames are dropped, counted. Default 64 MiB. */
  maxBufferedBytes?: number;
}

export interface SpoolBatch {
  /** Stable for this exact record range: the same after release() and after a restart. */
  id: string;
  records: number;
  bytes: number;
  /** Complete '\n'-terminated NDJSON lines. */
  payload: Buffer;
  /** Date.now() when the first record of the batch's first frame was appended (±2 ms). */
  firstAppendedAt: number;
}

export interface SpoolStats {
  /** Records not yet acked: on disk, in the write buffer, or in flight. */
  pendingRecords: number;
  /** Bytes not yet acked, frame headers included (on disk from the ack position, plus unwritten). */
  pendingBytes: number;
  segments: number;
  appendedRecords: number;
  ackedRecords: number;
  /** Dropped by the size cap (or the unwritten-buffer cap), never silently. */
  droppedRecords: number;
  /** Drop events: a segment deleted by the cap, a released batch whose segment had been dropped, an unwritten frame. */
  droppedBatches: number;
  corruptFrames: number;
  corruptBytes: number;
  // additions to the agreed shape:
  /** Records found pending on disk at open (this process's counters start at 0). */
  recoveredRecords: number;
  /** Records lost inside frames whose payload failed its checksum (records of torn tails are unknowable: 0). */
  corruptRecords: number;
  /** Bytes of segment files on disk (what maxBytes caps). */
  diskBytes: number;
  /** Appended bytes not yet written to the OS. */
  bufferedBytes: number;
}
// Balance, per process: recoveredRecords + appendedRecords = ackedRecords + pendingRecords + droppedRecords
// + corruptRecords.

interface Segment {
  seq: number;
  /** Bytes written (for the write segment: completed writes only; the reader never looks past this). */
  size: number;
  /** Records after the ack position (whole segment unless it is the head). */
  records: number;
}

interface Inflight {
  id: string;
  seq: number;
  start: Pos;
  end: Pos;
  records: number;
  bytes: number;
  firstAppendedAt: number;
  /** Undefined for a boundary recovered from the ledger until it is read back. */
  payload: Buffer | undefined;
  handedOut: boolean;
}

interface QueuedFrame {
  frame: Buffer;
  records: number;
  /** The full-size write buffer the frame is a view of, recycled once written. */
  pooled: Buffer | undefined;
}

const WRITE_BUFFER_BYTES = 64 * 1024;
const FLUSH_DELAY_MS = 2;
const READ_CHUNK_BYTES = 1024 * 1024;
const MAX_WRITE_BYTES = 4 * 1024 * 1024;
const MAX_IOV = 512;
const MIN_SEGMENT_BYTES = 4096;
const BUFFER_POOL_MAX = 8;

export class Spool extends EventEmitter {
  private readonly log: Logger;
  private readonly fullLog: RateLimitedLog;
  private readonly corruptLog: RateLimitedLog;
  private readonly ledgerLog: RateLimitedLog;
  private readonly states: StateFiles;
  private readonly segmentBytes: number;
  private readonly maxBytes: number;
  private readonly syncIntervalMs: number;
  private readonly maxBufferedBytes: number;
  private readonly highWaterBytes: number;

  private spoolId = '';
  private ledger!: Ledger;
  private segments: Segment[] = [];
  private writeSeg!: Segment;
  private writeFh!: FileHandle;
  private maxSeq = 0;
  private ackPos: Pos = { seq: 0, frame: 0, inner: 0 };
  private inflight: Inflight | undefined;
  /** A handed-out batch whose segment the cap deleted: it can still be acked (or released = dropped). */
  private orphan: Inflight | undefined;
  private diskBytes = 0;

  // write side
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
  private bytesSealed = 0; // cumulative
  private bytesSettled = 0; // cumulative: written, or dropped unwritten
  private writing = false;
  private writeWaiters: Array<(ok: boolean) => void> = [];
  private writeError: Error | undefined;
  private writeFailures = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private needDrain = false;

  // durability
  private segDirty = false;
  /** Handles of segments that filled up, to fsync + close at the next group commit. */
  private fullFhs: FileHandle[] = [];
  private dirDirty = false;
  private syncTimer: NodeJS.Timeout | undefined;
  private syncReq = 0;
  private syncDone = 0;
  private syncRunning = false;
  private syncWaiters: Array<{ gen: number; resolve: () => void; reject: (err: unknown) => void }> = [];

  // read side
  private reader: SegmentReader | undefined;
  private mutex: Promise<void> = Promise.resolve();
  private capScheduled = false;
  private closing = false;
  private closed = false;
  private closePromise: Promise<void> | undefined;

  // counters
  private appendedRecords = 0;
  private ackedRecords = 0;
  private droppedRecords = 0;
  private droppedBatches = 0;
  private corruptFrames = 0;
  private corruptBytes = 0;
  private corruptRecords = 0;
  private recoveredRecords = 0;

  private constructor(
    readonly dir: string,
    opts: SpoolOptions,
    log: Logger,
    private readonly lock: SpoolLock,
  ) {
    super();
    this.log = log;
    this.fullLog = new RateLimitedLog(log);
    this.corruptLog = new RateLimitedLog(log);
    this.ledgerLog = new RateLimitedLog(log);
    this.states = new StateFiles(dir, log);
    this.maxBytes = opts.maxBytes;
    this.segmentBytes = Math.max(MIN_SEGMENT_BYTES, Math.min(opts.segmentBytes, Math.floor(opts.maxBytes / 4)));
    this.syncIntervalMs = opts.syncIntervalMs;
    this.maxBufferedBytes = opts.maxBufferedBytes ?? 64 * 1024 * 1024;
    this.highWaterBytes = Math.max(WRITE_BUFFER_BYTES * 2, Math.floor(this.maxBufferedBytes / 8));
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
    const spool = new Spool(dir, opts, log, lock);
    try {
      await spool.recover();
    } catch (err) {
      await spool.writeFh?.close().catch(() => {});
      await spool.ledger?.close().catch(() => {});
      await lock.release().catch(() => {});
      throw err;
    }
    return spool;
  }

  // ---------------------------------------------------------------------------------------------------- recovery

  private async recover(): Promise<void> {
    const names = await readdir(this.dir);
    for (const name of names) {
      // leftovers of interrupted atomic writes and lock take-overs
      if (name.endsWith('.tmp') || name.startsWith('LOCK.stale.')) await unlinkIfExists(join(this.dir, name));
    }
    const { ledger, state, corrupt } = await Ledger.open(join(this.dir, 'ledger'));
    this.ledger = ledger;
    let seqs = names
      .map(parseSegmentName)
      .filter((s): s is number => s !== undefined)
      .sort((a, b) => a - b);
    if (corrupt) {
      this.corruptLog.warn(
        { code: 'SK_ERR_SPOOL_CORRUPT', dir: this.dir, segments: seqs.length },
        'SK_ERR_SPOOL_CORRUPT: spool ledger unreadable; replaying every segment from the start (duplicates possible)',
      );
    }
    this.spoolId = state?.spoolId ?? randomBytes(8).toString('hex');
    let ack: Pos = state ? { ...state.ack } : { seq: seqs[0] ?? 0, frame: 0, inner: 0 };
    let persisted = state?.inflight;

    // Segments before the ack segment were fully acked or dropped; a crash interrupted their deletion.
    for (const seq of seqs) {
      if (seq < ack.seq) {
        await unlinkIfExists(segmentPath(this.dir, seq));
        this.dirDirty = true;
      }
    }
    seqs = seqs.filter((s) => s >= ack.seq);
    // Empty segments (an idle run's write segment) hold nothing: remove them rather than collect one per restart.
    const sizes = new Map<number, number>();
    for (const seq of seqs) {
      const size = (await stat(segmentPath(this.dir, seq))).size;
      if (size === 0) {
        await unlinkIfExists(segmentPath(this.dir, seq));
        this.dirDirty = true;
      } else sizes.set(seq, size);
    }
    seqs = seqs.filter((s) => sizes.has(s));
    if (seqs[0] !== ack.seq) {
      // The ack segment is gone (deleted before the ledger write that moved past it landed): start at the oldest
      // segment that exists. Its records come after everything acked, so nothing is skipped.
      ack = { seq: seqs[0] ?? ack.seq, frame: 0, inner: 0 };
      persisted = undefined;
    }
    this.maxSeq = Math.max(state?.maxSeq ?? 0, ack.seq, seqs[seqs.length - 1] ?? 0);

    for (const seq of seqs) {
      const size = sizes.get(seq)!;
      const records = await this.scanRecords(seq, size, seq === ack.seq ? ack : undefined);
      this.segments.push({ seq, size, records });
      this.diskBytes += size;
      this.recoveredRecords += records;
    }

    // Always write into a fresh segment: bytes at an old position never change (torn tails stay behind, harmless).
    await this.openWriteSegment(this.maxSeq + 1);
    if (seqs.length === 0) ack = { seq: this.writeSeg.seq, frame: 0, inner: 0 };
    this.ackPos = ack;
    if (persisted && seqs.length > 0) {
      const end: Pos = { seq: ack.seq, frame: persisted.endFrame, inner: persisted.endInner };
      this.inflight = {
        id: this.batchId(ack, end, persisted.records, persisted.firstAppendedAt),
        seq: ack.seq,
        start: { ...ack },
        end,
        records: persisted.records,
        bytes: persisted.bytes,
        firstAppendedAt: persisted.firstAppendedAt,
        payload: undefined,
        handedOut: false,
      };
    }
    this.writeLedger();
    await this.doSync();
    if (this.recoveredRecords > 0) {
      this.log.info(
        { dir: this.dir, records: this.recoveredRecords, segments: seqs.length, bytes: this.diskBytes },
        'spool recovered a backlog',
      );
    }
    if (this.diskBytes > this.maxBytes) this.scheduleCap();
  }

  /** Records in valid frames of a closed segment, from `from` (the ack position) when given. Headers only. */
  private async scanRecords(seq: number, size: number, from: Pos | undefined): Promise<number> {
    let reader: SegmentReader;
    try {
      reader = await SegmentReader.open(this.dir, seq, READ_CHUNK_BYTES);
    } catch (err) {
      this.log.warn({ seq, err: describeError(err) }, 'cannot open spool segment for scanning');
      return 0;
    }
    try {
      let off = from?.frame ?? 0;
      let records = 0;
      if (from && from.inner > 0) {
        const r = await reader.read(off, size, true);
        if (r.kind === 'frame') records += r.header.records - linesBefore(r.payload, from.inner);
        if (r.kind !== 'end') off = r.end;
      }
      for (;;) {
        const r = await reader.read(off, size, false);
        if (r.kind === 'end') break;
        if (r.kind === 'frame') records += r.header.records;
        off = r.end;
      }
      return Math.max(0, records);
    } finally {
      await reader.close();
    }
  }

  private async openWriteSegment(seq: number): Promise<void> {
    let s = seq;
    let fh: FileHandle | undefined;
    while (!fh) {
      try {
        fh = await open(segmentPath(this.dir, s), 'wx', 0o640);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        s++; // never reuse a name, whatever left it there
      }
    }
    this.maxSeq = Math.max(this.maxSeq, s);
    const seg: Segment = { seq: s, size: 0, records: 0 };
    this.segments.push(seg);
    this.writeSeg = seg;
    this.writeFh = fh;
    this.dirDirty = true;
  }

  // ---------------------------------------------------------------------------------------------------- writing

  /**
   * Accept complete '\n'-terminated NDJSON lines (a missing final '\n' is added). Synchronous and cheap: the bytes
   * are copied into the write buffer, written to the OS within ~2 ms or at 64 KiB, fsynced per syncIntervalMs.
   * `records` is the caller's line count; the spool counts the lines itself so its counters stay exact.
   * Returns false when unwritten data passed the high-water mark (disk slower than ingest); 'drain' follows.
   */
  append(lines: Buffer, records?: number): boolean {
    void records;
    if (this.closing) throw new SidekickError('SK_ERR_STOPPED', 'append on a closed spool', { dir: this.dir });
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
    this.appendedRecords += n;
    const ok = this.unwrittenBytes + this.bufUsed < this.highWaterBytes;
    if (!ok) this.needDrain = true;
    return ok;
  }

  private readonly onFlushTimer = (): void => {
    this.flushTimer = undefined;
    this.seal();
  };

  /** Turn the write buffer into a frame and queue it for the writer. */
  private seal(): void {
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
    // Bounded memory when the disk cannot keep up or fails: drop the oldest unwritten frames, counted.
    while (this.unwrittenBytes > this.maxBufferedBytes && this.queue.length > 1) {
      const old = this.queue.shift()!;
      this.unwrittenBytes -= old.frame.length;
      this.unwrittenRecords -= old.records;
      this.bytesSettled += old.frame.length;
      this.droppedRecords += old.records;
      this.droppedBatches++;
      this.fullLog.warn(
        {
          code: 'SK_ERR_SPOOL_FULL',
          dir: this.dir,
          droppedRecords: old.records,
          maxBufferedBytes: this.maxBufferedBytes,
        },
        'SK_ERR_SPOOL_FULL: spool write backlog over its memory cap (disk slow or failing); dropped the oldest unwritten records',
      );
    }
    this.kick();
  }

  private kick(): void {
    if (this.writing || this.retryTimer || this.queue.length === 0 || this.closed) return;
    this.writing = true;
    void this.writeLoop();
  }

  private async writeLoop(): Promise<void> {
    try {
      while (this.queue.length > 0 && !this.closed) {
        const seg = this.writeSeg;
        const first = this.queue[0]!;
        if (seg.size > 0 && seg.size + first.frame.length > this.segmentBytes) {
          await this.roll();
          continue;
        }
        let k = 0;
        let bytes = 0;
        let records = 0;
        while (k < this.queue.length && k < MAX_IOV) {
          const f = this.queue[k]!;
          const fits =
            seg.size + bytes + f.frame.length <= this.segmentBytes && bytes + f.frame.length <= MAX_WRITE_BYTES;
          if (k > 0 && !fits) break;
          bytes += f.frame.length;
          records += f.records;
          k++;
        }
        const taken = this.queue.splice(0, k);
        try {
          await writeAllV(
            this.writeFh,
            taken.map((f) => f.frame),
            seg.size,
          );
        } catch (err) {
          this.queue.unshift(...taken);
          this.onWriteError(err);
          return;
        }
        this.writeFailures = 0;
        this.writeError = undefined;
        seg.size += bytes;
        seg.records += records;
        this.diskBytes += bytes;
        this.unwrittenBytes -= bytes;
        this.unwrittenRecords -= records;
        this.bytesSettled += bytes;
        this.segDirty = true;
        for (const f of taken) if (f.pooled && this.pool.length < BUFFER_POOL_MAX) this.pool.push(f.pooled);
        this.wakeWriters(true);
        this.safeEmit('data');
        if (this.needDrain && this.unwrittenBytes + this.bufUsed < this.highWaterBytes / 2) {
          this.needDrain = false;
          this.safeEmit('drain');
        }
        if (this.diskBytes > this.maxBytes) this.scheduleCap();
        if (this.syncIntervalMs === 0) await this.sync().catch(() => {});
        else this.scheduleSync();
      }
    } catch (err) {
      this.onWriteError(err);
    } finally {
      this.writing = false;
    }
  }

  /** A throwing listener must not look like a failed write (the data is on disk already). */
  private safeEmit(event: 'data' | 'drain'): void {
    try {
      this.emit(event);
    } catch (err) {
      this.log.error({ dir: this.dir, event, err: describeError(err) }, 'spool event listener threw');
    }
  }

  private onWriteError(err: unknown): void {
    this.writeError = err instanceof Error ? err : new Error(describeError(err));
    this.writeFailures++;
    const delay = Math.min(5000, 50 * 2 ** Math.min(this.writeFailures, 7));
    this.log.error(
      { dir: this.dir, err: describeError(err), retryInMs: delay, unwrittenBytes: this.unwrittenBytes },
      'spool write failed; data stays buffered and the write is retried',
    );
    this.wakeWriters(false);
    if (!this.closed) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.kick();
      }, delay);
    }
  }

  private wakeWriters(ok: boolean): void {
    const w = this.writeWaiters;
    this.writeWaiters = [];
    for (const f of w) f(ok);
  }

  /** Resolves after the next write attempt: true if it succeeded. */
  private nextWrite(): Promise<boolean> {
    return new Promise((res) => this.writeWaiters.push(res));
  }

  /** Write everything sealed so far; false if a write failed. */
  private async drainWrites(): Promise<boolean> {
    this.seal();
    const target = this.bytesSealed;
    while (this.bytesSettled < target) {
      if (this.retryTimer) {
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
      }
      this.kick();
      if (!(await this.nextWrite())) return false;
    }
    return true;
  }

  private async roll(): Promise<void> {
    const oldFh = this.writeFh;
    const old = this.writeSeg;
    await this.openWriteSegment(this.maxSeq + 1);
    // the ledger records maxSeq, so seqs stay unique even if every segment is later deleted
    this.writeLedger();
    // The full segment is fsynced and closed by the next group commit, off the write path (an 8 MiB fsync to a real
    // disk takes tens of ms; the writer goes on into the new segment meanwhile).
    this.fullFhs.push(oldFh);
    this.scheduleSync();
    // a fully acked head that was the write segment can go now
    if (this.segments[0] === old) void this.exclusive(() => this.advanceIfConsumed()).catch(() => {});
  }

  // ---------------------------------------------------------------------------------------------------- durability

  private scheduleSync(): void {
    if (this.syncTimer || this.closed) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      this.sync().catch(() => {});
    }, this.syncIntervalMs);
    this.syncTimer.unref();
  }

  /** fsync what was written so far (segment data, then directory entries, then the ledger). Coalesced. */
  private sync(): Promise<void> {
    const gen = ++this.syncReq;
    const p = new Promise<void>((resolve, reject) => this.syncWaiters.push({ gen, resolve, reject }));
    if (!this.syncRunning) {
      this.syncRunning = true;
      void this.syncLoop();
    }
    return p;
  }

  private async syncLoop(): Promise<void> {
    try {
      while (this.syncDone < this.syncReq) {
        const target = this.syncReq;
        let error: unknown;
        try {
          await this.doSync();
        } catch (err) {
          error = err;
          this.log.error({ dir: this.dir, err: describeError(err) }, 'spool fsync failed');
        }
        this.syncDone = target;
        const keep: typeof this.syncWaiters = [];
        for (const w of this.syncWaiters) {
          if (w.gen > target) keep.push(w);
          else if (error === undefined) w.resolve();
          else w.reject(error);
        }
        this.syncWaiters = keep;
      }
    } finally {
      this.syncRunning = false;
    }
  }

  private async doSync(): Promise<void> {
    // full segments first (closed here, never while an fsync on them could still run: syncs are serialized)
    const full = this.fullFhs;
    this.fullFhs = [];
    let error: unknown;
    for (const fh of full) {
      try {
        await fh.sync();
      } catch (err) {
        error ??= err;
      } finally {
        await fh.close().catch(() => {});
      }
    }
    if (error !== undefined) throw error;
    if (this.segDirty) {
      this.segDirty = false;
      try {
        await this.writeFh.sync();
      } catch (err) {
        this.segDirty = true;
        throw err;
      }
    }
    if (this.dirDirty) {
      this.dirDirty = false;
      try {
        await fsyncDir(this.dir);
      } catch (err) {
        this.dirDirty = true;
        throw err;
      }
    }
    await this.ledger.sync();
  }

  /** Write everything appended so far to the OS and fsync it (segment data, directory, ledger). */
  async flush(): Promise<void> {
    if (!(await this.drainWrites())) {
      throw new SidekickError('SK_ERR_SPOOL_WRITE', `spool write failed: ${describeError(this.writeError)}`, {
        dir: this.dir,
      });
    }
    await this.sync();
  }

  private ledgerState(): LedgerState {
    const f = this.inflight;
    return {
      spoolId: this.spoolId,
      ack: { ...this.ackPos },
      maxSeq: this.maxSeq,
      inflight: f
        ? {
            endFrame: f.end.frame,
            endInner: f.end.inner,
            records: f.records,
            bytes: f.bytes,
            firstAppendedAt: f.firstAppendedAt,
          }
        : undefined,
    };
  }

  /**
   * Persist the ack position and in-flight boundary to the OS now (sync pwrite; fsync follows by group commit).
   * Never throws: the in-memory state is always consistent and the next successful write carries it; until then a
   * crash can only cause re-delivery (same or new ids), never loss — better than stalling the exporter on EIO.
   */
  private writeLedger(): void {
    try {
      this.ledger.write(this.ledgerState());
    } catch (err) {
      this.ledgerLog.warn(
        { dir: this.dir, err: describeError(err) },
        'spool ledger write failed; a crash now may re-deliver batches',
      );
    }
  }

  // ---------------------------------------------------------------------------------------------------- reading

  /** Run reader-side operations one at a time (nextBatch, ack, segment deletion, cap enforcement). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.mutex.then(fn);
    this.mutex = run.then(
      () => {},
      () => {},
    );
    return run;
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
    return this.exclusive(async () => {
      this.assertOpen();
      if (this.orphan || this.inflight?.handedOut) {
        throw new SidekickError(
          'SK_ERR_SPOOL_BUSY',
          `batch ${(this.orphan ?? this.inflight)!.id} is still in flight; ack or release it first`,
          { dir: this.dir },
        );
      }
      const f = this.inflight;
      if (f) {
        if (!f.payload) await this.reload(f);
        if (this.inflight === f && f.records <= maxRecords && f.bytes <= maxBytes) {
          f.handedOut = true;
          return toBatch(f);
        }
        this.inflight = undefined; // re-cut with the smaller limits
      }
      const cut = await this.cut(maxRecords, maxBytes);
      if (!cut) {
        if (f) this.writeLedger(); // forget the old boundary
        return undefined;
      }
      cut.handedOut = true;
      this.inflight = cut;
      this.writeLedger(); // the boundary is durable (vs. a process kill) before the batch leaves
      return toBatch(cut);
    });
  }

  /** Delivered or dead-lettered: advance the durable read position; delete segment files once fully acked. */
  ack(id: string): Promise<void> {
    return this.exclusive(async () => {
      this.assertOpen();
      if (this.orphan?.id === id) {
        this.ackedRecords += this.orphan.records;
        this.orphan = undefined;
        return;
      }
      const f = this.inflight;
      if (!f || f.id !== id) {
        this.log.warn({ dir: this.dir, id }, 'spool ack for a batch that is not in flight; ignored');
        return;
      }
      this.inflight = undefined;
      const seg = this.segments[0]!;
      seg.records = Math.max(0, seg.records - f.records);
      this.ackedRecords += f.records;
      this.ackPos = { ...f.end };
      if (seg !== this.writeSeg && this.ackPos.frame >= seg.size) await this.advanceHead();
      else this.writeLedger();
    });
  }

  /** Not delivered (will retry): the same batch (same id and payload) comes back on the next nextBatch. */
  release(id: string): void {
    if (this.orphan?.id === id) {
      // its segment was dropped by the size cap meanwhile: it is the oldest data, so it goes too
      this.droppedRecords += this.orphan.records;
      this.droppedBatches++;
      this.fullLog.warn(
        { code: 'SK_ERR_SPOOL_FULL', dir: this.dir, droppedRecords: this.orphan.records, batch: id },
        'SK_ERR_SPOOL_FULL: a released batch belonged to a segment dropped by the size cap; dropped',
      );
      this.orphan = undefined;
      return;
    }
    if (this.inflight?.id === id) {
      this.inflight.handedOut = false;
      return;
    }
    this.log.warn({ dir: this.dir, id }, 'spool release for a batch that is not in flight; ignored');
  }

  /** Reader calls queued before close() still run (an ack right before shutdown counts); after it, they throw. */
  private assertOpen(): void {
    if (this.closed) throw new SidekickError('SK_ERR_STOPPED', 'the spool is closed', { dir: this.dir });
  }

  private batchId(start: Pos, end: Pos, records: number, firstAppendedAt: number): string {
    const b = (n: number): string => Math.round(n).toString(36);
    return `${this.spoolId}-${b(start.seq)}-${b(start.frame)}.${b(start.inner)}-${b(end.frame)}.${b(end.inner)}-${b(records)}-${b(firstAppendedAt)}`;
  }

  private async readerFor(seq: number): Promise<SegmentReader> {
    if (this.reader?.seq === seq) return this.reader;
    await this.closeReader();
    this.reader = await SegmentReader.open(this.dir, seq, READ_CHUNK_BYTES);
    return this.reader;
  }

  private async closeReader(): Promise<void> {
    const r = this.reader;
    this.reader = undefined;
    await r?.close().catch(() => {});
  }

  /** Read back a boundary recovered from the ledger; if the bytes no longer give the same batch, forget it. */
  private async reload(f: Inflight): Promise<void> {
    const again = await this.cut(Number.MAX_SAFE_INTEGER, Number.POSITIVE_INFINITY, f.end);
    if (again && again.id === f.id && this.ackPos.frame === f.start.frame && this.ackPos.inner === f.start.inner) {
      f.payload = again.payload;
      f.bytes = again.bytes;
      return;
    }
    this.log.warn(
      { dir: this.dir, id: f.id },
      'spool could not re-read the batch in flight before restart; re-cutting',
    );
    this.inflight = undefined;
  }

  /**
   * Cut a batch starting at the ack position, skipping (and counting) corrupt regions at its start. With `stopAt`,
   * reproduce exactly the range ending there (or return undefined / a different range, which the caller rejects).
   */
  private async cut(maxRecords: number, maxBytes: number, stopAt?: Pos): Promise<Inflight | undefined> {
    for (;;) {
      const seg = this.segments[0]!;
      const limit = seg.size;
      if (this.ackPos.frame >= limit) {
        if (seg !== this.writeSeg) {
          if (stopAt) return undefined;
          await this.advanceHead();
          continue;
        }
        if (!stopAt && (this.bufUsed > 0 || this.unwrittenBytes > 0)) {
          // the reader caught up with the writer: push the buffer to the OS now rather than wait for the timer
          this.seal();
          this.kick();
          if (await this.nextWrite()) continue;
        }
        return undefined;
      }
      let reader: SegmentReader;
      try {
        reader = await this.readerFor(seg.seq);
      } catch (err) {
        // Only a missing file is skipped (deleted by hand: counted, never a stall). Anything else (EMFILE, EIO) may
        // be transient: throw, the exporter retries, the data stays.
        if (seg === this.writeSeg || stopAt || (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        this.countCorrupt(seg.seq, this.ackPos.frame, limit - this.ackPos.frame, seg.records, 'segment file missing');
        seg.records = 0;
        this.ackPos = { seq: seg.seq, frame: limit, inner: 0 };
        continue;
      }
      const r = await reader.read(this.ackPos.frame, limit, true);
      if (r.kind === 'end') return undefined; // not reached: ack.frame < limit
      if (r.kind === 'garbage') {
        this.countCorrupt(seg.seq, r.off, r.end - r.off, 0, 'no valid frame (torn write or damaged bytes)');
        this.ackPos = { seq: seg.seq, frame: r.end, inner: 0 };
        if (stopAt) return undefined;
        continue;
      }
      if (!r.crcOk) {
        const lost = Math.min(seg.records, r.header.records - linesBefore(r.payload, this.ackPos.inner));
        this.countCorrupt(seg.seq, r.off, r.end - r.off, lost, 'payload checksum mismatch');
        seg.records -= Math.max(0, lost);
        this.ackPos = { seq: seg.seq, frame: r.end, inner: 0 };
        if (stopAt) return undefined;
        continue;
      }
      const got = await this.collect(seg, reader, r, limit, maxRecords, maxBytes, stopAt);
      if (got.records === 0) {
        if (stopAt) return undefined;
        this.ackPos = got.end; // a position at the very end of a frame: nothing to cut here
        continue;
      }
      return {
        id: this.batchId(this.ackPos, got.end, got.records, r.header.firstAppendedAt),
        seq: seg.seq,
        start: { ...this.ackPos },
        end: got.end,
        records: got.records,
        bytes: got.payload.length,
        firstAppendedAt: r.header.firstAppendedAt,
        payload: got.payload,
        handedOut: false,
      };
    }
  }

  private async collect(
    seg: Segment,
    reader: SegmentReader,
    first: Extract<FrameRead, { kind: 'frame' }>,
    limit: number,
    maxRecords: number,
    maxBytes: number,
    stopAt: Pos | undefined,
  ): Promise<{ records: number; payload: Buffer; end: Pos }> {
    const parts: Buffer[] = [];
    let records = 0;
    let bytes = 0;
    let r = first;
    let inner = this.ackPos.inner;
    let end: Pos | undefined;
    for (;;) {
      const p = r.payload!;
      let bound = p.length;
      if (stopAt) {
        if (r.off > stopAt.frame) break;
        if (r.off === stopAt.frame) bound = Math.min(bound, stopAt.inner);
      }
      let pos = Math.min(inner, p.length);
      const from = pos;
      let full = false;
      while (pos < bound) {
        if (!stopAt && records >= maxRecords) {
          full = true;
          break;
        }
        let nl = p.indexOf(10, pos);
        if (nl < 0 || nl >= p.length) nl = p.length - 1;
        const lineLen = nl + 1 - pos;
        if (!stopAt && records > 0 && bytes + lineLen > maxBytes) {
          full = true;
          break;
        }
        records++;
        bytes += lineLen;
        pos = nl + 1;
      }
      if (pos > from) parts.push(Buffer.from(p.subarray(from, pos))); // copy: the reader's chunk buffer is reused
      if (pos < p.length) {
        end = { seq: seg.seq, frame: r.off, inner: pos };
        return { records, payload: concat(parts, bytes), end };
      }
      end = { seq: seg.seq, frame: r.end, inner: 0 };
      if (full || (!stopAt && (records >= maxRecords || bytes >= maxBytes))) break;
      if (stopAt && r.end >= stopAt.frame && stopAt.inner === 0) break;
      const next = await reader.read(r.end, limit, true);
      if (next.kind !== 'frame' || !next.crcOk) break; // end of data, or corruption: the batch ends before it
      r = next;
      inner = 0;
    }
    return { records, payload: concat(parts, bytes), end: end ?? { ...this.ackPos } };
  }

  private countCorrupt(seq: number, offset: number, bytes: number, records: number, why: string): void {
    this.corruptFrames++;
    this.corruptBytes += bytes;
    this.corruptRecords += Math.max(0, records);
    this.corruptLog.warn(
      { code: 'SK_ERR_SPOOL_CORRUPT', dir: this.dir, segment: seq, offset, bytes, records, why },
      `SK_ERR_SPOOL_CORRUPT: skipped ${bytes} corrupt bytes in spool segment ${seq} at offset ${offset} (${why})`,
    );
  }

  /** The head segment is fully consumed and closed: move the ack position to the next one, then delete it. */
  private async advanceHead(): Promise<void> {
    const head = this.segments[0]!;
    if (head === this.writeSeg) return;
    if (head.records > 0) {
      // headers promised records the reader could not find (bytes changed under us): count, never stall
      this.countCorrupt(head.seq, this.ackPos.frame, 0, head.records, 'records missing at segment end');
    }
    this.segments.shift();
    this.diskBytes -= head.size;
    this.ackPos = { seq: this.segments[0]!.seq, frame: 0, inner: 0 };
    if (this.reader?.seq === head.seq) await this.closeReader();
    this.writeLedger(); // ledger first, then delete (either order recovers; see the top of this file)
    await unlinkIfExists(segmentPath(this.dir, head.seq));
    this.dirDirty = true;
    this.scheduleSync();
  }

  private async advanceIfConsumed(): Promise<void> {
    if (this.closed) return;
    const head = this.segments[0]!;
    if (head !== this.writeSeg && !this.inflight && !this.orphan && this.ackPos.frame >= head.size) {
      await this.advanceHead();
    }
  }

  private scheduleCap(): void {
    if (this.capScheduled || this.closed) return;
    this.capScheduled = true;
    void this.exclusive(async () => {
      this.capScheduled = false;
      if (!this.closed) await this.enforceCap();
    }).catch((err: unknown) =>
      this.log.error({ dir: this.dir, err: describeError(err) }, 'spool cap enforcement failed'),
    );
  }

  /** Past maxBytes: delete the oldest closed segments (the oldest unacked data), counted as dropped. */
  private async enforceCap(): Promise<void> {
    while (this.diskBytes > this.maxBytes && this.segments.length > 1) {
      const head = this.segments[0]!;
      let lost = head.records;
      const f = this.inflight;
      if (f && f.seq === head.seq) {
        this.inflight = undefined;
        if (f.handedOut) {
          this.orphan = f; // being delivered right now: its ack still counts; a release drops it
          lost -= f.records;
        }
      }
      lost = Math.max(0, lost);
      this.droppedRecords += lost;
      this.droppedBatches++;
      this.segments.shift();
      this.diskBytes -= head.size;
      this.ackPos = { seq: this.segments[0]!.seq, frame: 0, inner: 0 };
      if (this.reader?.seq === head.seq) await this.closeReader();
      this.writeLedger();
      await unlinkIfExists(segmentPath(this.dir, head.seq));
      this.dirDirty = true;
      this.scheduleSync();
      this.fullLog.warn(
        { code: 'SK_ERR_SPOOL_FULL', dir: this.dir, segment: head.seq, droppedRecords: lost, maxBytes: this.maxBytes },
        `SK_ERR_SPOOL_FULL: spool over maxBytes (${this.maxBytes}); dropped its oldest segment (${lost} records)`,
      );
    }
  }

  // ---------------------------------------------------------------------------------------------------- misc

  stats(): SpoolStats {
    let onDisk = 0;
    for (const s of this.segments) onDisk += s.records;
    const head = this.segments[0];
    const consumed = head && head.seq === this.ackPos.seq ? Math.min(this.ackPos.frame, head.size) : 0;
    return {
      pendingRecords: onDisk + this.unwrittenRecords + this.bufRecords + (this.orphan?.records ?? 0),
      pendingBytes: this.diskBytes - consumed + this.unwrittenBytes + this.bufUsed,
      segments: this.segments.length,
      appendedRecords: this.appendedRecords,
      ackedRecords: this.ackedRecords,
      droppedRecords: this.droppedRecords,
      droppedBatches: this.droppedBatches,
      corruptFrames: this.corruptFrames,
      corruptBytes: this.corruptBytes,
      recoveredRecords: this.recoveredRecords,
      corruptRecords: this.corruptRecords,
      diskBytes: this.diskBytes,
      bufferedBytes: this.unwrittenBytes + this.bufUsed,
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

  /** Flush and fsync everything, release the lock. Idempotent. Data that cannot be written is logged, not thrown. */
  close(): Promise<void> {
    this.closePromise ??= this.doClose();
    return this.closePromise;
  }

  private async doClose(): Promise<void> {
    this.closing = true;
    try {
      await this.flush();
    } catch (err) {
      this.log.error(
        { dir: this.dir, err: describeError(err), lostRecords: this.unwrittenRecords + this.bufRecords },
        'spool close could not write everything',
      );
    }
    await this.exclusive(async () => {
      this.closed = true;
      for (const t of [this.flushTimer, this.syncTimer, this.retryTimer]) if (t) clearTimeout(t);
      this.flushTimer = this.syncTimer = this.retryTimer = undefined;
      await this.closeReader();
      this.writeLedger();
      while (this.syncRunning) await this.sync().catch(() => {});
      await this.doSync().catch((err: unknown) =>
        this.log.error({ dir: this.dir, err: describeError(err) }, 'spool final fsync failed'),
      );
      await this.writeFh.close().catch(() => {});
      await this.ledger.close().catch(() => {});
    });
    await this.lock.release();
  }
}

function toBatch(f: Inflight): SpoolBatch {
  return {
    id: f.id,
    records: f.records,
    bytes: f.bytes,
    payload: f.payload!,
    firstAppendedAt: f.firstAppendedAt,
  };
}

function countLines(b: Buffer, end = b.length): number {
  let n = 0;
  let i = b.indexOf(10);
  while (i >= 0 && i < end) {
    n++;
    i = b.indexOf(10, i + 1);
  }
  return n;
}

function linesBefore(payload: Buffer | undefined, inner: number): number {
  if (!payload || inner <= 0) return 0;
  return countLines(payload, Math.min(inner, payload.length));
}

function concat(parts: Buffer[], bytes: number): Buffer {
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes);
}
