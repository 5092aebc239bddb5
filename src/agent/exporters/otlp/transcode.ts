// NDJSON → OTLP protobuf LogRecords without JSON.parse and without the model: the agent's hot path for the otlp
// exporter (docs/benchmarks.md, "OTLP exporter"). The records are flat JSON objects in the common case (what the PHP
// client and most loggers send), already validated byte by byte at ingest; for those, every key and string value is
// copied as the bytes it already is, numbers are read in place, and each LogRecord's length is known before it is
// written. Anything else (a nested value, an escape or a non-ASCII byte in the part, a duplicate or array-index key,
// a string over the length limit, an ISO `ts`, a traceparent, a request record that becomes a span) goes through
// the model (./mapping.ts → ./protobuf.ts) for that record: the output is byte for byte what that path writes
// (test/agent-otlp-transcode.test.ts checks it on generated parts), so the mapping table in docs/agent.md holds for
// both.
import { isAscii } from 'node:buffer';
import type { ExportPart } from '../types.js';
import {
  acceptedAt,
  emptyMapped,
  MAX_DURATION_MS,
  MAX_TIME_MS,
  parseAll,
  parseLine,
  SEVERITY_ERROR,
  SEVERITY_INFO,
  SpanIds,
  type MapOptions,
  type Mapped,
  type RecordMapper,
} from './mapping.js';
import { beginLogs, endLogs, keyValue, logRecord, Writer, type Envelope } from './protobuf.js';

/** A record with more fields than this takes the model path (the token arrays are sized for it). */
const MAX_FIELDS = 64;
/** Integers of at most this many digits are read in place (< 2^53); longer ones through Number(). */
const MAX_INLINE_DIGITS = 15;
/** Records in a row that need the model before the rest of the part goes to it without being tried. */
const MAX_MISSES = 8;

// value kinds
const STR = 0;
const NUM = 1;
const TRUE = 2;
const FALSE = 3;
const NULL = 4;

const ascii = (s: string): Uint8Array => Buffer.from(s, 'latin1');
// the record fields the mapping reads, by their bytes
const K_TS = ascii('ts');
const K_TYPE = ascii('type');
const K_STATUS = ascii('status');
const K_ERROR = ascii('error');
const K_METHOD = ascii('method');
const K_DURATION = ascii('duration_ms');
const K_TRACEPARENT = ascii('traceparent');
const K_BATCH_ID = ascii('sidekick.batch.id');
const K_BATCH_INDEX = ascii('sidekick.batch.index');
const INFO = ascii('INFO');
const W_TRUE = ascii('true');
const W_FALSE = ascii('false');
const W_NULL = ascii('null');
const ERROR = ascii('ERROR');

/** Bytes of v as a protobuf varint (v < 2^53, or negative: 10). A chain of compares: Math.log2 cost more. */
function varintLen(v: number): number {
  if (v < 0x80) return v < 0 ? 10 : 1;
  if (v < 0x4000) return 2;
  if (v < 0x200000) return 3;
  if (v < 0x10000000) return 4;
  if (v < 0x800000000) return 5;
  if (v < 0x40000000000) return 6;
  if (v < 0x2000000000000) return 7;
  return 8;
}

export class LogsTranscoder {
  /** Records written without the model since construction (the rest took the model path). */
  transcoded = 0;

  // one record's fields: key [ks, ke), value [vs, ve) (a string's bytes without the quotes), kind, number
  private readonly ks = new Int32Array(MAX_FIELDS);
  private readonly ke = new Int32Array(MAX_FIELDS);
  private readonly vs = new Int32Array(MAX_FIELDS);
  private readonly ve = new Int32Array(MAX_FIELDS);
  private readonly kind = new Uint8Array(MAX_FIELDS);
  private readonly num = new Float64Array(MAX_FIELDS);
  /** Per field: its KeyValue's length (0: left out, a sidekick.batch.* field). */
  private readonly kvLen = new Int32Array(MAX_FIELDS);

  private readonly opts: MapOptions;

  constructor(
    private readonly mapper: RecordMapper,
    private readonly env: Envelope,
  ) {
    this.opts = mapper.options;
  }

  /** The part as RecordMapper.map gives it, with the LogRecords already encoded in `logsBody` (`logs` left empty). */
  run(part: ExportPart): Mapped {
    const p = part.payload;
    // An escape or a non-ASCII byte anywhere: the model path for the whole part (it parses the part in one go).
    if (!isAscii(p) || p.indexOf(0x5c) !== -1) return this.modelPath(part);
    this.mapper.resetCounts();
    const out = emptyMapped();
    const ids = new SpanIds(part.batchId);
    const w = new Writer(512 + p.length * 2);
    const open = beginLogs(w, this.env);
    const batchKv = new Writer(64);
    keyValue(batchKv, 6, ['sidekick.batch.id', part.batchId]);
    const batchBytes = batchKv.result();
    let start = 0;
    // The rest of the part parsed in one JSON.parse at the first record that needs the model (undefined: not yet,
    // or the rest is not one array of values); after MAX_MISSES such records in a row (a part of request records
    // that become spans, say), the others are not tried either.
    let rest: unknown[] | undefined;
    let restFrom = -1;
    let misses = 0;
    for (let i = 0; start < p.length; i++) {
      if (misses < MAX_MISSES) {
        const next = this.record(w, p, start, part, i, batchBytes);
        if (next !== -1) {
          this.transcoded++;
          out.primary.push('logs');
          out.logCount++;
          start = next;
          misses = 0;
          continue;
        }
        misses++;
      }
      if (restFrom === -1) {
        restFrom = i;
        rest = parseAll(start === 0 ? p : p.subarray(start));
      }
      let nl = p.indexOf(0x0a, start);
      if (nl === -1) nl = p.length - 1;
      const line = p.subarray(start, nl + 1);
      start = nl + 1;
      const before = out.logs.length;
      this.mapper.mapOne(part, i, line, rest ? rest[i - restFrom] : parseLine(line), ids, out);
      // written at once, so the LogRecords keep the part's order
      if (out.logs.length > before) logRecord(w, out.logs.pop()!);
    }
    const counts = this.mapper.counts();
    out.truncated = counts.truncated;
    out.flattened = counts.flattened;
    if (out.logCount > 0) out.logsBody = endLogs(w, open);
    return out;
  }

  private modelPath(part: ExportPart): Mapped {
    return this.mapper.map(part);
  }

  /**
   * Writes record `i` (its line starts at `s`) as a LogRecord and returns where the next line starts, or -1, having
   * written nothing, when the record needs the model path.
   */
  private record(w: Writer, p: Buffer, s: number, part: ExportPart, i: number, batchBytes: Buffer): number {
    const { ks, ke, vs, ve, kind, num } = this;
    const lim = p.length;
    let k = s;
    let c = p[k];
    while (c === 0x20 || c === 0x09 || c === 0x0d) c = p[++k];
    if (c !== 0x7b) return -1; // '{'
    c = p[++k];
    while (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) c = p[++k];
    let n = 0;
    if (c === 0x7d)
      k++; // '{}'
    else {
      for (;;) {
        if (c !== 0x22 || n === MAX_FIELDS) return -1;
        ks[n] = ++k;
        while (k < lim && p[k] !== 0x22) k++;
        ke[n] = k;
        c = p[++k];
        while (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) c = p[++k];
        if (c !== 0x3a) return -1; // ':'
        c = p[++k];
        while (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) c = p[++k];
        if (c === 0x22) {
          kind[n] = STR;
          vs[n] = ++k;
          k = quote(p, k, lim);
          if (k === -1) return -1;
          ve[n] = k++;
        } else if (c === 0x2d || (c! >= 0x30 && c! <= 0x39)) {
          kind[n] = NUM;
          vs[n] = k;
          const neg = c === 0x2d;
          if (neg) c = p[++k];
          let v = 0;
          const digits = k;
          while (c! >= 0x30 && c! <= 0x39) {
            v = v * 10 + (c! - 0x30);
            c = p[++k];
          }
          if (k === digits || (p[digits] === 0x30 && k - digits > 1)) return -1; // not JSON: no digit, a leading 0
          if (c === 0x2e || c === 0x65 || c === 0x45) {
            // '.', 'e', 'E': the rest of the number, read by the engine (the same double JSON.parse gives)
            c = p[++k];
            while ((c! >= 0x30 && c! <= 0x39) || c === 0x2e || c === 0x65 || c === 0x45 || c === 0x2b || c === 0x2d)
              c = p[++k];
            num[n] = Number(p.toString('latin1', vs[n], k));
            if (Number.isNaN(num[n])) return -1;
          } else if (k - digits > MAX_INLINE_DIGITS) num[n] = Number(p.toString('latin1', vs[n], k));
          else num[n] = neg ? -v : v;
          ve[n] = k;
        } else if (c === 0x74 && is(p, k, W_TRUE)) {
          kind[n] = TRUE;
          k += 4;
        } else if (c === 0x66 && is(p, k, W_FALSE)) {
          kind[n] = FALSE;
          k += 5;
        } else if (c === 0x6e && is(p, k, W_NULL)) {
          kind[n] = NULL;
          k += 4;
        } else return -1; // an object or an array: nested values take the model path
        n++;
        c = p[k];
        while (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) c = p[++k];
        if (c === 0x2c) {
          c = p[++k];
          while (c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a) c = p[++k];
          continue;
        }
        if (c !== 0x7d) return -1;
        k++;
        break;
      }
    }
    c = p[k];
    while (c === 0x20 || c === 0x09 || c === 0x0d) c = p[++k];
    if (c !== 0x0a) return -1; // one object per line, nothing after it
    const next = k + 1;

    // What the mapping reads: ts, type, status, error, a request's method and duration_ms.
    const accepted = acceptedAt(part, i);
    let timeMs = accepted;
    let failed = false;
    let method = false;
    let duration = -1;
    let event = -1;
    const max = this.opts.maxValueLength;
    let attrsLen = 0;
    for (let f = 0; f < n; f++) {
      const a = ks[f]!;
      const len = ke[f]! - a;
      if (len === 0) return -1;
      // an array-index key ("0", "42") is listed first by the engine, out of the record's order
      let digits = 0;
      while (digits < len && p[a + digits]! >= 0x30 && p[a + digits]! <= 0x39) digits++;
      if (digits === len) return -1;
      // a key given twice: the engine keeps the last value at the first place
      for (let g = 0; g < f; g++) if (ke[g]! - ks[g]! === len && same(p, a, ks[g]!, len)) return -1;
      const kd = kind[f]!;
      const v = num[f]!;
      if (kd === STR && ve[f]! - vs[f]! > max) return -1; // truncation is counted on the model path
      if (len === 2 && is(p, a, K_TS)) {
        if (kd === STR) return -1; // an ISO date: Date.parse on the model path
        if (kd === NUM && v >= 0 && v < MAX_TIME_MS) timeMs = v;
      } else if (len === 4 && is(p, a, K_TYPE)) {
        if (kd === STR) event = f;
      } else if (len === 6 && is(p, a, K_STATUS)) {
        if (kd === NUM && v >= 500) failed = true;
      } else if (len === 5 && is(p, a, K_ERROR)) {
        if ((kd === STR && ve[f]! > vs[f]!) || kd === TRUE || (kd === NUM && v !== 0)) failed = true;
      } else if (len === 6 && is(p, a, K_METHOD)) method = kd === STR;
      else if (len === 11 && is(p, a, K_DURATION)) {
        if (kd === NUM) duration = f;
      } else if (len === 11 && is(p, a, K_TRACEPARENT)) return -1;
      else if ((len === 17 && is(p, a, K_BATCH_ID)) || (len === 20 && is(p, a, K_BATCH_INDEX))) {
        this.kvLen[f] = 0; // the agent's own attribute: the record's is left out
        continue;
      }
      let anyLen: number;
      if (kd === STR) {
        const sl = ve[f]! - vs[f]!;
        anyLen = 1 + varintLen(sl) + sl;
      } else if (kd === NUM) anyLen = Number.isSafeInteger(v) ? 1 + varintLen(v) : 9;
      else if (kd === NULL) anyLen = 0;
      else anyLen = 2;
      const kv = 1 + varintLen(len) + len + 1 + varintLen(anyLen) + anyLen;
      this.kvLen[f] = kv;
      attrsLen += 1 + varintLen(kv) + kv;
    }
    let ended = timeMs;
    if (method && duration !== -1) {
      // a request record: a span too, unless only logs are asked for
      if (this.opts.requestSignal !== 'logs') return -1;
      ended = timeMs + Math.min(Math.max(0, num[duration]!), MAX_DURATION_MS);
    }
    const observedMs = Math.min(Math.max(accepted, ended), MAX_TIME_MS);
    const index = part.firstIndex + i;
    const indexAny = 1 + varintLen(index);
    const indexKv = 1 + 1 + K_BATCH_INDEX.length + 1 + 1 + indexAny;
    const sev = failed ? ERROR : INFO;
    const eventLen = event === -1 ? 0 : ve[event]! - vs[event]!;
    const recLen =
      9 +
      2 +
      2 +
      sev.length +
      attrsLen +
      batchBytes.length +
      2 +
      indexKv +
      9 +
      (eventLen > 0 ? 1 + varintLen(eventLen) + eventLen : 0);

    w.ensure(recLen + 16);
    const b = w.buf;
    let pos = w.pos;
    b[pos++] = 0x12; // ScopeLogs.log_records
    pos = putVarint(b, pos, recLen);
    const end = pos + recLen;
    b[pos++] = 0x09; // time_unix_nano
    pos = putFixed64Ms(b, pos, timeMs);
    b[pos++] = 0x10; // severity_number
    b[pos++] = failed ? SEVERITY_ERROR : SEVERITY_INFO;
    b[pos++] = 0x1a; // severity_text
    b[pos++] = sev.length;
    for (let j = 0; j < sev.length; j++) b[pos++] = sev[j]!;
    for (let f = 0; f < n; f++) {
      const kv = this.kvLen[f]!;
      if (kv === 0) continue;
      b[pos++] = 0x32; // attributes
      pos = putVarint(b, pos, kv);
      b[pos++] = 0x0a; // KeyValue.key
      pos = putBytes(b, pos, p, ks[f]!, ke[f]!);
      b[pos++] = 0x12; // KeyValue.value
      const kd = kind[f]!;
      if (kd === STR) {
        const sl = ve[f]! - vs[f]!;
        pos = putVarint(b, pos, 1 + varintLen(sl) + sl);
        b[pos++] = 0x0a; // AnyValue.string_value
        pos = putBytes(b, pos, p, vs[f]!, ve[f]!);
      } else if (kd === NUM) {
        const v = num[f]!;
        if (Number.isSafeInteger(v)) {
          pos = putVarint(b, pos, 1 + varintLen(v));
          b[pos++] = 0x18; // AnyValue.int_value
          pos = putVarint(b, pos, v);
        } else {
          b[pos++] = 9;
          b[pos++] = 0x21; // AnyValue.double_value
          b.writeDoubleLE(v, pos);
          pos += 8;
        }
      } else if (kd === NULL) b[pos++] = 0;
      else {
        b[pos++] = 2;
        b[pos++] = 0x10; // AnyValue.bool_value
        b[pos++] = kd === TRUE ? 1 : 0;
      }
    }
    // sidekick.batch.id and sidekick.batch.index up to the index's value: the same bytes for every record of the part
    const tail = this.tail(batchBytes, indexAny);
    b.set(tail, pos);
    pos += tail.length;
    pos = putVarint(b, pos, index);
    b[pos++] = 0x59; // observed_time_unix_nano
    pos = putFixed64Ms(b, pos, observedMs);
    if (eventLen > 0) {
      b[pos++] = 0x62; // event_name
      b[pos++] = eventLen < 0x80 ? eventLen : 0; // (re-written below when longer)
      if (eventLen >= 0x80) pos = putVarint(b, pos - 1, eventLen);
      pos = putRaw(b, pos, p, vs[event]!, ve[event]!);
    }
    if (pos !== end) throw new Error(`otlp transcoder: LogRecord of ${pos - end + recLen} bytes, ${recLen} computed`);
    w.pos = pos;
    return next;
  }

  private tailFor: Buffer | undefined;
  private tailBytes: Buffer[] = [];

  /** The batch id KeyValue and the batch index KeyValue's bytes before the index's varint, per varint length. */
  private tail(batchBytes: Buffer, indexAny: number): Buffer {
    if (this.tailFor !== batchBytes) {
      this.tailFor = batchBytes;
      this.tailBytes = [];
    }
    let t = this.tailBytes[indexAny];
    if (!t) {
      const indexKv = 1 + 1 + K_BATCH_INDEX.length + 1 + 1 + indexAny;
      t = Buffer.concat([
        batchBytes,
        Buffer.from([0x32, indexKv, 0x0a, K_BATCH_INDEX.length]),
        K_BATCH_INDEX,
        Buffer.from([0x12, indexAny, 0x18]),
      ]);
      this.tailBytes[indexAny] = t;
    }
    return t;
  }
}

/** The next '"' from k (the part has no escapes), or -1: a JS scan for short strings, memchr for long ones. */
function quote(p: Buffer, k: number, lim: number): number {
  const stop = Math.min(k + 24, lim);
  for (; k < stop; k++) if (p[k] === 0x22) return k;
  return k < lim ? p.indexOf(0x22, k) : -1;
}

function putVarint(b: Buffer, pos: number, v: number): number {
  if (v >= 0) {
    if (v >= 0x10000000) {
      // 28 low bits by bit operations, then the rest (< 2^25 for a safe integer)
      const lo = v % 0x10000000;
      b[pos++] = (lo & 0x7f) | 0x80;
      b[pos++] = ((lo >>> 7) & 0x7f) | 0x80;
      b[pos++] = ((lo >>> 14) & 0x7f) | 0x80;
      b[pos++] = ((lo >>> 21) & 0x7f) | 0x80;
      v = (v - lo) / 0x10000000;
    }
    while (v >= 0x80) {
      b[pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    b[pos++] = v;
    return pos;
  }
  // a negative int64: two's complement over 64 bits, 10 bytes (as protobuf.ts's Writer)
  let lo = v >>> 0;
  let hi = Math.floor(v / 4294967296) >>> 0;
  for (let i = 0; i < 9; i++) {
    b[pos++] = (lo & 0x7f) | 0x80;
    lo = ((lo >>> 7) | (hi << 25)) >>> 0;
    hi >>>= 7;
  }
  b[pos++] = lo & 0x01;
  return pos;
}

/** Unix ms (fractions kept to the nanosecond) as a fixed64 of ns, exactly as protobuf.ts's Writer.fixed64Ms. */
function putFixed64Ms(b: Buffer, pos: number, ms: number): number {
  const whole = Math.floor(ms);
  const fracNs = Math.round((ms - whole) * 1e6);
  const wh = Math.floor(whole / 4294967296);
  const wl = whole - wh * 4294967296;
  const low = wl * 1e6 + fracNs; // < 2^53: exact
  const carry = Math.floor(low / 4294967296);
  const lo = low - carry * 4294967296;
  const hi = wh * 1e6 + carry;
  b[pos] = lo & 0xff;
  b[pos + 1] = (lo >>> 8) & 0xff;
  b[pos + 2] = (lo >>> 16) & 0xff;
  b[pos + 3] = lo >>> 24;
  b[pos + 4] = hi & 0xff;
  b[pos + 5] = (hi >>> 8) & 0xff;
  b[pos + 6] = (hi >>> 16) & 0xff;
  b[pos + 7] = hi >>> 24;
  return pos + 8;
}

/** p[from, to) with its length in front. */
function putBytes(b: Buffer, pos: number, p: Buffer, from: number, to: number): number {
  return putRaw(b, putVarint(b, pos, to - from), p, from, to);
}

/** p[from, to): a loop for short runs (cheaper than a call into C++), else Buffer#copy. */
function putRaw(b: Buffer, pos: number, p: Buffer, from: number, to: number): number {
  if (to - from > 64) {
    b.set(p.subarray(from, to), pos);
    return pos + to - from;
  }
  for (let j = from; j < to; j++) b[pos++] = p[j]!;
  return pos;
}

function is(p: Buffer, at: number, key: Uint8Array): boolean {
  for (let j = 0; j < key.length; j++) if (p[at + j] !== key[j]) return false;
  return true;
}

function same(p: Buffer, a: number, b: number, len: number): boolean {
  for (let j = 0; j < len; j++) if (p[a + j] !== p[b + j]) return false;
  return true;
}
