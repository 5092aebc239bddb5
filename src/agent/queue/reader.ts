// The spool's reader: cuts batches from the ack position on (never across a segment end), hands out one at a time,
// and on ack moves the position and deletes fully consumed segments; on release the same batch comes back. It also
// enforces the size cap (maxBytes: the oldest segments go first, counted as dropped). Reader-side operations run one
// at a time (exclusive()).
//
// CRASH SAFETY, the rules enforced here:
// - A batch's boundary is in the ledger before nextBatch() returns it (the table's rule (3)), so after a restart the
//   same range comes back under the same id; a recovered boundary is re-read and checked against its id (reload()),
//   and forgotten (re-cut under a new id) if the bytes no longer give the same batch.
// - Corruption never stalls or loops: torn tails, flipped bits and zeroed blocks fail the header or payload CRC; the
//   reader skips to the next valid header (resync), counts corruptFrames/corruptBytes (and the records a bad payload
//   held), logs SK_ERR_SPOOL_CORRUPT (rate limited), moves on. A segment file deleted by hand is counted the same way.
//   Other open errors (EMFILE, EIO) may be transient: they are thrown, the exporter retries, the data stays.
// - A position past a segment's end (data tail lost to power loss) reads as "segment consumed".
// - Records a segment's headers promised but the reader could not find are counted as corrupt at the segment's end.
// Spool directory removed (rebuild.ts has the rule): a segment file missing while the directory is not the one the
// spool opened is not corruption: the open fails (the exporter retries) until the spool has recreated the directory.
// The batch in flight at that moment stays in memory (kept) and is handed out again under its id until acked.
// Disk full (writer.ts has the rule): every deletion tells the writer space was freed, and under space pressure an
// ack that consumes the whole write segment asks the writer to roll it, so that it can be deleted too.
import { SidekickError, describeError } from '../../errors.js';
import type { GroupCommit } from './group-commit.js';
import type { Pos } from './ledger.js';
import type { SegmentTable } from './segment-table.js';
import { SegmentReader } from './segment.js';
import { collectLines, linesBefore } from './lines.js';
import {
  READ_CHUNK_BYTES,
  type Inflight,
  type Segment,
  type SpoolBatch,
  type SpoolCounters,
  type SpoolLogs,
} from './types.js';

/** What the reader needs from the writer: catching up with it, and freeing space while the disk is full. */
export interface CatchUp {
  hasUnwritten(): boolean;
  /** Write the buffered data now: true if that write succeeded (false at once while writes are failing). */
  writeNow(): Promise<boolean>;
  /** A write failed for lack of space since the write segment was last reclaimed. */
  underSpacePressure(): Promise<boolean>;
  /** Roll the (fully acked) write segment so it can be deleted. */
  reclaim(): void;
  /** A segment file was deleted: retry a write that failed for lack of space now. */
  spaceFreed(): void;
}

export class SpoolReader {
  private reader: SegmentReader | undefined;
  private mutex: Promise<void> = Promise.resolve();
  /**
   * A batch whose segment is gone. Deleted by the cap while handed out: it can still be acked (a release drops it).
   * Kept when the directory was removed (`kept`): handed out again after a release, under the same id, until acked.
   */
  private orphan: (Inflight & { kept?: boolean }) | undefined;
  private capScheduled = false;
  private stopped = false;

  constructor(
    private readonly table: SegmentTable,
    private readonly writer: CatchUp,
    private readonly commit: GroupCommit,
    private readonly maxBytes: number,
    private readonly counters: SpoolCounters,
    private readonly logs: SpoolLogs,
    /** The spool directory is still the one the spool opened (dir-guard.ts). */
    private readonly dirIntact: () => Promise<boolean>,
  ) {}

  /** Records of a batch handed out whose segment the cap dropped (still pending: its ack counts). */
  get orphanRecords(): number {
    return this.orphan?.records ?? 0;
  }

  /** Run reader-side operations one at a time (nextBatch, ack, segment deletion, cap enforcement, close). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.mutex.then(fn);
    this.mutex = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /** See Spool.nextBatch. */
  nextBatch(maxRecords: number, maxBytes: number): Promise<SpoolBatch | undefined> {
    return this.exclusive(async () => {
      this.assertOpen();
      const t = this.table;
      const o = this.orphan;
      if (o?.kept && !o.handedOut) {
        o.handedOut = true;
        return toBatch(o);
      }
      if (o || t.inflight?.handedOut) {
        throw new SidekickError(
          'SK_ERR_SPOOL_BUSY',
          `batch ${(this.orphan ?? t.inflight)!.id} is still in flight; ack or release it first`,
          { dir: t.dir },
        );
      }
      const f = t.inflight;
      if (f) {
        if (!f.payload) await this.reload(f);
        if (t.inflight === f && f.records <= maxRecords && f.bytes <= maxBytes) {
          f.handedOut = true;
          return toBatch(f);
        }
        t.inflight = undefined; // re-cut with the smaller limits
      }
      const cut = await this.cut(maxRecords, maxBytes);
      if (!cut) {
        if (f) await t.writeLedger(); // forget the old boundary
        return undefined;
      }
      cut.handedOut = true;
      t.inflight = cut;
      await t.writeLedger(); // the boundary is durable (vs. a process kill) before the batch leaves
      return toBatch(cut);
    });
  }

  /** See Spool.ack. */
  ack(id: string): Promise<void> {
    return this.exclusive(async () => {
      this.assertOpen();
      const t = this.table;
      if (this.orphan?.id === id) {
        this.counters.ackedRecords += this.orphan.records;
        this.orphan = undefined;
        return;
      }
      const f = t.inflight;
      if (!f || f.id !== id) {
        this.logs.log.warn({ dir: t.dir, id }, 'spool ack for a batch that is not in flight; ignored');
        return;
      }
      t.inflight = undefined;
      const seg = t.head;
      seg.records = Math.max(0, seg.records - f.records);
      this.counters.ackedRecords += f.records;
      t.ackPos = { ...f.end };
      if (seg !== t.writeSeg && t.ackPos.frame >= seg.size) await this.advanceHead();
      else {
        await t.writeLedger();
        // Disk full: a write segment is only deleted once rolled; roll it now rather than at segmentBytes.
        if (
          seg === t.writeSeg &&
          seg.size > 0 &&
          t.ackPos.frame >= seg.size &&
          (await this.writer.underSpacePressure())
        ) {
          this.writer.reclaim();
        }
      }
    });
  }

  /** See Spool.release. */
  release(id: string): void {
    const t = this.table;
    if (this.orphan?.kept && this.orphan.id === id) {
      this.orphan.handedOut = false; // in memory: comes back first
      return;
    }
    if (this.orphan?.id === id) {
      // its segment was dropped by the size cap meanwhile: it is the oldest data, so it goes too
      this.counters.droppedRecords += this.orphan.records;
      this.counters.droppedBatches++;
      this.logs.full.warn(
        { code: 'SK_ERR_SPOOL_FULL', dir: t.dir, droppedRecords: this.orphan.records, batch: id },
        'SK_ERR_SPOOL_FULL: a released batch belonged to a segment dropped by the size cap; dropped',
      );
      this.orphan = undefined;
      return;
    }
    if (t.inflight?.id === id) {
      t.inflight.handedOut = false;
      return;
    }
    this.logs.log.warn({ dir: t.dir, id }, 'spool release for a batch that is not in flight; ignored');
  }

  /** Reader calls queued before close() still run (an ack right before shutdown counts); after it, they throw. */
  private assertOpen(): void {
    if (this.stopped) throw new SidekickError('SK_ERR_STOPPED', 'the spool is closed', { dir: this.table.dir });
  }

  private async readerFor(seq: number): Promise<SegmentReader> {
    if (this.reader?.seq === seq) return this.reader;
    await this.closeReader();
    this.reader = await SegmentReader.open(this.table.dir, seq, READ_CHUNK_BYTES);
    return this.reader;
  }

  private async closeReader(): Promise<void> {
    const r = this.reader;
    this.reader = undefined;
    await r?.close().catch(() => {});
  }

  /** Read back a boundary recovered from the ledger; if the bytes no longer give the same batch, forget it. */
  private async reload(f: Inflight): Promise<void> {
    const t = this.table;
    const again = await this.cut(Number.MAX_SAFE_INTEGER, Number.POSITIVE_INFINITY, f.end);
    if (again && again.id === f.id && t.ackPos.frame === f.start.frame && t.ackPos.inner === f.start.inner) {
      f.payload = again.payload;
      f.bytes = again.bytes;
      f.acceptedAt = again.acceptedAt;
      return;
    }
    this.logs.log.warn(
      { dir: t.dir, id: f.id },
      'spool could not re-read the batch in flight before restart; re-cutting',
    );
    t.inflight = undefined;
  }

  /**
   * Cut a batch starting at the ack position, skipping (and counting) corrupt regions at its start. With `stopAt`,
   * reproduce exactly the range ending there (or return undefined / a different range, which the caller rejects).
   */
  private async cut(maxRecords: number, maxBytes: number, stopAt?: Pos): Promise<Inflight | undefined> {
    const t = this.table;
    for (;;) {
      const seg = t.head;
      const limit = seg.size;
      if (t.ackPos.frame >= limit) {
        if (seg !== t.writeSeg) {
          if (stopAt) return undefined;
          await this.advanceHead();
          continue;
        }
        if (!stopAt && this.writer.hasUnwritten()) {
          // the reader caught up with the writer: push the buffer to the OS now rather than wait for the timer
          if (await this.writer.writeNow()) continue;
        }
        return undefined;
      }
      let reader: SegmentReader;
      try {
        reader = await this.readerFor(seg.seq);
      } catch (err) {
        // Only a missing file is skipped (deleted by hand: counted, never a stall). Anything else (EMFILE, EIO) may
        // be transient: throw, the exporter retries, the data stays.
        if (seg === t.writeSeg || stopAt || (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        if (!(await this.dirIntact())) throw err; // the directory is gone: rebuilt by the spool, not corruption
        this.countCorrupt(seg.seq, t.ackPos.frame, limit - t.ackPos.frame, seg.records, 'segment file missing');
        seg.records = 0;
        t.ackPos = { seq: seg.seq, frame: limit, inner: 0 };
        continue;
      }
      const r = await reader.read(t.ackPos.frame, limit, true);
      if (r.kind === 'end') return undefined; // not reached: ack.frame < limit
      if (r.kind === 'garbage') {
        this.countCorrupt(seg.seq, r.off, r.end - r.off, 0, 'no valid frame (torn write or damaged bytes)');
        t.ackPos = { seq: seg.seq, frame: r.end, inner: 0 };
        if (stopAt) return undefined;
        continue;
      }
      if (!r.crcOk) {
        const lost = Math.min(seg.records, r.header.records - linesBefore(r.payload, t.ackPos.inner));
        this.countCorrupt(seg.seq, r.off, r.end - r.off, lost, 'payload checksum mismatch');
        seg.records -= Math.max(0, lost);
        t.ackPos = { seq: seg.seq, frame: r.end, inner: 0 };
        if (stopAt) return undefined;
        continue;
      }
      const got = await collectLines(seg.seq, reader, r, t.ackPos, limit, maxRecords, maxBytes, stopAt);
      if (got.records === 0) {
        if (stopAt) return undefined;
        t.ackPos = got.end; // a position at the very end of a frame: nothing to cut here
        continue;
      }
      return {
        id: t.batchId(t.ackPos, got.end, got.records, r.header.firstAppendedAt),
        seq: seg.seq,
        start: { ...t.ackPos },
        end: got.end,
        records: got.records,
        bytes: got.payload.length,
        firstAppendedAt: r.header.firstAppendedAt,
        acceptedAt: got.acceptedAt,
        payload: got.payload,
        handedOut: false,
      };
    }
  }

  private countCorrupt(seq: number, offset: number, bytes: number, records: number, why: string): void {
    this.counters.corruptFrames++;
    this.counters.corruptBytes += bytes;
    this.counters.corruptRecords += Math.max(0, records);
    this.logs.corrupt.warn(
      { code: 'SK_ERR_SPOOL_CORRUPT', dir: this.table.dir, segment: seq, offset, bytes, records, why },
      `SK_ERR_SPOOL_CORRUPT: skipped ${bytes} corrupt bytes in spool segment ${seq} at offset ${offset} (${why})`,
    );
  }

  /** The head segment is fully consumed and closed: move the ack position to the next one, then delete it. */
  private async advanceHead(): Promise<void> {
    const t = this.table;
    const head = t.head;
    if (head === t.writeSeg) return;
    if (head.records > 0) {
      // headers promised records the reader could not find (bytes changed under us): count, never stall
      this.countCorrupt(head.seq, t.ackPos.frame, 0, head.records, 'records missing at segment end');
    }
    await this.removeHead();
  }

  private async removeHead(): Promise<Segment> {
    const head = this.table.shiftHead();
    if (this.reader?.seq === head.seq) await this.closeReader();
    await this.table.deleteSegment(head.seq);
    this.commit.schedule();
    this.writer.spaceFreed();
    return head;
  }

  /** The writer rolled: a fully acked head that was the write segment can go now. */
  rolled(old: Segment): void {
    if (this.table.head === old) void this.exclusive(() => this.advanceIfConsumed()).catch(() => {});
  }

  private async advanceIfConsumed(): Promise<void> {
    if (this.stopped) return;
    const t = this.table;
    const head = t.head;
    if (head !== t.writeSeg && !t.inflight && !this.orphan && t.ackPos.frame >= head.size) {
      await this.advanceHead();
    }
  }

  /** Enforce maxBytes soon, after the reader operations already queued. */
  scheduleCap(): void {
    if (this.capScheduled || this.stopped) return;
    this.capScheduled = true;
    void this.exclusive(async () => {
      this.capScheduled = false;
      if (!this.stopped) await this.enforceCap();
    }).catch((err: unknown) =>
      this.logs.log.error({ dir: this.table.dir, err: describeError(err) }, 'spool cap enforcement failed'),
    );
  }

  /** Past maxBytes: delete the oldest closed segments (the oldest unacked data), counted as dropped. */
  private async enforceCap(): Promise<void> {
    const t = this.table;
    while (t.diskBytes > this.maxBytes && t.segments.length > 1) {
      const head = t.head;
      let lost = head.records;
      const f = t.inflight;
      if (f && f.seq === head.seq) {
        t.inflight = undefined;
        if (f.handedOut) {
          this.orphan = f; // being delivered right now: its ack still counts; a release drops it
          lost -= f.records;
        }
      }
      lost = Math.max(0, lost);
      this.counters.droppedRecords += lost;
      this.counters.droppedBatches++;
      await this.removeHead();
      this.logs.full.warn(
        { code: 'SK_ERR_SPOOL_FULL', dir: t.dir, segment: head.seq, droppedRecords: lost, maxBytes: this.maxBytes },
        `SK_ERR_SPOOL_FULL: spool over maxBytes (${this.maxBytes}); dropped its oldest segment (${lost} records)`,
      );
    }
  }

  /**
   * The directory is gone (rebuild, inside exclusive()): the batch in flight, if its payload is in memory, is kept
   * there; returns it. Any recovered boundary is forgotten (its records are read back from the read position).
   */
  keepInflight(): Inflight | undefined {
    const f = this.table.inflight;
    this.table.inflight = undefined;
    if (!f?.payload) return undefined;
    this.orphan = { ...f, kept: true };
    return f;
  }

  /** The open reader of segment `seq`, if any (its file can be read back after an unlink). */
  openReader(seq: number): SegmentReader | undefined {
    return this.reader?.seq === seq ? this.reader : undefined;
  }

  /** Let go of the open segment file (rebuild, after reading it back). */
  forgetSegments(): Promise<void> {
    return this.closeReader();
  }

  /** At close: a kept batch not acked yet, handed back (the spool writes it into the spool), or undefined. */
  takeKept(): Inflight | undefined {
    const o = this.orphan;
    if (!o?.kept) return undefined;
    this.orphan = undefined;
    return o;
  }

  /** Close (inside exclusive()): later reader calls throw SK_ERR_STOPPED. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.closeReader();
  }
}

function toBatch(f: Inflight): SpoolBatch {
  return {
    id: f.id,
    records: f.records,
    bytes: f.bytes,
    payload: f.payload!,
    firstAppendedAt: f.firstAppendedAt,
    acceptedAt: f.acceptedAt,
  };
}
