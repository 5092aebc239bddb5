// Spool segment files: an append-only sequence of checksummed frames, and a chunked reader that finds them again.
//
// A segment is `seg-<12-digit seq>.log`. Seqs only grow (never reused for a spool id), a fresh segment is started at
// every open, so a position (seq, frame offset) is never written twice. One frame = one write-buffer flush of the
// writer: a header, then the payload (complete '\n'-terminated NDJSON lines, possibly many).
//
//   offset size  field
//   0      4     magic F5 53 4B 31 ("\xF5SK1"; 0xF5 never occurs in UTF-8, so JSON text rarely looks like a header)
//   4      4     payload length (u32 LE)
//   8      4     records in the payload (u32 LE, = number of '\n')
//   12     4     CRC-32 of the payload (u32 LE)
//   16     8     firstAppendedAt: Date.now() of the first append in the frame (f64 LE)
//   24     4     CRC-32 of bytes 0..24 (u32 LE): the length field is trusted only when this matches
//   28     n     payload
//
// Reading: a frame is valid when its header CRC matches and it fits below the read limit (the bytes known written);
// its payload is then checked against the payload CRC. Anything else (torn tail, flipped bit, zeroes after power
// loss) is "garbage": the reader resyncs by searching forward for the next offset that holds a valid header.
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from './crc32.js';

export const FRAME_HEADER_BYTES = 28;
const MAGIC = 0x314b53f5; // bytes F5 53 4B 31 read as u32 LE
const MAGIC_BYTE0 = 0xf5;
/** A frame larger than this is not believed even with a matching header CRC. */
export const MAX_FRAME_PAYLOAD = 512 * 1024 * 1024;

export function segmentName(seq: number): string {
  return `seg-${String(seq).padStart(12, '0')}.log`;
}

const SEGMENT_RE = /^seg-(\d{12})\.log$/;
export function parseSegmentName(name: string): number | undefined {
  const m = SEGMENT_RE.exec(name);
  return m ? Number(m[1]) : undefined;
}

export function segmentPath(dir: string, seq: number): string {
  return join(dir, segmentName(seq));
}

/** Fill in the header of a frame whose payload already sits at `frame[28..]`. */
export function sealFrame(frame: Buffer, records: number, firstAppendedAt: number): void {
  const len = frame.length - FRAME_HEADER_BYTES;
  frame.writeUInt32LE(MAGIC, 0);
  frame.writeUInt32LE(len, 4);
  frame.writeUInt32LE(records, 8);
  frame.writeUInt32LE(crc32(frame.subarray(FRAME_HEADER_BYTES)), 12);
  frame.writeDoubleLE(firstAppendedAt, 16);
  frame.writeUInt32LE(crc32(frame.subarray(0, 24)), 24);
}

export interface FrameHeader {
  len: number;
  records: number;
  payloadCrc: number;
  firstAppendedAt: number;
}

/** The header at `buf[at..at+28]` if it is a valid one, else undefined. */
export function parseHeader(buf: Buffer, at: number): FrameHeader | undefined {
  if (buf.readUInt32LE(at) !== MAGIC) return undefined;
  if (crc32(buf.subarray(at, at + 24)) !== buf.readUInt32LE(at + 24)) return undefined;
  const len = buf.readUInt32LE(at + 4);
  const records = buf.readUInt32LE(at + 8);
  if (len === 0 || len > MAX_FRAME_PAYLOAD || records === 0 || records > len) return undefined;
  return { len, records, payloadCrc: buf.readUInt32LE(at + 12), firstAppendedAt: buf.readDoubleLE(at + 16) };
}

export type FrameRead =
  /** A frame with a valid header at `off`; the next frame starts at `end`. `payload` is only valid until the next
   *  call on the same reader (it may be a view into the reader's chunk buffer). */
  | {
      kind: 'frame';
      off: number;
      end: number;
      header: FrameHeader;
      payload: Buffer | undefined;
      crcOk: boolean;
    }
  /** `[off, end)` holds no valid frame start; `end` is the next valid frame or the read limit. */
  | { kind: 'garbage'; off: number; end: number }
  | { kind: 'end' };

/**
 * Reads frames from one segment file through a fixed-size chunk buffer (bounded memory for any backlog). Only bytes
 * below the `limit` given to each call are ever read or cached: for the segment being written, bytes past the
 * writer's completed size do not exist yet as far as the reader is concerned.
 */
export class SegmentReader {
  private fh: FileHandle | undefined;
  private buf: Buffer;
  private bufStart = 0;
  private bufLen = 0;
  private verifiedOff = -1;

  private constructor(
    readonly seq: number,
    readonly path: string,
    private readonly chunkBytes: number,
  ) {
    this.buf = Buffer.allocUnsafe(chunkBytes);
  }

  static async open(dir: string, seq: number, chunkBytes = 1024 * 1024): Promise<SegmentReader> {
    const r = new SegmentReader(seq, segmentPath(dir, seq), chunkBytes);
    r.fh = await open(r.path, 'r');
    return r;
  }

  /** A reader over a handle someone else owns (close() leaves it open): reading back an unlinked segment. */
  static borrow(seq: number, fh: FileHandle, chunkBytes = 1024 * 1024): SegmentReader {
    const r = new SegmentReader(seq, '', chunkBytes);
    r.fh = fh;
    r.borrowed = true;
    return r;
  }

  private borrowed = false;

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    if (!this.borrowed) await fh?.close();
  }

  /** `len` bytes at `off` (off + len <= limit), or undefined if the file is shorter than that. */
  private async view(off: number, len: number, limit: number): Promise<Buffer | undefined> {
    if (off >= this.bufStart && off + len <= this.bufStart + this.bufLen) {
      return this.buf.subarray(off - this.bufStart, off - this.bufStart + len);
    }
    if (!this.fh) throw new Error('segment reader is closed');
    if (len > this.chunkBytes) {
      // A frame larger than the chunk: a one-off buffer, not cached.
      const big = Buffer.allocUnsafe(len);
      const got = await readFully(this.fh, big, len, off);
      return got === len ? big : undefined;
    }
    const want = Math.min(this.chunkBytes, limit - off);
    const got = await readFully(this.fh, this.buf, want, off);
    this.bufStart = off;
    this.bufLen = got;
    return got >= len ? this.buf.subarray(0, len) : undefined;
  }

  /**
   * What is at `off`, reading nothing at or past `limit`. With `withPayload` the payload is loaded and its CRC checked
   * (the last verified frame is remembered, so cutting several batches from one frame checks it once).
   */
  async read(off: number, limit: number, withPayload: boolean): Promise<FrameRead> {
    if (off >= limit) return { kind: 'end' };
    const h = await this.headerAt(off, limit);
    if (h) {
      const end = off + FRAME_HEADER_BYTES + h.len;
      if (!withPayload) return { kind: 'frame', off, end, header: h, payload: undefined, crcOk: true };
      const payload = await this.view(off + FRAME_HEADER_BYTES, h.len, limit);
      if (payload) {
        const crcOk = this.verifiedOff === off || crc32(payload) === h.payloadCrc;
        if (crcOk) this.verifiedOff = off;
        return { kind: 'frame', off, end, header: h, payload, crcOk };
      }
    }
    return { kind: 'garbage', off, end: await this.resync(off + 1, limit) };
  }

  private async headerAt(off: number, limit: number): Promise<FrameHeader | undefined> {
    if (off + FRAME_HEADER_BYTES > limit) return undefined;
    const hb = await this.view(off, FRAME_HEADER_BYTES, limit);
    if (!hb) return undefined;
    const h = parseHeader(hb, 0);
    if (!h || off + FRAME_HEADER_BYTES + h.len > limit) return undefined;
    return h;
  }

  /** The first offset >= from that holds a valid frame header (whose frame fits below limit), or limit. */
  private async resync(from: number, limit: number): Promise<number> {
    let q = from;
    while (q + FRAME_HEADER_BYTES <= limit) {
      const chunk = await this.view(q, Math.min(this.chunkBytes, limit - q), limit);
      if (!chunk) return limit; // file shorter than we thought: nothing more to find
      const idx = chunk.indexOf(MAGIC_BYTE0);
      if (idx < 0) {
        q += chunk.length;
        continue;
      }
      q += idx;
      if (await this.headerAt(q, limit)) return q;
      q += 1;
    }
    return limit;
  }
}

/** Reads go through the thread pool, never a synchronous pread: a filesystem that stops answering must not block the
 * event loop (writer.ts, NO SYNCHRONOUS I/O ON THE EVENT LOOP). */
async function readFully(fh: FileHandle, buf: Buffer, len: number, position: number): Promise<number> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/** Write all of `bufs` at `position` (positional, so a retry after a partial write simply rewrites the same bytes). */
export async function writeAllV(fh: FileHandle, bufs: Buffer[], position: number): Promise<number> {
  let total = 0;
  for (const b of bufs) total += b.length;
  let done = 0;
  let list = bufs;
  while (done < total) {
    const { bytesWritten } = await fh.writev(list, position + done);
    if (bytesWritten <= 0) throw new Error('writev wrote nothing');
    done += bytesWritten;
    if (done < total) {
      list = dropFront(list, bytesWritten);
    }
  }
  return total;
}

/** `list` without its first `bytes` bytes (after a partial write). */
export function dropFront(list: Buffer[], bytes: number): Buffer[] {
  let skip = bytes;
  const rest: Buffer[] = [];
  for (const b of list) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    rest.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return rest;
}
