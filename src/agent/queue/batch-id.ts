// Batch ids are `<spool id>-<seq>-<start>-<end>-<records>-<first frame's append time>`: a pure function of the
// spool's identity, the exact record range and data read back from disk. The same range always gets the same id
// (after release, after a restart: central dedupes), and a different range never does (a re-cut after a 413, or a
// range re-cut after the ledger was lost, gets a new id, so central never drops new records as duplicates; at worst
// it sees some records twice). The spool id is random, kept in the ledger; a lost ledger gets a new one, so seqs
// restarting from 1 cannot collide with ids already delivered; the append time (from the CRC-checked frame header)
// covers the last corner: a seq reused after power loss took the newest ledger slot with it.
import type { Pos } from './ledger.js';

export function batchId(spoolId: string, start: Pos, end: Pos, records: number, firstAppendedAt: number): string {
  const b = (n: number): string => Math.round(n).toString(36);
  return `${spoolId}-${b(start.seq)}-${b(start.frame)}.${b(start.inner)}-${b(end.frame)}.${b(end.inner)}-${b(records)}-${b(firstAppendedAt)}`;
}
