// Recreating the spool directory after it was removed or replaced while running (dir-guard.ts detects it within a
// second, or at once on ENOENT; spool.ts calls rebuildDir(), and at close writes a kept batch back). The spool never
// goes on writing into unlinked files (that lost everything silently at the next start) and never wedges. THE RULE: it
// recreates the directory (mkdir, LOCK, ledger via recovery, a fresh write segment) inside the reader's exclusive
// section with the writer paused from before the mkdir (a roll opens its segment by path: it must never land in the new
// directory mid-rebuild), and carries on; logged SK_ERR_SPOOL_REMOVED (error). Records that were on disk: the batch in
// flight stays in memory and is handed out again under its id until acked (written into the spool at close if still not
// acked); the records from the read position on that can be read back through an open file (the write segment, segments
// waiting for their fsync, the segment the reader has open: salvage.ts), or through the segment's own file in the new
// directory (the writer rolled into a directory recreated by someone else before the check noticed; same device and
// inode as the file it created), are written into the new directory ahead of the unwritten ones, and such files are
// removed before recovery, so no record is both read back and recovered (that was the same record under two batch ids);
// the rest (closed segments no file is open on) is counted removedDroppedRecords (part of droppedRecords;
// dropped{reason="spool_removed"}), exactly: the table knew how many records each held. Unwritten records are
// untouched. Dead letters and side files in the old directory are gone (dead letters were counted when written). If the
// directory cannot be recreated (parent gone, locked by another agent), that is logged and retried with the next check;
// records wait in the bounded write buffer. At close, a directory still lost is recreated first, so the final flush
// never lands in an unlinked file.
import { mkdir, stat } from 'node:fs/promises';
import { unlinkIfExists } from '../../common/atomic-file.js';
import { describeError } from '../../errors.js';
import { dirIdentity, type DirGuard } from './dir-guard.js';
import type { GroupCommit } from './group-commit.js';
import type { Pos } from './ledger.js';
import { SpoolLock } from './lock.js';
import type { SpoolReader } from './reader.js';
import { recover, type Recovered } from './recovery.js';
import { salvageSegment, type SalvagedFrame } from './salvage.js';
import { SegmentReader, segmentPath } from './segment.js';
import type { SegmentTable } from './segment-table.js';
import type { Segment, SpoolCounters, SpoolLogs } from './types.js';
import type { SpoolWriter } from './writer.js';

/** The parts of the spool a rebuild works on. */
export interface RebuildParts {
  dir: string;
  logs: SpoolLogs;
  guard: DirGuard;
  table: SegmentTable;
  reader: SpoolReader;
  writer: SpoolWriter;
  commit: GroupCommit;
  counters: SpoolCounters;
}

/**
 * The directory is gone or replaced: recreate it and carry on (the rule is in the header). Runs inside the reader's
 * exclusive section. `lock` is the spool's lock; returns the lock to hold from now on (the same one if the directory
 * already is the spool's: a late duplicate). Throws if the directory could not be recreated (see rebuildFailed).
 */
export async function rebuildDir(p: RebuildParts, lock: SpoolLock): Promise<SpoolLock> {
  const { dir, logs, guard, table: t, reader, writer, commit, counters: c } = p;
  const before = await dirIdentity(dir);
  if (before && guard.is(before)) return lock; // a late duplicate: already rebuilt
  // The writer first: a roll opens seg-<n> by path, so once the new directory exists a roll would put a segment of
  // the table into it, which recovery would then find while the read-back below reads the same records through the
  // open file: delivered twice, under two batch ids.
  await writer.pause();
  let rebuilt = false;
  try {
    await commit.idle();
    // The new directory next: nothing of the old state changes unless the spool can live there.
    await mkdir(dir, { recursive: true });
    const identity = await dirIdentity(dir);
    if (!identity) throw new Error(`${dir} is not a directory`);
    lock.forget();
    const next = await SpoolLock.acquire(dir, logs.log);
    let found: Recovered;
    let frames: SalvagedFrame[];
    let unread: number;
    const pendingOnDisk = t.pendingOnDisk().records;
    const inflight = t.inflight?.payload ? t.inflight : undefined; // kept in memory (keepInflight below)
    try {
      ({ frames, unread } = await readBack(p, inflight ? inflight.end : t.ackPos));
      // Segment files of the table in the new directory (the writer rolled into it before the check noticed it was
      // replaced) were read back above: they go, so that recovery does not find the same records again.
      for (const seg of t.segments) if (await isHere(dir, seg)) await unlinkIfExists(segmentPath(dir, seg.seq));
      found = await recover(dir, logs);
    } catch (err) {
      await next.release().catch(() => {});
      throw err;
    }
    const kept = reader.keepInflight();
    let salvaged = 0;
    for (const f of frames) salvaged += f.records;
    const lost = Math.max(0, pendingOnDisk - (kept?.records ?? 0) - salvaged);
    await reader.forgetSegments();
    await t.restart(found);
    guard.adopt(identity);
    c.dirLost++;
    c.salvagedRecords += salvaged;
    c.recoveredRecords += found.recoveredRecords;
    if (lost > 0) {
      c.droppedRecords += lost;
      c.removedDroppedRecords += lost;
      c.droppedBatches++;
    }
    writer.prepend(frames);
    commit.retrySoon();
    logs.log.error(
      {
        code: 'SK_ERR_SPOOL_REMOVED',
        dir,
        keptRecords: kept?.records ?? 0,
        salvagedRecords: salvaged,
        droppedRecords: lost,
        segmentsNotReadBack: unread,
        foundRecords: found.recoveredRecords,
        removedDroppedRecords: c.removedDroppedRecords,
      },
      `SK_ERR_SPOOL_REMOVED: the spool directory was removed or replaced while running; recreated it and carried on (${salvaged} records read back through open files, ${kept?.records ?? 0} in flight kept in memory, ${lost} lost with the removed files, counted spool_removed)`,
    );
    rebuilt = true;
    return next;
  } finally {
    writer.resume(rebuilt);
  }
}

/**
 * The table's records from `from` (the read position, or the end of the batch kept in memory) on, as new frames: each
 * segment through a file the spool still has open on it, else through a file of its name in the new directory (the
 * writer rolled into it before the check); `unread` counts the segments neither way reached.
 */
async function readBack(p: RebuildParts, from: Pos): Promise<{ frames: SalvagedFrame[]; unread: number }> {
  const { dir, logs, table: t, reader } = p;
  const frames: SalvagedFrame[] = [];
  let unread = 0;
  for (const seg of t.segments) {
    const start = seg === t.head ? from : { seq: seg.seq, frame: 0, inner: 0 };
    const open = reader.openReader(seg.seq);
    const fh = open ? undefined : t.handleFor(seg.seq);
    let r = open ?? (fh ? SegmentReader.borrow(seg.seq, fh) : undefined);
    // No open file: the segment itself in the new directory, if the writer created it there (a same-name file that
    // is not it, e.g. of a spool on a filesystem mounted over the directory, is never read or removed as ours).
    if (!r && (await isHere(dir, seg))) r = await SegmentReader.open(dir, seg.seq);
    if (!r) {
      unread++;
      continue;
    }
    try {
      frames.push(...(await salvageSegment(r, start, seg.size)));
    } catch (err) {
      unread++;
      logs.log.warn({ dir, segment: seg.seq, err: describeError(err) }, 'could not read back a removed segment');
    } finally {
      if (!open) await r.close();
    }
  }
  return { frames, unread };
}

/** The file of `seg`'s name in `dir` is that segment (the file this process created for it). */
async function isHere(dir: string, seg: Segment): Promise<boolean> {
  if (!seg.file) return false;
  try {
    const st = await stat(segmentPath(dir, seg.seq));
    return st.dev === seg.file.dev && st.ino === seg.file.ino;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err; // EACCES, EIO: the rebuild fails and is tried again
  }
}

/** Recreating the directory failed: logged; the next check tries again. */
export function rebuildFailed(logs: SpoolLogs, dir: string, err: unknown): void {
  logs.write.warn(
    { code: 'SK_ERR_SPOOL_REMOVED', dir, err: describeError(err) },
    'SK_ERR_SPOOL_REMOVED: the spool directory is gone and could not be recreated; records wait in the bounded write buffer, retried in a second',
  );
}
