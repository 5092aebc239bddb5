// Shapes shared by the spool's parts. spool.ts is the facade (its header maps the parts); the public types are
// re-exported from there.
import type { Logger, RateLimitedLog } from '../../log/logger.js';
import type { Pos } from './ledger.js';

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
  /** Cap on appended data not yet written to the OS (only reached when the disk is full, failing or slow); past it
   *  the oldest unwritten frames are dropped, counted as diskFullDroppedRecords. Default 64 MiB. */
  maxBufferedBytes?: number;
}

/** Append times of a spool batch: frame k's records start at batch index starts[k] and were appended at times[k]. */
export interface AcceptedTimes {
  starts: number[];
  times: number[];
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
  /** The same per frame of the batch (absent for a batch salvaged without its frames). */
  acceptedAt?: AcceptedTimes;
}

export interface SpoolStats {
  /** Records not yet acked: on disk, in the write buffer, or in flight. */
  pendingRecords: number;
  /** Bytes not yet acked, frame headers included (on disk from the ack position, plus unwritten). */
  pendingBytes: number;
  segments: number;
  appendedRecords: number;
  ackedRecords: number;
  /** Dropped, never silently: by the size cap (maxBytes), or because they could not be written (diskFullDroppedRecords,
   *  a part of this number). */
  droppedRecords: number;
  /** Drop events: a segment deleted by the cap, a released batch whose segment had been dropped, an unwritten frame,
   *  the unwritten rest at close. */
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
  /** Of droppedRecords: accepted records the spool could not write (the disk full or failing): dropped past
   *  maxBufferedBytes, or still unwritten at close. Metrics: dropped{reason="disk_full"} (the rest is spool_full). */
  diskFullDroppedRecords: number;
  /** The last write failed with ENOSPC/EDQUOT and none has succeeded since (the spool is reclaiming and retrying). */
  diskFull: boolean;
  /** The last write's error while none has succeeded since (read-only, inaccessible, full), else undefined. */
  writeError: string | undefined;
  /** How long the write or fsync in progress has been waiting for the filesystem, in ms (0: none is). */
  stalledMs: number;
  /** Of droppedRecords: records in segment files removed with the spool directory that could not be read back
   *  through an open file. Metrics: dropped{reason="spool_removed"}. */
  removedDroppedRecords: number;
  /** Records read back through open files after the directory was removed, and written into the recreated one. */
  salvagedRecords: number;
  /** Times the spool directory was found removed or replaced and recreated. */
  dirLost: number;
  /** Failed write attempts (each is retried; data is only lost past maxBufferedBytes or at close). */
  writeErrors: number;
}
// Balance, per process: recoveredRecords + appendedRecords = ackedRecords + pendingRecords + droppedRecords
// + corruptRecords.

/** The counters of SpoolStats that are events (the rest is state). One object, bumped by the part that saw the event. */
const COUNTER_KEYS = [
  'appendedRecords',
  'ackedRecords',
  'droppedRecords',
  'droppedBatches',
  'corruptFrames',
  'corruptBytes',
  'corruptRecords',
  'recoveredRecords',
  'diskFullDroppedRecords',
  'writeErrors',
  'removedDroppedRecords',
  'salvagedRecords',
  'dirLost',
] as const;

export type SpoolCounters = Pick<SpoolStats, (typeof COUNTER_KEYS)[number]>;

export function newCounters(): SpoolCounters {
  return Object.fromEntries(COUNTER_KEYS.map((k) => [k, 0])) as SpoolCounters;
}

/** The spool's loggers. The rate-limited ones are shared by the parts, so one limit holds per kind of message. */
export interface SpoolLogs {
  log: Logger;
  /** SK_ERR_SPOOL_FULL: drops by the size cap or the unwritten-buffer cap. */
  full: RateLimitedLog;
  /** SK_ERR_SPOOL_CORRUPT: skipped regions, an unreadable ledger. */
  corrupt: RateLimitedLog;
  /** Failed ledger writes. */
  ledger: RateLimitedLog;
  /** SK_ERR_SPOOL_WRITE: failed segment writes and rolls while the disk is full (retried, so possibly many). */
  write: RateLimitedLog;
}

export interface Segment {
  seq: number;
  /** Bytes written (for the write segment: completed writes only; the reader never looks past this). */
  size: number;
  /** Records after the ack position (whole segment unless it is the head). */
  records: number;
  /**
   * The file's identity, taken when this process created it: after the directory was replaced, a file of this name in
   * the new one is this segment only if it has the same device and inode (rebuild.ts). Unknown for recovered segments.
   */
  file?: { dev: number; ino: number };
}

/** The batch in flight: cut, and persisted in the ledger (its boundary) before it is handed out. */
export interface Inflight {
  id: string;
  seq: number;
  start: Pos;
  end: Pos;
  records: number;
  bytes: number;
  firstAppendedAt: number;
  acceptedAt?: AcceptedTimes;
  /** Undefined for a boundary recovered from the ledger until it is read back. */
  payload: Buffer | undefined;
  handedOut: boolean;
}

/** Segment reads (recovery scan and batch cutting) go through a chunk buffer of this size. */
export const READ_CHUNK_BYTES = 1024 * 1024;
