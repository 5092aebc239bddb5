// NDJSON line arithmetic over frame payloads: counting lines, and collecting whole lines from consecutive frames of
// one segment into a batch within record and byte limits.
import type { Pos } from './ledger.js';
import type { FrameRead, SegmentReader } from './segment.js';
import type { AcceptedTimes } from './types.js';

export type GoodFrame = Extract<FrameRead, { kind: 'frame' }>;

export function countLines(b: Buffer, end = b.length): number {
  let n = 0;
  let i = b.indexOf(10);
  while (i >= 0 && i < end) {
    n++;
    i = b.indexOf(10, i + 1);
  }
  return n;
}

/** Lines of `payload` before byte offset `inner` (a position inside a frame). */
export function linesBefore(payload: Buffer | undefined, inner: number): number {
  if (!payload || inner <= 0) return 0;
  return countLines(payload, Math.min(inner, payload.length));
}

/**
 * Lines from `from` (inside `first`, a valid frame) onwards, frame after frame of segment `seq` below `limit`: at most
 * `maxRecords` lines and `maxBytes` bytes, at least one line. With `stopAt`, exactly the lines up to that position
 * (the limits are ignored). Stops before a frame that is missing or fails its checksum. The payload is a copy.
 */
export async function collectLines(
  seq: number,
  reader: SegmentReader,
  first: GoodFrame,
  from: Pos,
  limit: number,
  maxRecords: number,
  maxBytes: number,
  stopAt: Pos | undefined,
): Promise<{ records: number; payload: Buffer; end: Pos; acceptedAt: AcceptedTimes }> {
  const parts: Buffer[] = [];
  // per frame read: the batch index of its first record and its append time (OTLP's observed time)
  const acceptedAt: AcceptedTimes = { starts: [], times: [] };
  let records = 0;
  let bytes = 0;
  let r = first;
  let inner = from.inner;
  let end: Pos | undefined;
  for (;;) {
    const p = r.payload!;
    let bound = p.length;
    if (stopAt) {
      if (r.off > stopAt.frame) break;
      if (r.off === stopAt.frame) bound = Math.min(bound, stopAt.inner);
    }
    let pos = Math.min(inner, p.length);
    const start = pos;
    acceptedAt.starts.push(records);
    acceptedAt.times.push(r.header.firstAppendedAt);
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
    if (pos > start) parts.push(Buffer.from(p.subarray(start, pos))); // copy: the reader's chunk buffer is reused
    if (pos < p.length) {
      end = { seq, frame: r.off, inner: pos };
      return { records, payload: concat(parts, bytes), end, acceptedAt };
    }
    end = { seq, frame: r.end, inner: 0 };
    if (full || (!stopAt && (records >= maxRecords || bytes >= maxBytes))) break;
    if (stopAt && r.end >= stopAt.frame && stopAt.inner === 0) break;
    const next = await reader.read(r.end, limit, true);
    if (next.kind !== 'frame' || !next.crcOk) break; // end of data, or corruption: the batch ends before it
    r = next;
    inner = 0;
  }
  return { records, payload: concat(parts, bytes), end: end ?? { ...from }, acceptedAt };
}

function concat(parts: Buffer[], bytes: number): Buffer {
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes);
}
