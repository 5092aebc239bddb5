// The segment table: which segment files exist (oldest first), the one being written, the ack position, the batch in
// flight, and the ledger that persists the last three. It owns every file handle of the spool's data and knows what
// is dirty; group-commit.ts decides when syncDirty() runs.
//
// CRASH SAFETY, the rules enforced here (the open-time side is in recovery.ts, corrupt regions in reader.ts):
// (1) A segment is never appended to after a restart: start() opens a fresh one at every open, with a seq above every
//     seq the ledger or the directory knows (and openWriteSegment never reuses a name: O_EXCL, next seq on EEXIST).
//     So bytes at a position never change once written, and a position in the ledger always means the same bytes.
// (2) The ledger is the only authority on what is consumed: every segment older than the ledger's ack segment is
//     garbage. deleteHead() writes the ledger first, then deletes the file (recovery copes with either order: a crash
//     may land between the two steps).
// (3) The ack position and the in-flight boundary are written with pwrite before ack()/nextBatch() resolve (so they
//     survive a process kill) and fsynced with the next group commit (so power loss can only cost re-delivery: under
//     the same id, which central drops, or under a new id if the boundary was lost too: duplicates, never loss).
//     A failed ledger write is logged, never thrown (writeLedger).
// (4) The ledger records maxSeq, so seqs stay unique even if every segment is later deleted.
// A segment file that cannot be deleted (EROFS, EACCES) is logged and deleted again with the next deletion or roll:
// the ledger already says it is consumed, and recovery deletes it too, so a failed unlink never fails an ack.
// The write segment and the segments waiting for their fsync are open read-write, so their records can be read back
// through the open file after the directory was removed (rebuild.ts).
import { open, type FileHandle } from 'node:fs/promises';
import { describeError } from '../../errors.js';
import type { RateLimitedLog } from '../../log/logger.js';
import { fsyncDir, unlinkIfExists } from '../../common/atomic-file.js';
import type { Ledger, LedgerState, Pos } from './ledger.js';
import { segmentPath } from './segment.js';
import { batchId } from './batch-id.js';
import type { Recovered } from './recovery.js';
import type { Inflight, Segment } from './types.js';

export class SegmentTable {
  spoolId: string;
  /** Oldest first; the last one is the write segment. */
  readonly segments: Segment[];
  writeSeg!: Segment;
  ackPos: Pos = { seq: 0, frame: 0, inner: 0 };
  /** The batch in flight (handed out or not), whose boundary the ledger holds. */
  inflight: Inflight | undefined;
  /** Bytes of segment files on disk. */
  diskBytes: number;
  private maxSeq: number;
  private ledger: Ledger;
  private writeFh: FileHandle | undefined;
  private segDirty = false;
  private dirDirty = false;
  /** Handles of segments that filled up, to fsync + close at the next group commit. */
  private fullFhs: Array<{ seq: number; fh: FileHandle }> = [];
  /** Consumed segments whose unlink failed (read-only or inaccessible directory): deleted again later. */
  private undeleted: number[] = [];

  constructor(
    readonly dir: string,
    found: Recovered,
    private readonly ledgerLog: RateLimitedLog,
  ) {
    this.ledger = found.ledger;
    this.spoolId = found.spoolId;
    this.segments = found.segments;
    this.maxSeq = found.maxSeq;
    this.diskBytes = found.diskBytes;
  }

  /** Rule (1): start a fresh write segment, take the recovered position and boundary, write the ledger. */
  async start(found: Recovered): Promise<void> {
    const recovered = found.segments.length;
    await this.openWriteSegment(this.maxSeq + 1);
    this.ackPos = recovered === 0 ? { seq: this.writeSeg.seq, frame: 0, inner: 0 } : found.ack;
    const persisted = found.persisted;
    if (persisted && recovered > 0) {
      const ack = found.ack;
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
    await this.writeLedger();
  }

  batchId(start: Pos, end: Pos, records: number, firstAppendedAt: number): string {
    return batchId(this.spoolId, start, end, records, firstAppendedAt);
  }

  get head(): Segment {
    return this.segments[0]!;
  }

  /** The open write segment's handle (the writer's pwritev target). */
  get writeHandle(): FileHandle {
    return this.writeFh!;
  }

  private async openWriteSegment(seq: number): Promise<void> {
    let s = seq;
    let fh: FileHandle | undefined;
    while (!fh) {
      try {
        fh = await open(segmentPath(this.dir, s), 'wx+', 0o640); // read-write: see the header
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        s++; // never reuse a name, whatever left it there
      }
    }
    this.maxSeq = Math.max(this.maxSeq, s);
    const seg: Segment = { seq: s, size: 0, records: 0 };
    try {
      const st = await fh.stat();
      seg.file = { dev: st.dev, ino: st.ino };
    } catch {
      // unknown: after a directory replacement it is only read back through this handle (rebuild.ts)
    }
    this.segments.push(seg);
    this.writeSeg = seg;
    this.writeFh = fh;
    this.dirDirty = true;
  }

  /** `bytes` holding `records` landed at the end of the write segment. */
  written(bytes: number, records: number): void {
    const seg = this.writeSeg;
    seg.size += bytes;
    seg.records += records;
    this.diskBytes += bytes;
    this.segDirty = true;
  }

  /**
   * Start the next write segment. The full one is fsynced and closed by the next group commit, off the write path (an
   * 8 MiB fsync to a real disk takes tens of ms; the writer goes on into the new segment meanwhile). Returns it.
   */
  async roll(): Promise<Segment> {
    const oldFh = this.writeFh!;
    const old = this.writeSeg;
    await this.openWriteSegment(this.maxSeq + 1);
    await this.writeLedger(); // rule (4)
    this.fullFhs.push({ seq: old.seq, fh: oldFh });
    await this.retryDeletes();
    return old;
  }

  /** An open handle on segment `seq` (the write segment, or one waiting for its fsync), to read it back. */
  handleFor(seq: number): FileHandle | undefined {
    if (seq === this.writeSeg.seq) return this.writeFh;
    return this.fullFhs.find((f) => f.seq === seq)?.fh;
  }

  /**
   * The directory was recreated (rebuild.ts): let go of every handle on the old one and take what
   * recovery found in the new one, starting a fresh write segment there (rule (1)). seqs go on growing.
   */
  async restart(found: Recovered): Promise<void> {
    const old = [this.writeFh, ...this.fullFhs.map((f) => f.fh)];
    this.writeFh = undefined;
    this.fullFhs = [];
    for (const fh of old) await fh?.close().catch(() => {});
    await this.ledger.close().catch(() => {});
    this.ledger = found.ledger;
    this.spoolId = found.spoolId;
    this.segments.splice(0, this.segments.length, ...found.segments);
    this.maxSeq = Math.max(this.maxSeq, found.maxSeq);
    this.diskBytes = found.diskBytes;
    this.inflight = undefined;
    this.undeleted = [];
    this.segDirty = false;
    this.dirDirty = true;
    await this.start(found);
  }

  /** Forget the head segment (consumed, or dropped by the cap): the position moves to the next one. Not the file. */
  shiftHead(): Segment {
    const head = this.segments.shift()!;
    this.diskBytes -= head.size;
    this.ackPos = { seq: this.segments[0]!.seq, frame: 0, inner: 0 };
    return head;
  }

  /** Rule (2): delete a segment shiftHead() let go of — the ledger saying so first, then the file. */
  async deleteSegment(seq: number): Promise<boolean> {
    await this.writeLedger();
    this.undeleted.push(seq);
    return this.retryDeletes();
  }

  /** Delete the consumed segments not deleted yet; true if at least one file went. */
  private async retryDeletes(): Promise<boolean> {
    let freed = false;
    while (this.undeleted.length > 0) {
      const seq = this.undeleted[0]!;
      try {
        await unlinkIfExists(segmentPath(this.dir, seq));
      } catch (err) {
        this.ledgerLog.warn(
          { code: 'SK_ERR_SPOOL_WRITE', dir: this.dir, segment: seq, err: describeError(err) },
          'SK_ERR_SPOOL_WRITE: could not delete a consumed spool segment; deleted again later (and at the next start)',
        );
        return freed;
      }
      this.undeleted.shift();
      this.dirDirty = true;
      freed = true;
    }
    return freed;
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
   * Rule (3): persist the ack position and in-flight boundary to the OS (a pwrite through the thread pool, awaited;
   * fsync follows by group commit). Never throws: the in-memory state is always consistent and the next successful write carries it; until
   * then a crash can only cause re-delivery (same or new ids), never loss — better than stalling the exporter on EIO.
   */
  async writeLedger(): Promise<void> {
    try {
      await this.ledger.write(this.ledgerState());
    } catch (err) {
      this.ledgerLog.warn(
        { dir: this.dir, err: describeError(err) },
        'spool ledger write failed; a crash now may re-deliver batches',
      );
    }
  }

  /**
   * fsync what was written so far, in this order: full segments (then closed), the write segment's data, directory
   * entries, the ledger — so a synced ledger never points into data that is not. Callers serialize (group-commit.ts).
   */
  async syncDirty(): Promise<void> {
    // full segments first (closed here, never while an fsync on them could still run: syncs are serialized)
    const full = this.fullFhs;
    this.fullFhs = [];
    let error: unknown;
    for (const { fh } of full) {
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
        await this.writeFh!.sync();
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

  /** Records and bytes not yet acked on disk (from the ack position on). */
  pendingOnDisk(): { records: number; bytes: number } {
    let records = 0;
    for (const s of this.segments) records += s.records;
    const head = this.segments[0];
    const consumed = head && head.seq === this.ackPos.seq ? Math.min(this.ackPos.frame, head.size) : 0;
    return { records, bytes: this.diskBytes - consumed };
  }

  /** Close the write segment and the ledger (after a final syncDirty()). */
  async close(): Promise<void> {
    for (const { fh } of this.fullFhs) await fh.close().catch(() => {});
    this.fullFhs = [];
    await this.writeFh?.close().catch(() => {});
    await this.ledger.close().catch(() => {});
  }
}
