// NDJSON framing and validation for one client connection.
//
// Hot path: a chunk from the socket is scanned for '\n' with Buffer#indexOf; every line is checked to be valid UTF-8
// and a JSON object by a byte-level validator (no JSON.parse, no allocation: see isJsonObject); what it rejects is
// classified on the rare path (isUtf8 + JSON.parse), so the verdicts are exactly JSON.parse's. Consecutive good lines
// are handed to the sink as *one slice of the original chunk* — no copy, no re-serialisation — so the spool stores
// exactly the bytes the client wrote. Only a line split across chunks is copied (into `partial`, bounded by
// maxRecordBytes). A line longer than maxRecordBytes is skipped up to its newline without buffering it. Blank lines
// are ignored (not counted).
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

/**
 * Classifies one line (no newline): undefined when it is a valid JSON object, else the reason. A line that looks like
 * an object is checked byte by byte (isJsonObject: no string, no object built); only what that does not accept takes
 * the reference path (isUtf8 + JSON.parse), which also names the reason, so verdicts and counts are exactly those of
 * `isUtf8(line) && JSON.parse(line)`.
 */
export function checkLine(buf: Buffer, start: number, end: number): InvalidReason | undefined | 'blank' {
  let s = start;
  let e = end;
  while (s < e && isSpace(buf[s]!)) s++;
  while (e > s && isSpace(buf[e - 1]!)) e--;
  if (s === e) return 'blank';
  if (buf[s] === OPEN && buf[e - 1] === CLOSE && isJsonObject(buf, s, e)) return undefined;
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

// ------------------------------------------------------------------------------------------------ JSON object check
//
// The per-record cost of ingest is mostly this check. isUtf8 + toString + JSON.parse builds a string and a whole
// object graph for every record only to throw them away (~0.7-2 µs and garbage for a 200-byte record here); the
// validator below walks the bytes once, allocates nothing and is 1.7-3× cheaper on typical records (measured on 200-byte
// records: flat, nested, non-ASCII, escaped). It is exact: a fuzz test compares it with JSON.parse on random and
// mutated inputs. The grammar is RFC 8259 as V8's JSON.parse implements it (whitespace = space, tab, CR, LF; any
// \u escape, lone surrogates included), and UTF-8 is checked inside strings as isUtf8 does (Unicode Table 3-7);
// outside strings any byte >= 0x80 is a syntax error anyway.

/**
 * Byte classes inside a JSON string: 0 plain ASCII, 1 '"', 2 '\\', 3 control (< 0x20), 4 UTF-8 lead or invalid,
 * 5 '}' (plain, but it ends every line the fast path sees, so the scan loop needs no bounds check: it stops there).
 */
const STR_CLASS = new Uint8Array(256);
for (let c = 0; c < 256; c++)
  STR_CLASS[c] = c < 0x20 ? 3 : c === 0x22 ? 1 : c === 0x5c ? 2 : c >= 0x80 ? 4 : c === 0x7d ? 5 : 0;
/** 1 for the bytes JSON.parse skips as whitespace. */
const WS = new Uint8Array(256);
WS[0x20] = WS[0x09] = WS[0x0a] = WS[0x0d] = 1;
/** 1 for the characters that may follow a backslash (besides 'u'). */
const ESCAPE = new Uint8Array(256);
for (const c of '"\\/bfnrt') ESCAPE[c.charCodeAt(0)] = 1;
/** 1 for hex digits. */
const HEX = new Uint8Array(256);
for (const c of '0123456789abcdefABCDEF') HEX[c.charCodeAt(0)] = 1;

const MAX_DEPTH = 256;
/** Container kinds of the open levels (1 object, 2 array); module-level, so a call allocates nothing. */
const stack = new Uint8Array(MAX_DEPTH);

/**
 * True when bytes [start, end) are exactly one JSON object (optionally surrounded by JSON whitespace) in valid UTF-8:
 * the same set of lines `isUtf8(line) && JSON.parse(line)` yields an object for. False means "not sure": deeper than
 * MAX_DEPTH levels, or invalid — the caller decides with JSON.parse. Never true where JSON.parse would throw.
 */
export function isJsonObject(b: Uint8Array, start: number, end: number): boolean {
  let i = start;
  while (i < end && WS[b[i]!] === 1) i++;
  let e = end;
  while (e > i && WS[b[e - 1]!] === 1) e--;
  if (i >= e || b[i] !== 0x7b || b[e - 1] !== 0x7d) return false;
  end = e; // from here on b[end - 1] is '}', the sentinel scanString relies on
  let depth = 0;
  // States: 0 = a value is expected, 1 = a key (or '}' right after '{') is expected, 2 = after a value.
  let state = 0;
  for (;;) {
    while (i < end && WS[b[i]!] === 1) i++;
    if (i >= end) return false;
    let c = b[i]!;
    if (state === 2) {
      if (depth === 0) return false; // something after the top-level object
      const top = stack[depth - 1];
      if (c === 0x2c) {
        i++;
        state = top === 1 ? 1 : 0;
        if (state === 1) {
          while (i < end && WS[b[i]!] === 1) i++;
          if (i >= end || b[i] !== 0x22) return false; // a key must follow a comma in an object
        }
        continue;
      }
      if ((c === 0x7d && top === 1) || (c === 0x5d && top === 2)) {
        i++;
        depth--;
        if (depth === 0) {
          while (i < end && WS[b[i]!] === 1) i++;
          return i === end;
        }
        continue; // still state 2
      }
      return false;
    }
    if (state === 1) {
      // a key, or '}' closing an empty object
      if (c === 0x7d) {
        i++;
        depth--;
        state = 2;
        if (depth === 0) {
          while (i < end && WS[b[i]!] === 1) i++;
          return i === end;
        }
        continue;
      }
      if (c !== 0x22) return false;
      i = scanString(b, i + 1, end);
      if (i < 0) return false;
      while (i < end && WS[b[i]!] === 1) i++;
      if (i >= end || b[i] !== 0x3a) return false;
      i++;
      state = 0;
      continue;
    }
    // state 0: a value
    if (c === 0x22) {
      i = scanString(b, i + 1, end);
      if (i < 0) return false;
      state = 2;
    } else if (c === 0x7b || c === 0x5b) {
      if (depth === MAX_DEPTH) return false; // not sure: JSON.parse decides
      stack[depth++] = c === 0x7b ? 1 : 2;
      i++;
      if (c === 0x7b) state = 1;
      else {
        while (i < end && WS[b[i]!] === 1) i++;
        if (i < end && b[i] === 0x5d) {
          i++;
          depth--;
          state = 2;
        } else state = 0;
      }
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      // -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
      if (c === 0x2d) {
        i++;
        if (i >= end) return false;
        c = b[i]!;
        if (c < 0x30 || c > 0x39) return false;
      }
      i++;
      if (c !== 0x30) while (i < end && b[i]! >= 0x30 && b[i]! <= 0x39) i++;
      if (i < end && b[i] === 0x2e) {
        i++;
        const from = i;
        while (i < end && b[i]! >= 0x30 && b[i]! <= 0x39) i++;
        if (i === from) return false;
      }
      if (i < end && (b[i] === 0x65 || b[i] === 0x45)) {
        i++;
        if (i < end && (b[i] === 0x2b || b[i] === 0x2d)) i++;
        const from = i;
        while (i < end && b[i]! >= 0x30 && b[i]! <= 0x39) i++;
        if (i === from) return false;
      }
      state = 2;
    } else if (c === 0x74) {
      if (i + 4 > end || b[i + 1] !== 0x72 || b[i + 2] !== 0x75 || b[i + 3] !== 0x65) return false; // true
      i += 4;
      state = 2;
    } else if (c === 0x66) {
      if (i + 5 > end || b[i + 1] !== 0x61 || b[i + 2] !== 0x6c || b[i + 3] !== 0x73 || b[i + 4] !== 0x65) return false;
      i += 5;
      state = 2;
    } else if (c === 0x6e) {
      if (i + 4 > end || b[i + 1] !== 0x75 || b[i + 2] !== 0x6c || b[i + 3] !== 0x6c) return false; // null
      i += 4;
      state = 2;
    } else return false;
  }
}

/** Scans a string body from `i` (after the opening quote); the index after the closing quote, or -1 if invalid. */
function scanString(b: Uint8Array, i: number, end: number): number {
  for (;;) {
    // b[end - 1] is '}' (class 5): the loops stop there at the latest (the 4-wide one reads b[i + k] only when
    // b[i .. i + k - 1] were plain, so never past it). Four bytes a turn: ~30% fewer instructions per record.
    while (
      STR_CLASS[b[i]!] === 0 &&
      STR_CLASS[b[i + 1]!] === 0 &&
      STR_CLASS[b[i + 2]!] === 0 &&
      STR_CLASS[b[i + 3]!] === 0
    )
      i += 4;
    while (STR_CLASS[b[i]!] === 0) i++;
    if (i >= end - 1) return -1; // unterminated (or past the line: not reached, see above)
    const c = b[i]!;
    const k = STR_CLASS[c];
    if (k === 1) return i + 1;
    if (k === 5) {
      i++;
      continue;
    }
    if (k === 2) {
      const e = b[i + 1];
      if (i + 1 >= end) return -1;
      if (e === 0x75) {
        if (i + 6 > end || !HEX[b[i + 2]!] || !HEX[b[i + 3]!] || !HEX[b[i + 4]!] || !HEX[b[i + 5]!]) return -1;
        i += 6;
      } else if (ESCAPE[e!] === 1) i += 2;
      else return -1;
      continue;
    }
    if (k === 3) return -1;
    // UTF-8 sequence (Unicode Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF)
    if (c >= 0xc2 && c <= 0xdf) {
      if (i + 1 >= end || (b[i + 1]! & 0xc0) !== 0x80) return -1;
      i += 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      if (i + 2 >= end) return -1;
      const c1 = b[i + 1]!;
      if ((b[i + 2]! & 0xc0) !== 0x80) return -1;
      if (c === 0xe0 ? c1 < 0xa0 || c1 > 0xbf : c === 0xed ? c1 < 0x80 || c1 > 0x9f : (c1 & 0xc0) !== 0x80) return -1;
      i += 3;
    } else if (c >= 0xf0 && c <= 0xf4) {
      if (i + 3 >= end) return -1;
      const c1 = b[i + 1]!;
      if ((b[i + 2]! & 0xc0) !== 0x80 || (b[i + 3]! & 0xc0) !== 0x80) return -1;
      if (c === 0xf0 ? c1 < 0x90 || c1 > 0xbf : c === 0xf4 ? c1 < 0x80 || c1 > 0x8f : (c1 & 0xc0) !== 0x80) return -1;
      i += 4;
    } else return -1;
  }
}

/** Per-connection framing state. */
export class LineFramer {
  /** Bytes of an unfinished line carried from earlier chunks. */
  private partial: Buffer[] = [];
  private partialBytes = 0;
  /** True while skipping the rest of an over-long (or cut) line. */
  private discarding = false;
  /** Counts the unfinished lines let go of (completed, skipped as too large, cut, ended): a finisher is done when it moves. */
  partialGen = 0;

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

  /**
   * Cuts the unfinished line: its bytes are let go of and reported `stalled`, and the rest of it is skipped up to its
   * newline (the receiver does this to a line whose client stopped sending in the middle of it while unfinished lines
   * are over their memory share). False when there was none.
   */
  cutPartial(): boolean {
    if (this.partialBytes === 0) return false;
    this.sink.bad('stalled', this.sampleOfPartial());
    this.partial = [];
    this.partialBytes = 0;
    this.discarding = true;
    this.partialGen++;
    return true;
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
    this.partialGen++;
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
      this.partialGen++;
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
      if (this.partialBytes > 0) this.partialGen++;
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
