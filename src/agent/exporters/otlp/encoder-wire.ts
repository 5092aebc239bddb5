// The encoder thread's messages, each one ArrayBuffer moved (transferred) whole: a part in, its encoded bodies out.
// Posting an object costs the event loop ~2× a lone ArrayBuffer (V8's serializer walks every property, array and
// string; measured 20–25 against 10–13 µs per round trip with 4 in flight), and these go back and forth once per part.
//
// part:    f64 [id, records, firstIndex, firstAcceptedAt (NaN: none), frames (-1: no acceptedAt), batchId bytes]
//          f64 starts[frames], f64 times[frames], batchId (latin1: ASCII by construction, queue/batch-id.ts), payload
// encoded: f64 [id, logCount, spanCount, truncated, flattened, logs bytes (-1: none), traces bytes (-1: none),
//          records, unmappable lines], f64 line lengths[lines], logs, traces, primary (1 byte per record), lines
import type { EncodedPart, PartInput } from './encode-part.js';

const PART_HEAD = 6;
const ENCODED_HEAD = 9;

export function packPart(id: number, p: PartInput): ArrayBuffer {
  const frames = p.acceptedAt ? p.acceptedAt.starts.length : -1;
  const nums = PART_HEAD + 2 * Math.max(0, frames);
  const idLen = p.batchId.length;
  const ab = new ArrayBuffer(nums * 8 + idLen + p.payload.byteLength);
  const f = new Float64Array(ab, 0, nums);
  f[0] = id;
  f[1] = p.records;
  f[2] = p.firstIndex;
  f[3] = p.firstAcceptedAt ?? NaN;
  f[4] = frames;
  f[5] = idLen;
  if (p.acceptedAt) {
    f.set(p.acceptedAt.starts, PART_HEAD);
    f.set(p.acceptedAt.times, PART_HEAD + frames);
  }
  const bytes = Buffer.from(ab, nums * 8);
  bytes.write(p.batchId, 0, idLen, 'latin1');
  bytes.set(p.payload, idLen);
  return ab;
}

export function unpackPart(ab: ArrayBuffer): { id: number; part: PartInput } {
  const head = new Float64Array(ab, 0, PART_HEAD);
  const frames = head[4]!;
  const nums = PART_HEAD + 2 * Math.max(0, frames);
  const f = new Float64Array(ab, 0, nums);
  const idLen = head[5]!;
  const bytes = Buffer.from(ab, nums * 8);
  const part: PartInput = {
    payload: bytes.subarray(idLen),
    records: head[1]!,
    batchId: bytes.toString('latin1', 0, idLen),
    firstIndex: head[2]!,
  };
  if (!Number.isNaN(head[3])) part.firstAcceptedAt = head[3]!;
  if (frames >= 0)
    part.acceptedAt = {
      starts: Array.from(f.subarray(PART_HEAD, PART_HEAD + frames)),
      times: Array.from(f.subarray(PART_HEAD + frames, nums)),
    };
  return { id: head[0]!, part };
}

export function packEncoded(id: number, e: EncodedPart): ArrayBuffer {
  const lines = e.unmappable.length;
  const nums = ENCODED_HEAD + lines;
  let bytes = (e.logs?.byteLength ?? 0) + (e.traces?.byteLength ?? 0) + e.primary.byteLength;
  for (const l of e.unmappable) bytes += l.byteLength;
  const ab = new ArrayBuffer(nums * 8 + bytes);
  const f = new Float64Array(ab, 0, nums);
  f[0] = id;
  f[1] = e.logCount;
  f[2] = e.spanCount;
  f[3] = e.truncated;
  f[4] = e.flattened;
  f[5] = e.logs ? e.logs.byteLength : -1;
  f[6] = e.traces ? e.traces.byteLength : -1;
  f[7] = e.primary.byteLength;
  f[8] = lines;
  const out = new Uint8Array(ab, nums * 8);
  let at = 0;
  for (const b of [e.logs, e.traces, e.primary, ...e.unmappable]) {
    if (!b) continue;
    out.set(b, at);
    at += b.byteLength;
  }
  e.unmappable.forEach((l, i) => (f[ENCODED_HEAD + i] = l.byteLength));
  return ab;
}

export function unpackEncoded(ab: ArrayBuffer): { id: number; encoded: EncodedPart } {
  const head = new Float64Array(ab, 0, ENCODED_HEAD);
  const lines = head[8]!;
  const nums = ENCODED_HEAD + lines;
  const f = new Float64Array(ab, 0, nums);
  let at = nums * 8;
  const take = (len: number): Buffer => {
    const b = Buffer.from(ab, at, len);
    at += len;
    return b;
  };
  const logs = head[5]! >= 0 ? take(head[5]!) : undefined;
  const traces = head[6]! >= 0 ? take(head[6]!) : undefined;
  const primary = take(head[7]!);
  const unmappable: Buffer[] = [];
  for (let i = 0; i < lines; i++) unmappable.push(take(f[ENCODED_HEAD + i]!));
  return {
    id: head[0]!,
    encoded: {
      logs,
      traces,
      logCount: head[1]!,
      spanCount: head[2]!,
      truncated: head[3]!,
      flattened: head[4]!,
      primary,
      unmappable,
    },
  };
}
