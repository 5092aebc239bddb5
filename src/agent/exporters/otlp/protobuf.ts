// OTLP protobuf encoding of the mapped model (./mapping.ts): ExportLogsServiceRequest and ExportTraceServiceRequest,
// field numbers from the official opentelemetry-proto v1.11.0 (vendored for the tests under
// test/fixtures/opentelemetry-proto/, which decode this output with protobufjs). Hand-written because it is the
// hot path of every export and the generic encoders were slower (docs/benchmarks.md, "OTLP encoders"): one growable
// buffer, nested messages written in place with their length prefixed afterwards (one byte reserved, the body moved
// only when the length needs more), fields in field-number order, proto3 defaults (0, '', empty) left out.
import type { Attr, AttrValue, LogItem, SpanItem } from './mapping.js';

export interface Envelope {
  /** Resource attributes (string values). */
  resource: [string, string][];
  scopeName: string;
  scopeVersion: string;
}

// wire types
export const VARINT = 0;
export const I64 = 1;
export const LEN = 2;
export const I32 = 5;
const tag = (field: number, wire: number): number => (field << 3) | wire;

export class Writer {
  buf: Buffer;
  pos = 0;

  /** Where the message starts: after `prefix`, bytes the caller keeps in the same buffer to copy from (./transcode.ts). */
  private readonly start: number;

  /** `reuse`: a buffer to write into when it is large enough (its old bytes are overwritten), else a new one. */
  constructor(size: number, prefix?: Buffer, reuse?: Buffer) {
    const need = size + (prefix?.length ?? 0);
    this.buf = reuse && reuse.length >= need ? reuse : Buffer.allocUnsafe(need);
    this.start = prefix ? prefix.copy(this.buf, 0) : 0;
    this.pos = this.start;
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  varint(v: number): void {
    this.ensure(10);
    this.pos = putVarint(this.buf, this.pos, v);
  }

  /** A field key: one byte for field numbers below 16 (all but Span.flags 16 here). */
  key(field: number, wire: number): void {
    const t = tag(field, wire);
    if (t < 0x80) {
      this.ensure(1);
      this.buf[this.pos++] = t;
    } else this.varint(t);
  }

  /** A fixed64 of Unix ms (fractions kept to the nanosecond) + `plusNs`, exact (putFixed64Ms). */
  fixed64Ms(field: number, ms: number, plusNs = 0): void {
    this.key(field, I64);
    this.ensure(8);
    this.pos = putFixed64Ms(this.buf, this.pos, ms, plusNs);
  }

  fixed32(field: number, v: number): void {
    this.key(field, I32);
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.pos += 4;
  }

  double(field: number, v: number): void {
    this.key(field, I64);
    this.ensure(8);
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  string(field: number, s: string): void {
    this.key(field, LEN);
    // Short ASCII (keys, most values): copied here, one char a byte, the length known up front (< 128: one byte).
    // Buffer#write is a call into C++ whose fixed cost is many times that of copying a short string in JS.
    const n = s.length;
    if (n < 0x80) {
      this.ensure(n + 1);
      const b = this.buf;
      const at = this.pos + 1;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        b[at + i] = c;
      }
      if (i === n) {
        b[this.pos] = n;
        this.pos = at + n;
        return;
      }
      // not ASCII: written again below (what was copied is overwritten)
    }
    // otherwise: the length is known before writing when it fits one byte; else write, then prefix the length
    const max = n * 3;
    this.ensure(max + 5);
    if (max < 128) {
      const at = this.pos++;
      const n = this.buf.write(s, this.pos);
      this.buf[at] = n;
      this.pos += n;
      return;
    }
    const at = this.begin();
    this.pos += this.buf.write(s, this.pos);
    this.end(at);
  }

  bytes(field: number, b: Buffer): void {
    this.key(field, LEN);
    const n = b.length;
    this.varint(n);
    this.ensure(n);
    // ids (8 and 16 bytes): a loop is cheaper than Buffer#copy's call into C++
    if (n <= 32) for (let i = 0; i < n; i++) this.buf[this.pos + i] = b[i]!;
    else b.copy(this.buf, this.pos);
    this.pos += n;
  }

  /** Opens a length-delimited body: returns where its (one-byte, for now) length goes. */
  begin(): number {
    this.ensure(1);
    return this.pos++;
  }

  /** Closes the body opened at `at`: writes its length, moving the body right when the length takes > 1 byte. */
  end(at: number): void {
    const len = this.pos - at - 1;
    if (len < 0x80) {
      this.buf[at] = len;
      return;
    }
    let n = 1;
    for (let v = len; v >= 0x80; v = Math.floor(v / 128)) n++;
    this.ensure(n - 1);
    this.buf.copyWithin(at + n, at + 1, this.pos);
    let v = len;
    let p = at;
    while (v >= 0x80) {
      this.buf[p++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    this.buf[p] = v;
    this.pos += n - 1;
  }

  message(field: number): number {
    this.key(field, LEN);
    return this.begin();
  }

  result(): Buffer {
    return this.buf.subarray(this.start, this.pos);
  }
}

/** v as a protobuf varint at b[pos]; returns the position after it. */
export function putVarint(b: Buffer, pos: number, v: number): number {
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

/**
 * Unix ms (fractions kept to the nanosecond) + `plusNs` as a fixed64 of nanoseconds at b[pos], exact: ms × 10^6 does
 * not fit a double. Returns the position after it.
 */
export function putFixed64Ms(b: Buffer, pos: number, ms: number, plusNs: number): number {
  const whole = Math.floor(ms);
  const fracNs = Math.round((ms - whole) * 1e6) + plusNs;
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

// AnyValue: string 1, bool 2, int 3, double 4, array 5, kvlist 6 (an empty AnyValue for JSON null)
function anyValue(w: Writer, field: number, v: AttrValue): void {
  const at = w.message(field);
  if (typeof v === 'string') w.string(1, v);
  else if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) {
      w.key(3, VARINT);
      w.varint(v);
    } else w.double(4, v);
  } else if (typeof v === 'boolean') {
    w.key(2, VARINT);
    w.varint(v ? 1 : 0);
  } else if (Array.isArray(v)) {
    const arr = w.message(5);
    for (const x of v) anyValue(w, 1, x); // ArrayValue.values = 1
    w.end(arr);
  } else if (v !== null) {
    const kvl = w.message(6);
    for (const a of v.kv) keyValue(w, 1, a); // KeyValueList.values = 1
    w.end(kvl);
  }
  w.end(at);
}

// KeyValue: key 1, value 2
export function keyValue(w: Writer, field: number, [k, v]: Attr): void {
  const at = w.message(field);
  if (k) w.string(1, k);
  anyValue(w, 2, v);
  w.end(at);
}

// Resource: attributes 1 · InstrumentationScope: name 1, version 2
function envelope(w: Writer, env: Envelope): void {
  const res = w.message(1); // ResourceX.resource = 1
  for (const a of env.resource) keyValue(w, 1, a);
  w.end(res);
}

function scope(w: Writer, env: Envelope): void {
  const sc = w.message(1); // ScopeX.scope = 1
  if (env.scopeName) w.string(1, env.scopeName);
  if (env.scopeVersion) w.string(2, env.scopeVersion);
  w.end(sc);
}

/** ExportLogsServiceRequest { resource_logs 1: ResourceLogs { resource 1, scope_logs 2: ScopeLogs { scope 1, log_records 2 } } } */
export function encodeLogs(env: Envelope, logs: LogItem[]): Buffer {
  const w = new Writer(256 + logs.length * 512);
  const at = beginLogs(w, env);
  for (const l of logs) logRecord(w, l);
  return endLogs(w, env, at);
}

/**
 * Opens a request (ExportLogsServiceRequest or ExportTraceServiceRequest: the same envelope, field 1 { resource 1,
 * field 2 { scope 1, records 2 } }) with room for its envelope, which endLogs writes in front of the records once
 * their length is known: nothing is moved (the records of a part are ~30 KB). Returns where the records start.
 */
export function beginLogs(w: Writer, env: Envelope): number {
  const head = envelopeOf(env);
  const room = head.resource.length + head.scope.length + 12; // + two tags and two varints of at most 5 bytes
  w.ensure(room);
  w.pos += room;
  return w.pos;
}

export function endLogs(w: Writer, env: Envelope, recordsAt: number): Buffer {
  const { resource, scope } = envelopeOf(env);
  const b = w.buf;
  const inner = scope.length + (w.pos - recordsAt); // ScopeX: scope + records
  const outer = resource.length + 1 + varintLen(inner) + inner; // ResourceX: resource + ScopeX
  let at = recordsAt - scope.length;
  b.set(scope, at);
  at -= varintLen(inner);
  putVarint(b, at, inner);
  b[--at] = 0x12; // ResourceX.scope_x = 2
  at -= resource.length;
  b.set(resource, at);
  at -= varintLen(outer);
  putVarint(b, at, outer);
  b[--at] = 0x0a; // request.resource_x = 1
  return b.subarray(at, w.pos);
}

const envelopes = new WeakMap<Envelope, { resource: Buffer; scope: Buffer }>();

/** The resource field and the scope field of an envelope, encoded once. */
function envelopeOf(env: Envelope): { resource: Buffer; scope: Buffer } {
  let e = envelopes.get(env);
  if (!e) {
    const r = new Writer(256);
    envelope(r, env);
    const sc = new Writer(128);
    scope(sc, env);
    e = { resource: Buffer.from(r.result()), scope: Buffer.from(sc.result()) };
    envelopes.set(env, e);
  }
  return e;
}

/** Bytes of v as a varint (v < 2^53, or negative: 10). A chain of compares: Math.log2 cost more. */
export function varintLen(v: number): number {
  if (v < 0x80) return v < 0 ? 10 : 1;
  if (v < 0x4000) return 2;
  if (v < 0x200000) return 3;
  if (v < 0x10000000) return 4;
  if (v < 0x800000000) return 5;
  if (v < 0x40000000000) return 6;
  if (v < 0x2000000000000) return 7;
  return 8;
}

/**
 * LogRecord (ScopeLogs.log_records = 2): time 1 (fixed64), severity_number 2, severity_text 3, attributes 6, flags 8
 * (fixed32), trace_id 9, span_id 10, observed_time 11 (fixed64), event_name 12. ./transcode.ts writes the same bytes
 * without the model: keep the two in step (test/agent-otlp-transcode.test.ts compares them).
 */
export function logRecord(w: Writer, l: LogItem): void {
  const lr = w.message(2);
  w.fixed64Ms(1, l.timeMs);
  if (l.severityNumber) {
    w.key(2, VARINT);
    w.varint(l.severityNumber);
  }
  if (l.severityText) w.string(3, l.severityText);
  for (const a of l.attrs) keyValue(w, 6, a);
  if (l.flags) w.fixed32(8, l.flags);
  if (l.traceId) w.bytes(9, l.traceId);
  if (l.spanId) w.bytes(10, l.spanId);
  w.fixed64Ms(11, l.observedMs);
  if (l.eventName) w.string(12, l.eventName);
  w.end(lr);
}

/** ExportTraceServiceRequest { resource_spans 1: ResourceSpans { resource 1, scope_spans 2: ScopeSpans { scope 1, spans 2 } } } */
export function encodeTraces(env: Envelope, spans: SpanItem[]): Buffer {
  const w = new Writer(256 + spans.length * 512);
  const at = beginTraces(w, env);
  for (const s of spans) spanRecord(w, s);
  return endTraces(w, env, at);
}

/** The same envelope as the logs request's: resource_spans 1 { resource 1, scope_spans 2 { scope 1, spans 2 } }. */
export const beginTraces = beginLogs;
export const endTraces = endLogs;

/**
 * Span (ScopeSpans.spans = 2): trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6, start 7, end 8
 * (fixed64), attributes 9, status 15 { message 2, code 3 }, flags 16 (fixed32). ./transcode.ts writes the same bytes
 * without the model.
 */
export function spanRecord(w: Writer, s: SpanItem): void {
  const sp = w.message(2);
  w.bytes(1, s.traceId);
  w.bytes(2, s.spanId);
  if (s.traceState) w.string(3, s.traceState);
  if (s.parentSpanId) w.bytes(4, s.parentSpanId);
  if (s.name) w.string(5, s.name);
  w.key(6, VARINT);
  w.varint(2); // SPAN_KIND_SERVER
  w.fixed64Ms(7, s.startMs);
  w.fixed64Ms(8, s.startMs, s.durationNs);
  for (const a of s.attrs) keyValue(w, 9, a);
  if (s.statusCode || s.statusMessage) {
    const st = w.message(15);
    if (s.statusMessage) w.string(2, s.statusMessage);
    if (s.statusCode) {
      w.key(3, VARINT);
      w.varint(s.statusCode);
    }
    w.end(st);
  }
  if (s.flags) w.fixed32(16, s.flags);
  w.end(sp);
}

/**
 * The partial success of an ExportLogsServiceResponse / ExportTraceServiceResponse (protobuf):
 * { partial_success 1: { rejected 1 (int64), error_message 2 } }. Unknown fields are skipped; garbage gives zeros.
 */
export function decodePartialSuccess(b: Buffer): { rejected: number; message: string } {
  const out = { rejected: 0, message: '' };
  const r = new Reader(b);
  while (r.more()) {
    const [field, wire] = r.key();
    if (field === 1 && wire === LEN) {
      const inner = new Reader(r.lenBytes());
      while (inner.more()) {
        const [f, w] = inner.key();
        if (f === 1 && w === VARINT) out.rejected = inner.varint();
        else if (f === 2 && w === LEN) out.message = inner.lenBytes().toString('utf8');
        else inner.skip(w);
      }
    } else r.skip(wire);
  }
  return out;
}

/** google.rpc.Status { code 1, message 2, details 3 }: the message of a refusal's protobuf body ('' if none). */
export function decodeStatusMessage(b: Buffer): string {
  const r = new Reader(b);
  let message = '';
  while (r.more()) {
    const [field, wire] = r.key();
    if (field === 2 && wire === LEN) message = r.lenBytes().toString('utf8');
    else r.skip(wire);
  }
  return message;
}

/** Just enough of a protobuf reader for the two small answers above; throws on truncated input. */
class Reader {
  private pos = 0;

  constructor(private readonly b: Buffer) {}

  more(): boolean {
    return this.pos < this.b.length;
  }

  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.b.length) throw new RangeError('truncated varint');
      const byte = this.b[this.pos++]!;
      v += (byte & 0x7f) * mul;
      if (byte < 0x80) return v;
      mul *= 128;
    }
    throw new RangeError('varint too long');
  }

  key(): [number, number] {
    const k = this.varint();
    return [Math.floor(k / 8), k & 7];
  }

  lenBytes(): Buffer {
    const n = this.varint();
    if (this.pos + n > this.b.length) throw new RangeError('truncated field');
    const out = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  skip(wire: number): void {
    if (wire === VARINT) this.varint();
    else if (wire === I64) this.pos += 8;
    else if (wire === LEN) this.lenBytes();
    else if (wire === I32) this.pos += 4;
    else throw new RangeError(`unsupported wire type ${wire}`);
    if (this.pos > this.b.length) throw new RangeError('truncated field');
  }
}
