// NDJSON framing and validation for one client connection.
//
// Hot path: a chunk from the socket is scanned for '\n' with Buffer#indexOf; every line is checked to be valid UTF-8
// and a JSON object (JSON.parse only for lines that start with '{' and end with '}'; anything else is classified on
// the rare path). Consecutive good lines are handed to the sink as *one slice of the original chunk* — no copy, no
// re-serialisation — so the spool stores exactly the bytes the client wrote. Only a line split across chunks is
// copied (into `partial`, bounded by maxRecordBytes). A line longer than maxRecordBytes is skipped up to its newline
// without buffering it. Blank lines are ignored (not counted).
//
// Control lines: a line that starts with the exact bytes `{"_sidekick":` is a message from a client library, not a
// record (today: how many records the client had to drop, see docs/clients.md). Two byte compares per line find them.
//
// A last line without its newline at end of stream is a cut line (a client that got a short write closes the
// connection, and has already counted that record as dropped): it is discarded and reported as `truncated`, never
// delivered, so a record is never both delivered and counted as a client drop.
import { isUtf8 } from 'node:buffer';
import type { InvalidReason } from '../metrics.js';

export interface LineSink {
  /** `lines` holds `records` complete, valid, '\n'-terminated lines (a view of the chunk: copy it if you keep it). */
  good(lines: Buffer, records: number): void;
  /** One rejected line; `sample` is at most 64 bytes of it, for the log. */
  bad(reason: InvalidReason, sample: Buffer): void;
  /** One control line (no newline), a view of the chunk. */
  control(line: Buffer): void;
  /** An unterminated last line at end of stream, discarded; `sample` is at most 64 bytes of it. */
  truncated(sample: Buffer): void;
}

/** Every control line starts with these bytes (clients write them exactly so). */
export const CONTROL_PREFIX = Buffer.from('{"_sidekick":');
const QUOTE = 0x22; // "
const UNDERSCORE = 0x5f; // _

/** True when the line at [start, end) is a control line. Cheap: most lines fail at the third byte. */
export function isControlLine(buf: Buffer, start: number, end: number): boolean {
  if (end - start < CONTROL_PREFIX.length || buf[start + 2] !== UNDERSCORE || buf[start + 1] !== QUOTE) return false;
  return buf.compare(CONTROL_PREFIX, 0, CONTROL_PREFIX.length, start, start + CONTROL_PREFIX.length) === 0;
}

const NL = 0x0a;
const OPEN = 0x7b; // {
const CLOSE = 0x7d; // }

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0d;
}

/** Classifies one line (no newline): undefined when it is a valid JSON object, else the reason. */
export function checkLine(buf: Buffer, start: number, end: number): InvalidReason | undefined | 'blank' {
  let s = start;
  let e = end;
  while (s < e && isSpace(buf[s]!)) s++;
  while (e > s && isSpace(buf[e - 1]!)) e--;
  if (s === e) return 'blank';
  const view = buf.subarray(s, e);
  if (!isUtf8(view)) return 'not_json';
  let value: unknown;
  try {
    value = JSON.parse(view.toString('utf8'));
  } catch {
    return 'not_json';
  }
  if (buf[s] === OPEN && buf[e - 1] === CLOSE) return undefined; // parsed, and braces ⇒ a plain object
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? undefined : 'not_object';
}

/** Per-connection framing state. */
export class LineFramer {
  /** Bytes of an unfinished line carried from earlier chunks. */
  private partial: Buffer[] = [];
  private partialBytes = 0;
  /** True while skipping the rest of an over-long line. */
  private discarding = false;

  constructor(
    private maxRecordBytes: number,
    private readonly sink: LineSink,
  ) {}

  setMaxRecordBytes(n: number): void {
    this.maxRecordBytes = n;
  }

  /** Bytes currently held for an unfinished line (counted against memory.maxBytes). */
  get bufferedBytes(): number {
    return this.partialBytes;
  }

  /** The unfinished line (for a hand-over to another process) and whether it is being discarded. */
  takePartial(): { partial: Buffer; discarding: boolean } {
    const out = { partial: Buffer.concat(this.partial, this.partialBytes), discarding: this.discarding };
    this.partial = [];
    this.partialBytes = 0;
    this.discarding = false;
    return out;
  }

  restorePartial(partial: Buffer, discarding: boolean): void {
    this.partial = partial.length ? [partial] : [];
    this.partialBytes = partial.length;
    this.discarding = discarding;
  }

  /** At end of stream: a final line without '\n' is a cut line, discarded and reported (see the header). */
  end(): void {
    if (this.discarding) {
      this.discarding = false; // already counted when it crossed maxRecordBytes
      return;
    }
    if (this.partialBytes === 0) return;
    const sample = this.sampleOfPartial();
    const blank = this.partial.every((p) => p.every((b) => isSpace(b)));
    this.partial = [];
    this.partialBytes = 0;
    if (!blank) this.sink.truncated(sample);
  }

  push(chunk: Buffer): void {
    let pos = 0;
    const len = chunk.length;
    if (this.discarding) {
      const nl = chunk.indexOf(NL);
      if (nl < 0) return;
      this.discarding = false; // already counted when it crossed maxRecordBytes
      pos = nl + 1;
    } else if (this.partialBytes > 0) {
      const nl = chunk.indexOf(NL);
      if (nl < 0) {
        this.holdPartial(chunk, 0);
        return;
      }
      if (this.partialBytes + nl > this.maxRecordBytes) {
        this.sink.bad('too_large', this.sampleOfPartial());
        this.partial = [];
        this.partialBytes = 0;
      } else {
        const line = Buffer.concat([...this.partial, chunk.subarray(0, nl + 1)], this.partialBytes + nl + 1);
        this.partial = [];
        this.partialBytes = 0;
        this.emitOne(line, 0, line.length - 1);
      }
      pos = nl + 1;
    }
    // Runs of good lines go to the sink as one slice.
    let runStart = pos;
    let runRecords = 0;
    const max = this.maxRecordBytes;
    while (pos < len) {
      const nl = chunk.indexOf(NL, pos);
      if (nl < 0) break;
      const verdict = nl - pos > max ? 'too_large' : checkLine(chunk, pos, nl);
      if (verdict === undefined && !isControlLine(chunk, pos, nl)) {
        runRecords++;
      } else if (verdict === undefined) {
        if (runRecords > 0) this.sink.good(chunk.subarray(runStart, pos), runRecords);
        runRecords = 0;
        runStart = nl + 1;
        this.sink.control(chunk.subarray(pos, nl));
      } else {
        if (runRecords > 0) this.sink.good(chunk.subarray(runStart, pos), runRecords);
        runRecords = 0;
        runStart = nl + 1;
        if (verdict !== 'blank') this.sink.bad(verdict, chunk.subarray(pos, Math.min(nl, pos + 64)));
      }
      pos = nl + 1;
    }
    if (runRecords > 0) this.sink.good(chunk.subarray(runStart, pos), runRecords);
    if (pos < len) this.holdPartial(chunk, pos);
  }

  private holdPartial(chunk: Buffer, from: number): void {
    const rest = chunk.length - from;
    if (this.partialBytes + rest > this.maxRecordBytes) {
      this.sink.bad('too_large', this.partialBytes ? this.sampleOfPartial() : chunk.subarray(from, from + 64));
      this.partial = [];
      this.partialBytes = 0;
      this.discarding = true; // counted now; the rest of the line is skipped up to its newline
      return;
    }
    this.partial.push(Buffer.from(chunk.subarray(from))); // copy: the chunk is not ours to keep
    this.partialBytes += rest;
  }

  /** The first 64 bytes of the unfinished line (rare path: logs only). */
  private sampleOfPartial(): Buffer {
    const parts: Buffer[] = [];
    let n = 0;
    for (const p of this.partial) {
      if (n >= 64) break;
      parts.push(p.subarray(0, 64 - n));
      n += parts[parts.length - 1]!.length;
    }
    return Buffer.concat(parts, n);
  }

  private emitOne(line: Buffer, start: number, nl: number): void {
    const verdict = nl - start > this.maxRecordBytes ? 'too_large' : checkLine(line, start, nl);
    if (verdict === undefined && isControlLine(line, start, nl)) this.sink.control(line.subarray(start, nl));
    else if (verdict === undefined) this.sink.good(line.subarray(start, nl + 1), 1);
    else if (verdict !== 'blank') this.sink.bad(verdict, line.subarray(start, Math.min(nl, start + 64)));
  }
}
