// Reading records back through open files after the spool directory was removed (rebuild.ts). An unlinked
// file stays readable while a handle on it is open: the write segment and the segments waiting for their fsync
// (segment-table.ts keeps those read-write), and the segment the reader has open. Their records from the read
// position on are re-framed and written into the recreated directory ahead of everything still unwritten, so FIFO
// order holds. A frame that fails its checksum is not salvaged (the caller counts what was not read back).
import { countLines } from './lines.js';
import type { Pos } from './ledger.js';
import { FRAME_HEADER_BYTES, sealFrame, type SegmentReader } from './segment.js';

export interface SalvagedFrame {
  frame: Buffer;
  records: number;
}

/** Frames of one segment from `from` (a read position) to `limit` (its written size), as new sealed frames. */
export async function salvageSegment(reader: SegmentReader, from: Pos, limit: number): Promise<SalvagedFrame[]> {
  const out: SalvagedFrame[] = [];
  let off = from.frame;
  let inner = from.inner;
  for (;;) {
    const r = await reader.read(off, limit, true);
    if (r.kind === 'end') break;
    if (r.kind === 'frame' && r.crcOk && r.payload) {
      const lines = r.payload.subarray(Math.min(inner, r.payload.length));
      const records = countLines(lines);
      if (records > 0) {
        const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + lines.length);
        lines.copy(frame, FRAME_HEADER_BYTES);
        sealFrame(frame, records, r.header.firstAppendedAt);
        out.push({ frame, records });
      }
    }
    off = r.end;
    inner = 0;
  }
  return out;
}
