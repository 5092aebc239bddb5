// NDJSON → OTLP protobuf LogRecords (and a request record's SERVER span) without JSON.parse and without the model: the agent's hot path for the otlp
// exporter (docs/benchmarks.md, "OTLP exporter"). The records are flat JSON objects in the common case (what the PHP
// client and most loggers send), already validated byte by byte at ingest; for those, every key and string value is
// copied as the bytes it already is, numbers are read in place, and each LogRecord's length is known before it is
// written. Anything else (a nested value, an escape or a non-ASCII byte in the part, a duplicate or array-index key,
// a string over the length limit, an ISO `ts`, a traceparent, a request record with an http.* or process.pid or
// error.type field of its own) goes through
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
import {
  beginLogs,
  beginTraces,
  endLogs,
  endTraces,
  keyValue,
  logRecord,
  putFixed64Ms,
  putVarint,
  spanRecord,
  varintLen,
  Writer,
  type Envelope,
} from './protobuf.js';

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
const K_ROUTE = ascii('route');
const K_PID = ascii('pid');
const K_TRACESTATE = ascii('tracestate');
// the span's own attributes (a record field of one of these names takes the model path when a span is written)
const A_METHOD = ascii('http.request.method');
const A_ROUTE = ascii('http.route');
const A_STATUS = ascii('http.response.status_code');
const A_PID = ascii('process.pid');
const A_ERROR_TYPE = ascii('error.type');
const OTHER = ascii('_OTHER');
// What a field's key is to the mapping (per record shape: see LogsTranscoder.keyKinds)
const KEY_OTHER = 0;
const KEY_TS = 1;
const KEY_TYPE = 2;
const KEY_STATUS = 3;
const KEY_ERROR = 4;
const KEY_METHOD = 5;
const KEY_ROUTE = 6;
const KEY_PID = 7;
const KEY_DURATION = 8;
const KEY_TRACESTATE = 9;
const KEY_BATCH = 10; // sidekick.batch.id / sidekick.batch.index: the agent's own, not the record's
const KEY_SPAN_OWN = 11; // one of the span's own attribute names
/** 10^0 … 10^22: exact doubles (a decimal of ≤ 15 digits divided by one is correctly rounded: Clinger's fast path). */
const POW10 = Array.from({ length: 23 }, (_, i) => 10 ** i);

// what a field is to the mapping: an attribute of both, of the LogRecord only (a field the span carries otherwise),
// or of neither (the agent's own sidekick.batch.*)
const ATTR_BOTH = 0;
const ATTR_LOG = 1;
const ATTR_NONE = 2;
/** The span's flags: sampled, and "the parent's remoteness is known" (mapping.ts, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE). */
const SPAN_FLAGS = 0x101;

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
  /** Per field: its AnyValue's length, its KeyValue's length, and whose attribute it is (ATTR_*). */
  private readonly anyLen = new Int32Array(MAX_FIELDS);
  private readonly kvLen = new Int32Array(MAX_FIELDS);
  private readonly role = new Uint8Array(MAX_FIELDS);
  /**
   * The last record's shape: its keys (positions in the part) and what each key is. Records of one part mostly
   * share their keys in the same order (one client, one code path), so the next record's keys are compared with
   * these bytes instead of classified again (empty, numeric and duplicate keys, a traceparent: checked once per shape).
   */
  private shapeN = -1;
  private readonly shapeKs = new Int32Array(MAX_FIELDS);
  private readonly shapeKe = new Int32Array(MAX_FIELDS);
  private readonly keyKind = new Uint8Array(MAX_FIELDS);
  /** A request's trace id (16 bytes) and span id (8), as SpanIds.at makes them. */
  private readonly ids = new Uint8Array(24);
  /** The part being written: its span id seed, its batch id KeyValues, and the traces request once a span is in it. */
  private seed: Buffer | undefined;
  private idSource: SpanIds | undefined;
  private logTail: Buffer[] = [];
  private spanTail: Buffer[] = [];
  private batchLog: Buffer = Buffer.alloc(0);
  private batchSpan: Buffer = Buffer.alloc(0);
  private tw: Writer | undefined;
  private part: Buffer = Buffer.alloc(0);
  /**
   * With `reuse`, the requests are written into these two buffers, kept from part to part (each part's ~60 KB of
   * fresh external memory per request made V8 collect garbage twice as often in B4); the bodies are then valid only
   * until the next run.
   */
  private readonly scratch: [Buffer | undefined, Buffer | undefined] = [undefined, undefined];
  private reuse = false;
  private tracesAt = 0;

  private readonly opts: MapOptions;

  constructor(
    private readonly mapper: RecordMapper,
    private readonly env: Envelope,
  ) {
    this.opts = mapper.options;
  }

  /**
   * The part as RecordMapper.map gives it, with the LogRecords already encoded in `logsBody` and the spans in
   * `tracesBody` (`logs` and `spans` left empty). With `reuse`, the two bodies are views of buffers the next run
   * writes over: the caller must be done with them (gzip them) before it runs again.
   */
  run(part: ExportPart, reuse = false): Mapped {
    const p = part.payload;
    // An escape or a non-ASCII byte anywhere: the model path for the whole part (it parses the part in one go).
    if (!isAscii(p) || p.indexOf(0x5c) !== -1) return this.modelPath(part);
    this.mapper.resetCounts();
    const out = emptyMapped();
    const ids = new SpanIds(part.batchId);
    this.idSource = ids;
    this.part = p;
    this.reuse = reuse;
    this.seed = undefined;
    this.tw = undefined;
    this.shapeN = -1; // (positions in the previous part)
    // the part's bytes at the start of each request's buffer: values are copied from there (copyWithin: no views)
    const w = new Writer(512 + p.length * 2, p, reuse ? this.scratch[0] : undefined);
    const logsAt = beginLogs(w, this.env);
    this.batchLog = batchKeyValue(6, part.batchId);
    this.batchSpan = batchKeyValue(9, part.batchId);
    this.logTail = [];
    this.spanTail = [];
    let start = 0;
    // The rest of the part parsed in one JSON.parse at the first record that needs the model (undefined: not yet,
    // or the rest is not one array of values); after MAX_MISSES such records in a row, the others are not tried.
    let rest: unknown[] | undefined;
    let restFrom = -1;
    let misses = 0;
    for (let i = 0; start < p.length; i++) {
      if (misses < MAX_MISSES) {
        const next = this.record(w, p, start, part, i, out);
        if (next !== -1) {
          this.transcoded++;
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
      const logs = out.logs.length;
      const spans = out.spans.length;
      this.mapper.mapOne(part, i, line, rest ? rest[i - restFrom] : parseLine(line), ids, out);
      // written at once, so the LogRecords and the spans keep the part's order
      if (out.spans.length > spans) spanRecord(this.traces(), out.spans.pop()!);
      if (out.logs.length > logs) logRecord(w, out.logs.pop()!);
    }
    const counts = this.mapper.counts();
    out.truncated = counts.truncated;
    out.flattened = counts.flattened;
    const tw = this.tw as Writer | undefined; // (set by traces() at the first span)
    if (out.logCount > 0) out.logsBody = endLogs(w, this.env, logsAt);
    if (tw && out.spanCount > 0) out.tracesBody = endTraces(tw, this.env, this.tracesAt);
    if (reuse) {
      // the buffers (grown to the largest part so far) are written over by the next run: no garbage per part
      this.scratch[0] = w.buf;
      if (tw) this.scratch[1] = tw.buf;
    }
    this.tw = undefined;
    this.idSource = undefined;
    this.part = Buffer.alloc(0);
    return out;
  }

  /** The part's traces request, begun at its first span (this.part: the part being written). */
  private traces(): Writer {
    if (!this.tw) {
      this.tw = new Writer(512 + this.part.length * 2, this.part, this.reuse ? this.scratch[1] : undefined);
      this.tracesAt = beginTraces(this.tw, this.env);
    }
    return this.tw;
  }

  private modelPath(part: ExportPart): Mapped {
    return this.mapper.map(part);
  }

  /**
   * Writes record `i` (its line starts at `s`) as a LogRecord and returns where the next line starts, or -1, having
   * written nothing, when the record needs the model path.
   */
  private record(w: Writer, p: Buffer, s: number, part: ExportPart, i: number, out: Mapped): number {
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
          let fraction = -1; // digits after a '.' read here (then v holds all the digits)
          if (c === 0x2e && k - digits <= MAX_INLINE_DIGITS) {
            const dot = k;
            c = p[++k];
            while (c! >= 0x30 && c! <= 0x39) {
              v = v * 10 + (c! - 0x30);
              c = p[++k];
            }
            fraction = k - dot - 1;
            if (fraction === 0) return -1; // not JSON: "1."
          }
          if (fraction > 0 && k - digits - 1 <= MAX_INLINE_DIGITS && c !== 0x65 && c !== 0x45) {
            // ≤ 15 digits, no exponent: digits / 10^fraction, one correctly rounded division of two exact doubles
            // (Clinger's fast path), so the very double JSON.parse gives
            num[n] = neg ? -(v / POW10[fraction]!) : v / POW10[fraction]!;
          } else if (fraction > 0 || c === 0x2e || c === 0x65 || c === 0x45) {
            // more digits, or an exponent: the rest of the number read by the engine (the double JSON.parse gives)
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

    // What the mapping reads: ts, type, status, error, pid, a request's method, route and duration_ms.
    const { anyLen, kvLen, role } = this;
    const accepted = acceptedAt(part, i);
    let timeMs = accepted;
    let failed = false;
    let method = -1;
    let route = -1;
    let status = -1;
    let error = -1;
    let pid = -1;
    let duration = -1;
    let event = -1;
    let ownAttr = false; // a field named as one of the span's own attributes
    const max = this.opts.maxValueLength;
    if (!this.sameShape(p, n) && !this.keyKinds(p, n)) return -1;
    const keyKind = this.keyKind;
    for (let f = 0; f < n; f++) {
      const len = ke[f]! - ks[f]!;
      const kd = kind[f]!;
      const v = num[f]!;
      if (kd === STR && ve[f]! - vs[f]! > max) return -1; // truncation is counted on the model path
      let r = ATTR_BOTH;
      switch (keyKind[f]) {
        case KEY_TS:
          if (kd === STR) return -1; // an ISO date: Date.parse on the model path
          if (kd === NUM && v >= 0 && v < MAX_TIME_MS) timeMs = v;
          r = ATTR_LOG;
          break;
        case KEY_TYPE:
          if (kd === STR) event = f;
          r = ATTR_LOG;
          break;
        case KEY_STATUS:
          if (kd === NUM) {
            status = f;
            if (v >= 500) failed = true;
          }
          r = ATTR_LOG;
          break;
        case KEY_ERROR:
          if ((kd === STR && ve[f]! > vs[f]!) || kd === TRUE || (kd === NUM && v !== 0)) failed = true;
          if (kd === STR) error = f;
          break;
        case KEY_METHOD:
          if (kd === STR) method = f;
          r = ATTR_LOG;
          break;
        case KEY_ROUTE:
          if (kd === STR) route = f;
          r = ATTR_LOG;
          break;
        case KEY_PID:
          if (kd === NUM) pid = f;
          r = ATTR_LOG;
          break;
        case KEY_DURATION:
          if (kd === NUM) duration = f;
          r = ATTR_LOG;
          break;
        case KEY_TRACESTATE:
          r = ATTR_LOG;
          break;
        case KEY_BATCH:
          r = ATTR_NONE;
          break;
        case KEY_SPAN_OWN:
          ownAttr = true;
          break;
      }
      role[f] = r;
      let al: number;
      if (kd === STR) {
        const sl = ve[f]! - vs[f]!;
        al = 1 + varintLen(sl) + sl;
      } else if (kd === NUM) al = Number.isSafeInteger(v) ? 1 + varintLen(v) : 9;
      else if (kd === NULL) al = 0;
      else al = 2;
      anyLen[f] = al;
      kvLen[f] = kvSize(len, al);
    }
    const isRequest = method !== -1 && duration !== -1;
    const wantSpan = isRequest && this.opts.requestSignal !== 'logs';
    const wantLog = !isRequest || this.opts.requestSignal !== 'traces';
    if (wantSpan && ownAttr) return -1; // whose value wins: the model path decides
    const index = part.firstIndex + i;
    const indexAny = 1 + varintLen(index);
    const durationMs = isRequest ? Math.min(Math.max(0, num[duration]!), MAX_DURATION_MS) : 0;

    if (wantSpan) {
      this.spanIds(index);
      this.span(index, indexAny, timeMs, durationMs, failed, method, route, status, error, pid, n);
      out.spanCount++;
    }
    if (wantLog) {
      // A spool frame is stamped with its first line's arrival: never observed before it happened (or ended).
      const observedMs = Math.min(Math.max(accepted, timeMs + durationMs), MAX_TIME_MS);
      this.log(w, index, indexAny, timeMs, observedMs, failed, event, wantSpan, n);
      out.logCount++;
    }
    out.primary.push(wantLog ? 'logs' : 'traces');
    return next;
  }

  /** Whether the record's n keys are, byte for byte and in order, the last classified record's (keyKind holds). */
  private sameShape(p: Buffer, n: number): boolean {
    if (n !== this.shapeN) return false;
    const { ks, ke, shapeKs, shapeKe } = this;
    for (let f = 0; f < n; f++) {
      const len = ke[f]! - ks[f]!;
      if (len !== shapeKe[f]! - shapeKs[f]! || !same(p, ks[f]!, shapeKs[f]!, len)) return false;
    }
    return true;
  }

  /**
   * What each of the record's n keys is to the mapping, into keyKind, kept as the shape the next record is compared
   * with; false (the model path) for an empty, numeric or repeated key, or a traceparent.
   */
  private keyKinds(p: Buffer, n: number): boolean {
    const { ks, ke, keyKind } = this;
    this.shapeN = -1; // keyKind is being written over
    for (let f = 0; f < n; f++) {
      const a = ks[f]!;
      const len = ke[f]! - a;
      if (len === 0) return false;
      // an array-index key ("0", "42") is listed first by the engine, out of the record's order
      let digits = 0;
      while (digits < len && p[a + digits]! >= 0x30 && p[a + digits]! <= 0x39) digits++;
      if (digits === len) return false;
      // a key given twice: the engine keeps the last value at the first place
      for (let g = 0; g < f; g++) if (ke[g]! - ks[g]! === len && same(p, a, ks[g]!, len)) return false;
      let kk = KEY_OTHER;
      if (len === 2 && is(p, a, K_TS)) kk = KEY_TS;
      else if (len === 4 && is(p, a, K_TYPE)) kk = KEY_TYPE;
      else if (len === 6 && is(p, a, K_STATUS)) kk = KEY_STATUS;
      else if (len === 5 && is(p, a, K_ERROR)) kk = KEY_ERROR;
      else if (len === 6 && is(p, a, K_METHOD)) kk = KEY_METHOD;
      else if (len === 5 && is(p, a, K_ROUTE)) kk = KEY_ROUTE;
      else if (len === 3 && is(p, a, K_PID)) kk = KEY_PID;
      else if (len === 11 && is(p, a, K_DURATION)) kk = KEY_DURATION;
      else if (len === 11 && is(p, a, K_TRACEPARENT)) return false;
      else if (len === 10 && is(p, a, K_TRACESTATE)) kk = KEY_TRACESTATE;
      else if ((len === 17 && is(p, a, K_BATCH_ID)) || (len === 20 && is(p, a, K_BATCH_INDEX))) kk = KEY_BATCH;
      else if (
        (len === 19 && is(p, a, A_METHOD)) ||
        (len === 10 && (is(p, a, A_ROUTE) || is(p, a, A_ERROR_TYPE))) ||
        (len === 25 && is(p, a, A_STATUS)) ||
        (len === 11 && is(p, a, A_PID))
      )
        kk = KEY_SPAN_OWN;
      keyKind[f] = kk;
    }
    this.shapeN = n;
    this.shapeKs.set(ks.subarray(0, n));
    this.shapeKe.set(ke.subarray(0, n));
    return true;
  }

  /** The LogRecord of a record whose fields are in the token arrays (n of them). */
  private log(
    w: Writer,
    index: number,
    indexAny: number,
    timeMs: number,
    observedMs: number,
    failed: boolean,
    event: number,
    withSpan: boolean,
    n: number,
  ): void {
    const { vs, ve, kvLen, role } = this;
    let attrsLen = 0;
    for (let f = 0; f < n; f++) if (role[f] !== ATTR_NONE) attrsLen += field(kvLen[f]!);
    const tail = this.tail(this.logTail, this.batchLog, 0x32, indexAny);
    const sev = failed ? ERROR : INFO;
    const eventLen = event === -1 ? 0 : ve[event]! - vs[event]!;
    const recLen =
      9 + // time_unix_nano
      2 + // severity_number
      2 + sev.length +
      attrsLen +
      tail.length + varintLen(index) +
      (withSpan ? 5 + 18 + 10 : 0) + // flags, trace_id, span_id
      9 + // observed_time_unix_nano
      (eventLen > 0 ? 1 + varintLen(eventLen) + eventLen : 0); // prettier-ignore

    w.ensure(recLen + 16);
    const b = w.buf;
    let pos = w.pos;
    b[pos++] = 0x12; // ScopeLogs.log_records
    pos = putVarint(b, pos, recLen);
    const end = pos + recLen;
    b[pos++] = 0x09; // time_unix_nano
    pos = putFixed64Ms(b, pos, timeMs, 0);
    b[pos++] = 0x10; // severity_number
    b[pos++] = failed ? SEVERITY_ERROR : SEVERITY_INFO;
    b[pos++] = 0x1a; // severity_text
    b[pos++] = sev.length;
    for (let j = 0; j < sev.length; j++) b[pos++] = sev[j]!;
    for (let f = 0; f < n; f++) {
      if (role[f] === ATTR_NONE) continue;
      b[pos++] = 0x32; // attributes
      pos = putVarint(b, pos, kvLen[f]!);
      b[pos++] = 0x0a; // KeyValue.key
      pos = putOwn(b, pos, this.ks[f]!, this.ke[f]!);
      pos = this.putValue(b, pos, f);
    }
    // sidekick.batch.id and sidekick.batch.index up to the index's value: the same bytes for every record of the part
    b.set(tail, pos);
    pos = putVarint(b, pos + tail.length, index);
    if (withSpan) {
      const ids = this.ids;
      b[pos++] = 0x45; // flags (fixed32): the span's trace flags
      b[pos++] = SPAN_FLAGS & 0xff;
      b[pos++] = 0;
      b[pos++] = 0;
      b[pos++] = 0;
      b[pos++] = 0x4a; // trace_id
      b[pos++] = 16;
      for (let j = 0; j < 16; j++) b[pos++] = ids[j]!;
      b[pos++] = 0x52; // span_id
      b[pos++] = 8;
      for (let j = 16; j < 24; j++) b[pos++] = ids[j]!;
    }
    b[pos++] = 0x59; // observed_time_unix_nano
    pos = putFixed64Ms(b, pos, observedMs, 0);
    if (eventLen > 0) {
      b[pos++] = 0x62; // event_name
      pos = putOwn(b, pos, vs[event]!, ve[event]!);
    }
    if (pos !== end) throw new Error(`otlp transcoder: LogRecord of ${pos - end + recLen} bytes, ${recLen} computed`);
    w.pos = pos;
  }

  /** The SERVER span of a request record (mapping.ts's RecordMapper.span, without a traceparent). */
  private span(
    index: number,
    indexAny: number,
    startMs: number,
    durationMs: number,
    failed: boolean,
    method: number,
    route: number,
    status: number,
    error: number,
    pid: number,
    n: number,
  ): void {
    const { vs, ve, kvLen, anyLen, role, num } = this;
    const ml = ve[method]! - vs[method]!;
    const rl = route === -1 ? 0 : ve[route]! - vs[route]!;
    const nameLen = rl > 0 ? ml + 1 + rl : ml;
    // error.type: the status code as text on a 5xx, else _OTHER
    const errorType = failed ? (status !== -1 && num[status]! >= 500 ? ascii(String(num[status]!)) : OTHER) : undefined;
    let attrsLen = field(kvSize(A_METHOD.length, anyLen[method]!));
    if (route !== -1) attrsLen += field(kvSize(A_ROUTE.length, anyLen[route]!));
    if (status !== -1) attrsLen += field(kvSize(A_STATUS.length, anyLen[status]!));
    if (pid !== -1) attrsLen += field(kvSize(A_PID.length, anyLen[pid]!));
    if (errorType) attrsLen += field(kvSize(A_ERROR_TYPE.length, 1 + varintLen(errorType.length) + errorType.length));
    for (let f = 0; f < n; f++) if (role[f] === ATTR_BOTH) attrsLen += field(kvLen[f]!);
    const tail = this.tail(this.spanTail, this.batchSpan, 0x4a, indexAny);
    const msgLen = failed && error !== -1 ? ve[error]! - vs[error]! : 0;
    const statusLen = failed ? (msgLen > 0 ? 1 + varintLen(msgLen) + msgLen : 0) + 2 : 0;
    const spanLen =
      18 + // trace_id
      10 + // span_id
      (nameLen > 0 ? 1 + varintLen(nameLen) + nameLen : 0) +
      2 + // kind
      9 +
      9 + // start, end
      attrsLen +
      tail.length +
      varintLen(index) +
      (failed ? 1 + varintLen(statusLen) + statusLen : 0) +
      6; // flags (fixed32, field 16: a two-byte key)
    // prettier-ignore

    const w = this.traces();
    w.ensure(spanLen + 16);
    const b = w.buf;
    let pos = w.pos;
    b[pos++] = 0x12; // ScopeSpans.spans
    pos = putVarint(b, pos, spanLen);
    const end = pos + spanLen;
    const ids = this.ids;
    b[pos++] = 0x0a; // trace_id
    b[pos++] = 16;
    for (let j = 0; j < 16; j++) b[pos++] = ids[j]!;
    b[pos++] = 0x12; // span_id
    b[pos++] = 8;
    for (let j = 16; j < 24; j++) b[pos++] = ids[j]!;
    if (nameLen > 0) {
      b[pos++] = 0x2a; // name: "METHOD route"
      pos = putVarint(b, pos, nameLen);
      pos = putOwnRaw(b, pos, vs[method]!, ve[method]!);
      if (rl > 0) {
        b[pos++] = 0x20;
        pos = putOwnRaw(b, pos, vs[route]!, ve[route]!);
      }
    }
    b[pos++] = 0x30; // kind
    b[pos++] = 2; // SPAN_KIND_SERVER
    b[pos++] = 0x39; // start_time_unix_nano
    pos = putFixed64Ms(b, pos, startMs, 0);
    b[pos++] = 0x41; // end_time_unix_nano
    pos = putFixed64Ms(b, pos, startMs, Math.round(durationMs * 1e6));
    pos = this.putAttr(b, pos, A_METHOD, method);
    if (route !== -1) pos = this.putAttr(b, pos, A_ROUTE, route);
    if (status !== -1) pos = this.putAttr(b, pos, A_STATUS, status);
    if (pid !== -1) pos = this.putAttr(b, pos, A_PID, pid);
    if (errorType) {
      const al = 1 + varintLen(errorType.length) + errorType.length;
      b[pos++] = 0x4a;
      pos = putVarint(b, pos, kvSize(A_ERROR_TYPE.length, al));
      b[pos++] = 0x0a;
      pos = putBytes(b, pos, A_ERROR_TYPE, 0, A_ERROR_TYPE.length);
      b[pos++] = 0x12;
      pos = putVarint(b, pos, al);
      b[pos++] = 0x0a; // AnyValue.string_value
      pos = putBytes(b, pos, errorType, 0, errorType.length);
    }
    for (let f = 0; f < n; f++) {
      if (role[f] !== ATTR_BOTH) continue;
      b[pos++] = 0x4a; // attributes
      pos = putVarint(b, pos, kvLen[f]!);
      b[pos++] = 0x0a;
      pos = putOwn(b, pos, this.ks[f]!, this.ke[f]!);
      pos = this.putValue(b, pos, f);
    }
    b.set(tail, pos);
    pos = putVarint(b, pos + tail.length, index);
    if (failed) {
      b[pos++] = 0x7a; // status
      pos = putVarint(b, pos, statusLen);
      if (msgLen > 0) {
        b[pos++] = 0x12; // Status.message
        pos = putOwn(b, pos, vs[error]!, ve[error]!);
      }
      b[pos++] = 0x18; // Status.code
      b[pos++] = 2; // STATUS_CODE_ERROR
    }
    b[pos++] = 0x85; // flags (fixed32, field 16)
    b[pos++] = 0x01;
    b[pos++] = SPAN_FLAGS & 0xff;
    b[pos++] = SPAN_FLAGS >>> 8;
    b[pos++] = 0;
    b[pos++] = 0;
    if (pos !== end) throw new Error(`otlp transcoder: span of ${pos - end + spanLen} bytes, ${spanLen} computed`);
    w.pos = pos;
  }

  /** An attribute of the span's own (key) with field f's value. */
  private putAttr(b: Buffer, pos: number, key: Uint8Array, f: number): number {
    b[pos++] = 0x4a;
    pos = putVarint(b, pos, kvSize(key.length, this.anyLen[f]!));
    b[pos++] = 0x0a;
    pos = putBytes(b, pos, key, 0, key.length);
    return this.putValue(b, pos, f);
  }

  /** KeyValue.value (the tag, the length, the AnyValue) of field f. */
  private putValue(b: Buffer, pos: number, f: number): number {
    b[pos++] = 0x12; // KeyValue.value
    pos = putVarint(b, pos, this.anyLen[f]!);
    const kd = this.kind[f]!;
    if (kd === STR) {
      b[pos++] = 0x0a; // AnyValue.string_value
      return putOwn(b, pos, this.vs[f]!, this.ve[f]!);
    }
    if (kd === NUM) {
      const v = this.num[f]!;
      if (Number.isSafeInteger(v)) {
        b[pos++] = 0x18; // AnyValue.int_value
        return putVarint(b, pos, v);
      }
      b[pos++] = 0x21; // AnyValue.double_value
      b.writeDoubleLE(v, pos);
      return pos + 8;
    }
    if (kd === NULL) return pos;
    b[pos++] = 0x10; // AnyValue.bool_value
    b[pos++] = kd === TRUE ? 1 : 0;
    return pos;
  }

  /** The trace id and span id of record `index` into this.ids: SpanIds.at's bytes, without its two Buffers. */
  private spanIds(index: number): void {
    const seed = (this.seed ??= this.idSource!.seedBytes());
    const ids = this.ids;
    for (let j = 0; j < 24; j++) ids[j] = seed[j]!;
    const t = (((seed[12]! << 24) | (seed[13]! << 16) | (seed[14]! << 8) | seed[15]!) ^ index) >>> 0;
    ids[12] = t >>> 24;
    ids[13] = (t >>> 16) & 0xff;
    ids[14] = (t >>> 8) & 0xff;
    ids[15] = t & 0xff;
    const sp = (((seed[20]! << 24) | (seed[21]! << 16) | (seed[22]! << 8) | seed[23]!) ^ index) >>> 0;
    ids[20] = sp >>> 24;
    ids[21] = (sp >>> 16) & 0xff;
    ids[22] = (sp >>> 8) & 0xff;
    ids[23] = sp & 0xff;
    let zero = true;
    for (let j = 16; j < 24; j++) if (ids[j] !== 0) zero = false;
    if (zero) ids[16] = 1;
    zero = true;
    for (let j = 0; j < 16; j++) if (ids[j] !== 0) zero = false;
    if (zero) ids[0] = 1;
  }

  /** The batch id KeyValue and the batch index KeyValue's bytes before the index's varint, per varint length. */
  private tail(cache: Buffer[], batch: Buffer, tag: number, indexAny: number): Buffer {
    let t = cache[indexAny];
    if (!t) {
      const indexKv = kvSize(K_BATCH_INDEX.length, indexAny);
      t = Buffer.concat([
        batch,
        Buffer.from([tag, indexKv, 0x0a, K_BATCH_INDEX.length]),
        K_BATCH_INDEX,
        Buffer.from([0x12, indexAny, 0x18]),
      ]);
      cache[indexAny] = t;
    }
    return t;
  }
}

/** A length-delimited field's bytes with its one-byte tag: tag, length, body (`len` bytes). */
function field(len: number): number {
  return 1 + varintLen(len) + len;
}

/** A KeyValue's length: the key (tag, length, bytes) and the value (tag, length, AnyValue). */
function kvSize(keyLen: number, anyLen: number): number {
  return 1 + varintLen(keyLen) + keyLen + 1 + varintLen(anyLen) + anyLen;
}

/** The sidekick.batch.id KeyValue as attributes field `field` (6 of a LogRecord, 9 of a Span). */
function batchKeyValue(field: number, batchId: string): Buffer {
  const w = new Writer(64);
  keyValue(w, field, ['sidekick.batch.id', batchId]);
  return Buffer.from(w.result());
}

/** The next '"' from k (the part has no escapes), or -1: a JS scan for short strings, memchr for long ones. */
function quote(p: Buffer, k: number, lim: number): number {
  const stop = Math.min(k + 24, lim);
  for (; k < stop; k++) if (p[k] === 0x22) return k;
  return k < lim ? p.indexOf(0x22, k) : -1;
}

/** key[from, to) (a constant: short) with its length in front. */
function putBytes(b: Buffer, pos: number, key: Uint8Array, from: number, to: number): number {
  pos = putVarint(b, pos, to - from);
  for (let j = from; j < to; j++) b[pos++] = key[j]!;
  return pos;
}

/** The part's bytes [from, to) (kept at the start of b) with their length in front. */
function putOwn(b: Buffer, pos: number, from: number, to: number): number {
  return putOwnRaw(b, putVarint(b, pos, to - from), from, to);
}

/** The part's bytes [from, to): a loop for short runs, else copyWithin (a memmove, and no view to allocate). */
function putOwnRaw(b: Buffer, pos: number, from: number, to: number): number {
  if (to - from > 32) {
    b.copyWithin(pos, from, to);
    return pos + to - from;
  }
  for (let j = from; j < to; j++) b[pos++] = b[j]!;
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
