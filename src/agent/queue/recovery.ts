// Recovery at open: read the ledger, reconcile it with the segment files in the directory, and count what is pending.
// Returns what it found; segment-table.ts takes it from there (fresh write segment, ledger rewritten and synced).
//
// CRASH SAFETY (Vector #25570: a crash between "delete data file" and "write ledger" must never wedge us).
// The ledger is the only authority on what is consumed (segment-table.ts writes it before deleting a segment), and
// recovery never trusts a position blindly:
//   - segments with seq < ack.seq are deleted (finishes a delete that a crash interrupted: ledger written first);
//   - if the ack segment itself is missing (deleted, crash before the ledger write landed: the other order), the
//     position moves to the oldest segment that exists — those records were acked or dropped before the delete;
//   - a position past a segment's end (ledger synced, data tail lost to power loss) reads as "segment consumed"
//     (the reader moves on: reader.ts);
//   - an unreadable ledger (both slots torn) replays every segment from the start under a new spool id: duplicates,
//     never loss, logged as SK_ERR_SPOOL_CORRUPT;
//   - the scan counts the records of frames with a valid header only; torn tails, flipped bits and zeroed blocks are
//     skipped and counted by the reader when it gets there (reader.ts).
// So "delete segment" and "write ledger" may happen in either order and a crash may hit between any two steps: every
// reachable on-disk state opens, and no state makes open() fail or loop.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { describeError } from '../../errors.js';
import { unlinkIfExists } from '../../common/atomic-file.js';
import { Ledger, type LedgerState, type Pos } from './ledger.js';
import { SegmentReader, parseSegmentName, segmentPath } from './segment.js';
import { linesBefore } from './lines.js';
import { READ_CHUNK_BYTES, type Segment, type SpoolLogs } from './types.js';

export interface Recovered {
  /** Open; the caller owns it from here. */
  ledger: Ledger;
  spoolId: string;
  /** The read position: the ledger's, or the start of the oldest segment when the ledger's cannot be trusted. */
  ack: Pos;
  /** The in-flight batch boundary the ledger holds for `ack`, if it still applies. */
  persisted: LedgerState['inflight'];
  /** Above every seq the ledger or the directory knows. */
  maxSeq: number;
  /** Non-empty segments from the ack segment on, oldest first, with their records after `ack`. */
  segments: Segment[];
  diskBytes: number;
  recoveredRecords: number;
}

export async function recover(dir: string, logs: SpoolLogs): Promise<Recovered> {
  const names = await readdir(dir);
  for (const name of names) {
    // leftovers of interrupted atomic writes and lock take-overs
    if (name.endsWith('.tmp') || name.startsWith('LOCK.stale.')) await unlinkIfExists(join(dir, name));
  }
  const { ledger, state, corrupt } = await Ledger.open(join(dir, 'ledger'));
  try {
    return await reconcile(dir, logs, names, ledger, state, corrupt);
  } catch (err) {
    await ledger.close().catch(() => {});
    throw err;
  }
}

async function reconcile(
  dir: string,
  logs: SpoolLogs,
  names: string[],
  ledger: Ledger,
  state: LedgerState | undefined,
  corrupt: boolean,
): Promise<Recovered> {
  let seqs = names
    .map(parseSegmentName)
    .filter((s): s is number => s !== undefined)
    .sort((a, b) => a - b);
  if (corrupt) {
    logs.corrupt.warn(
      { code: 'SK_ERR_SPOOL_CORRUPT', dir, segments: seqs.length },
      'SK_ERR_SPOOL_CORRUPT: spool ledger unreadable; replaying every segment from the start (duplicates possible)',
    );
  }
  const spoolId = state?.spoolId ?? randomBytes(8).toString('hex');
  let ack: Pos = state ? { ...state.ack } : { seq: seqs[0] ?? 0, frame: 0, inner: 0 };
  let persisted = state?.inflight;

  // Segments before the ack segment were fully acked or dropped; a crash interrupted their deletion.
  for (const seq of seqs) {
    if (seq < ack.seq) await unlinkIfExists(segmentPath(dir, seq));
  }
  seqs = seqs.filter((s) => s >= ack.seq);
  // Empty segments (an idle run's write segment) hold nothing: remove them rather than collect one per restart.
  const sizes = new Map<number, number>();
  for (const seq of seqs) {
    const size = (await stat(segmentPath(dir, seq))).size;
    if (size === 0) await unlinkIfExists(segmentPath(dir, seq));
    else sizes.set(seq, size);
  }
  seqs = seqs.filter((s) => sizes.has(s));
  if (seqs[0] !== ack.seq) {
    // The ack segment is gone (deleted before the ledger write that moved past it landed): start at the oldest
    // segment that exists. Its records come after everything acked, so nothing is skipped.
    ack = { seq: seqs[0] ?? ack.seq, frame: 0, inner: 0 };
    persisted = undefined;
  }
  const maxSeq = Math.max(state?.maxSeq ?? 0, ack.seq, seqs[seqs.length - 1] ?? 0);

  const segments: Segment[] = [];
  let diskBytes = 0;
  let recoveredRecords = 0;
  for (const seq of seqs) {
    const size = sizes.get(seq)!;
    const records = await scanRecords(dir, logs, seq, size, seq === ack.seq ? ack : undefined);
    segments.push({ seq, size, records });
    diskBytes += size;
    recoveredRecords += records;
  }
  return { ledger, spoolId, ack, persisted, maxSeq, segments, diskBytes, recoveredRecords };
}

/** Records in valid frames of a closed segment, from `from` (the ack position) when given. Headers only. */
async function scanRecords(
  dir: string,
  logs: SpoolLogs,
  seq: number,
  size: number,
  from: Pos | undefined,
): Promise<number> {
  let reader: SegmentReader;
  try {
    reader = await SegmentReader.open(dir, seq, READ_CHUNK_BYTES);
  } catch (err) {
    logs.log.warn({ seq, err: describeError(err) }, 'cannot open spool segment for scanning');
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
