// The mapping from agent records (NDJSON lines) to OTLP LogRecords and SERVER spans: one deterministic function of
// the part, so a retry (or a replay after a restart) sends the same LogRecords and the same span ids again, and a
// receiver can drop the duplicate on (sidekick.batch.id, sidekick.batch.index). The table is in docs/agent.md
// ("Send to an OpenTelemetry Collector"); both encoders (./protobuf.ts, ./json.ts) serialize this model as it is.
//
//   LogRecord   time = record.ts (Unix ms, or an ISO date) else the time the agent accepted it · observed time = the
//               time the agent accepted it (its spool frame's append time; never before the record's time, or for a
//               request its end) · severity ERROR (17) when status >= 500
//               or an `error` field, else INFO (9) · event_name = type · attributes = every field of the record, plus
//               sidekick.batch.id / sidekick.batch.index · trace/span id of the request's span, when there is one
//   Span        for a request record (a string `method` and a numeric `duration_ms`: what the PHP client and the Node
//               middleware send): SERVER, `METHOD route`, start = ts, end = ts + duration_ms, HTTP semantic
//               conventions, status ERROR on 5xx or `error`; joins the W3C `traceparent` on the record if any.
import { createHash } from 'node:crypto';
import type { ExportPart } from '../types.js';

/** An attribute value as JSON gave it, after the limits: encoders map string/bool/int/double/array/kvlist/empty. */
export type AttrValue = string | number | boolean | null | AttrValue[] | KvList;
/** A nested object, as an OTLP kvlist (key order kept). */
export interface KvList {
  kv: Attr[];
}
export type Attr = [key: string, value: AttrValue];

export interface LogItem {
  /** Unix ms (fractions allowed: the encoders keep them to the nanosecond). */
  timeMs: number;
  observedMs: number;
  severityNumber: number;
  severityText: string;
  eventName: string;
  attrs: Attr[];
  traceId: Buffer | undefined;
  spanId: Buffer | undefined;
  flags: number;
}

export interface SpanItem {
  traceId: Buffer;
  spanId: Buffer;
  parentSpanId: Buffer | undefined;
  traceState: string;
  name: string;
  startMs: number;
  /** Exact, in whole nanoseconds: start (a ~1.7e12 ms double) + duration would lose the sub-microsecond digits. */
  durationNs: number;
  attrs: Attr[];
  statusCode: number;
  statusMessage: string;
  flags: number;
}

export type RequestSignal = 'logs' | 'traces' | 'both';

export interface MapOptions {
  requestSignal: RequestSignal;
  /** Strings longer than this many UTF-16 units are cut to it (counted). */
  maxValueLength: number;
  /** Objects and arrays nested deeper than this become their JSON text (counted). */
  maxDepth: number;
}

export interface Mapped {
  /** The LogRecords as a model, in order; empty when `logsBody` carries them already encoded (./transcode.ts). */
  logs: LogItem[];
  logCount: number;
  /** The ExportLogsServiceRequest, protobuf-encoded, when the transcoder wrote it straight from the NDJSON. */
  logsBody?: Buffer;
  /** The spans as a model, in order; empty when `tracesBody` carries them already encoded. */
  spans: SpanItem[];
  spanCount: number;
  /** The ExportTraceServiceRequest, protobuf-encoded, when the transcoder wrote it. */
  tracesBody?: Buffer;
  /** Per record of the part, in order: where its outcome is decided (its LogRecord, else its span), or unmappable. */
  primary: ('logs' | 'traces' | 'none')[];
  /** Lines that are not a JSON object (cannot become a LogRecord): dead-lettered with reason `unmappable`. */
  unmappable: Buffer[];
  truncated: number;
  flattened: number;
}

export const SEVERITY_INFO = 9;
export const SEVERITY_ERROR = 17;
export const SPAN_KIND_SERVER = 2;
export const STATUS_UNSET = 0;
export const STATUS_ERROR = 2;
/** Span flags: the sampled trace flag, and "the parent's remoteness is known" (+ "it is remote" for a traceparent). */
const FLAG_SAMPLED = 0x01;
const FLAG_HAS_IS_REMOTE = 0x100;
const FLAG_IS_REMOTE = 0x200;

/** Fields the span carries as HTTP semantic conventions (or as its times, name, ids), not under their own names. */
export const SPAN_OWN_FIELDS = new Set([
  'ts',
  'type',
  'method',
  'route',
  'status',
  'duration_ms',
  'pid',
  'traceparent',
  'tracestate',
]);
/** Attributes the agent sets itself: a record field of that name is left out (OTLP attribute keys MUST be unique). */
export const BATCH_KEYS = new Set(['sidekick.batch.id', 'sidekick.batch.index']);
export const SPAN_SET_KEYS = [
  'http.request.method',
  'http.route',
  'http.response.status_code',
  'process.pid',
  'error.type',
];
const SPAN_SKIP = new Set([...SPAN_OWN_FIELDS, ...BATCH_KEYS]);
/** Times past 2^63 ns (year 2262: a ts in µs or ns, say) fit no receiver's timestamp (the protobuf encoder threw). */
export const MAX_TIME_MS = 9_223_372_036_854;
/** Durations are capped (a bogus 1e400 is Infinity) so that start + duration stays an exact, representable time. */
export const MAX_DURATION_MS = 30 * 86_400_000;

/** The time the agent accepted record `index` of a spool batch: its frame's append time. */
export function acceptedAt(part: ExportPart, i: number): number {
  const t = part.acceptedAt;
  if (!t || t.starts.length === 0) return part.firstAcceptedAt ?? Date.now();
  const index = part.firstIndex + i;
  // the last frame starting at or before the record (starts ascend): a binary search, as a batch of ~1,600 records
  // can hold dozens of frames and this runs for every record
  const starts = t.starts;
  if (starts[0]! > index) return t.times[0]!;
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (starts[mid]! <= index) lo = mid;
    else hi = mid - 1;
  }
  return t.times[lo]!;
}

export class RecordMapper {
  private truncated = 0;
  private flattened = 0;

  constructor(private readonly opts: MapOptions) {}

  get options(): MapOptions {
    return this.opts;
  }

  map(part: ExportPart): Mapped {
    this.resetCounts();
    const out = emptyMapped();
    const ids = new SpanIds(part.batchId);
    const p = part.payload;
    const parsed = parseAll(p);
    let start = 0;
    for (let i = 0; start < p.length; i++) {
      let nl = p.indexOf(0x0a, start);
      if (nl === -1) nl = p.length - 1;
      const line = p.subarray(start, nl + 1);
      start = nl + 1;
      this.mapOne(part, i, line, parsed ? parsed[i] : parseLine(line), ids, out);
    }
    out.truncated = this.truncated;
    out.flattened = this.flattened;
    return out;
  }

  /** Zeroes the truncated/flattened counts (map does; a caller of mapOne reads them with counts()). */
  resetCounts(): void {
    this.truncated = 0;
    this.flattened = 0;
  }

  counts(): { truncated: number; flattened: number } {
    return { truncated: this.truncated, flattened: this.flattened };
  }

  /** Record `i` of the part (`rec`: its parsed line, undefined when not JSON) into `out`, in order. */
  mapOne(part: ExportPart, i: number, line: Buffer, rec: unknown, ids: SpanIds, out: Mapped): void {
    if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) {
      out.unmappable.push(line);
      out.primary.push('none');
      return;
    }
    const index = part.firstIndex + i;
    const r = rec as Record<string, unknown>;
    const accepted = acceptedAt(part, i);
    const timeMs = recordTime(r.ts) ?? accepted;
    const isRequest = typeof r.method === 'string' && typeof r.duration_ms === 'number';
    // A spool frame is stamped with its first line's arrival, up to ~2 ms before a later line of it: never report
    // a record observed before it happened (a request, before it ended).
    const ended = isRequest ? timeMs + Math.min(Math.max(0, r.duration_ms as number), MAX_DURATION_MS) : timeMs;
    const observedMs = Math.min(Math.max(accepted, ended), MAX_TIME_MS);
    const error = Boolean(r.error); // a message, true, an object; not null, false, 0 or ''
    const status = typeof r.status === 'number' ? r.status : undefined;
    const failed = error || (status !== undefined && status >= 500);
    const parent = parseTraceparent(r.traceparent);
    const wantSpan = isRequest && this.opts.requestSignal !== 'logs';
    const wantLog = !isRequest || this.opts.requestSignal !== 'traces';
    let span: SpanItem | undefined;
    if (wantSpan) {
      span = this.span(r, index, part.batchId, timeMs, status, failed, parent, ids);
      out.spans.push(span);
      out.spanCount++;
    }
    if (wantLog) {
      const attrs = this.attrs(r, BATCH_KEYS);
      attrs.push(['sidekick.batch.id', part.batchId], ['sidekick.batch.index', index]);
      out.logs.push({
        timeMs,
        observedMs,
        severityNumber: failed ? SEVERITY_ERROR : SEVERITY_INFO,
        severityText: failed ? 'ERROR' : 'INFO',
        eventName: typeof r.type === 'string' ? this.str(r.type) : '',
        attrs,
        // the log belongs to the request's span; without one, to the app's span named by the traceparent
        traceId: span?.traceId ?? parent?.traceId,
        spanId: span?.spanId ?? parent?.spanId,
        flags: span ? span.flags & 0xff : (parent?.flags ?? 0),
      });
      out.logCount++;
    }
    out.primary.push(wantLog ? 'logs' : 'traces');
  }

  private span(
    r: Record<string, unknown>,
    index: number,
    batchId: string,
    startMs: number,
    status: number | undefined,
    failed: boolean,
    parent: Traceparent | undefined,
    ids: SpanIds,
  ): SpanItem {
    const method = this.str(r.method as string);
    const route = typeof r.route === 'string' ? this.str(r.route) : undefined;
    const attrs: Attr[] = [['http.request.method', method]];
    if (route !== undefined) attrs.push(['http.route', route]);
    if (status !== undefined) attrs.push(['http.response.status_code', status]);
    if (typeof r.pid === 'number') attrs.push(['process.pid', r.pid]);
    if (failed) attrs.push(['error.type', status !== undefined && status >= 500 ? String(status) : '_OTHER']);
    for (const a of this.attrs(r, SPAN_SKIP)) {
      if (SPAN_SET_KEYS.includes(a[0]) && attrs.some((b) => b[0] === a[0])) continue; // the agent's value wins
      attrs.push(a);
    }
    attrs.push(['sidekick.batch.id', batchId], ['sidekick.batch.index', index]);
    const own = ids.at(index);
    const traceState = typeof r.tracestate === 'string' ? r.tracestate.slice(0, 512) : '';
    return {
      traceId: parent?.traceId ?? own.traceId,
      spanId: own.spanId,
      parentSpanId: parent?.spanId,
      traceState: parent ? traceState : '',
      name: route ? `${method} ${route}` : method,
      startMs,
      durationNs: Math.round(Math.min(Math.max(0, r.duration_ms as number), MAX_DURATION_MS) * 1e6),
      attrs,
      statusCode: failed ? STATUS_ERROR : STATUS_UNSET,
      statusMessage: failed && typeof r.error === 'string' ? this.str(r.error) : '',
      flags: parent ? (parent.flags & 0xff) | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE : FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
    };
  }

  private attrs(r: Record<string, unknown>, skip: Set<string>): Attr[] {
    const out: Attr[] = [];
    for (const key in r) {
      if (skip.has(key)) continue;
      out.push([key, this.value(r[key], 1)]);
    }
    return out;
  }

  private value(v: unknown, depth: number): AttrValue {
    if (typeof v === 'string') return this.str(v);
    if (typeof v !== 'object' || v === null) return v as AttrValue; // number, boolean, null (JSON has nothing else)
    if (depth > this.opts.maxDepth) {
      this.flattened++;
      return this.str(JSON.stringify(v));
    }
    if (Array.isArray(v)) return v.map((x) => this.value(x, depth + 1));
    const kv: Attr[] = [];
    for (const key in v) kv.push([key, this.value((v as Record<string, unknown>)[key], depth + 1)]);
    return { kv };
  }

  private str(s: string): string {
    if (s.length <= this.opts.maxValueLength) return s;
    this.truncated++;
    let cut = this.opts.maxValueLength;
    const last = s.charCodeAt(cut - 1);
    if (last >= 0xd800 && last <= 0xdbff) cut--; // never split a surrogate pair (the encoders would emit U+FFFD)
    return s.slice(0, cut);
  }
}

/**
 * Every line of the part in one JSON.parse, as the elements of an array: a third cheaper per record than a
 * toString + JSON.parse per line (per-call costs). The spool holds only lines the receiver found to be one JSON
 * object each (receivers/ndjson.ts, exact to JSON.parse) and a raw newline cannot occur inside a JSON value, so lines
 * and elements correspond. Undefined when the text is not one valid array of one value per line (a line that is not
 * JSON): the caller then parses line by line and finds the bad one.
 */
export function parseAll(p: Buffer): unknown[] | undefined {
  if (p.length === 0 || p[p.length - 1] !== 0x0a) return undefined;
  let lines = 0;
  for (let at = p.indexOf(0x0a); at !== -1; at = p.indexOf(0x0a, at + 1)) lines++;
  try {
    const all: unknown = JSON.parse(`[${p.toString('utf8', 0, p.length - 1).replaceAll('\n', ',')}]`);
    return Array.isArray(all) && all.length === lines ? all : undefined;
  } catch {
    return undefined;
  }
}

export function parseLine(line: Buffer): unknown {
  try {
    return JSON.parse(line.toString('utf8'));
  } catch {
    return undefined;
  }
}

export function emptyMapped(): Mapped {
  return { logs: [], logCount: 0, spans: [], spanCount: 0, primary: [], unmappable: [], truncated: 0, flattened: 0 };
}

/** ts as Unix ms: a finite number, or an ISO 8601 string; anything else is not a time (the accepted time is used). */
export function recordTime(ts: unknown): number | undefined {
  if (typeof ts === 'number') return ts >= 0 && ts < MAX_TIME_MS ? ts : undefined;
  if (typeof ts === 'string') {
    const t = Date.parse(ts);
    return t >= 0 && t < MAX_TIME_MS ? t : undefined; // (NaN compares false)
  }
  return undefined;
}

export interface Traceparent {
  traceId: Buffer;
  spanId: Buffer;
  flags: number;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;

/** A W3C traceparent (version 00, or a later one read as 00), or undefined when invalid (all-zero ids, version ff). */
export function parseTraceparent(v: unknown): Traceparent | undefined {
  if (typeof v !== 'string' || v.length > 512) return undefined;
  const m = TRACEPARENT.exec(v.trim());
  if (!m || m[1] === 'ff') return undefined;
  if (m[1] === '00' && v.trim().length !== 55) return undefined;
  if (/^0+$/.test(m[2]!) || /^0+$/.test(m[3]!)) return undefined;
  return { traceId: Buffer.from(m[2]!, 'hex'), spanId: Buffer.from(m[3]!, 'hex'), flags: parseInt(m[4]!, 16) };
}

/**
 * Span and trace ids for records without a traceparent: random-looking (a SHA-256 of the spool batch id, whose spool
 * id part is random) and a pure function of (batch id, index), so a retry or a replay sends the very same span.
 */
export class SpanIds {
  private seed: Buffer | undefined;

  constructor(private readonly batchId: string) {}

  /** The 32 bytes the ids are cut from (./transcode.ts writes the same ids without the two Buffers per record). */
  seedBytes(): Buffer {
    return (this.seed ??= createHash('sha256').update(this.batchId).digest());
  }

  at(index: number): { traceId: Buffer; spanId: Buffer } {
    this.seed ??= this.seedBytes();
    const traceId = Buffer.from(this.seed.subarray(0, 16));
    const spanId = Buffer.from(this.seed.subarray(16, 24));
    // index into the last 4 bytes of each: distinct within the batch, still never all-zero in practice
    traceId.writeUInt32BE((traceId.readUInt32BE(12) ^ index) >>> 0, 12);
    spanId.writeUInt32BE((spanId.readUInt32BE(4) ^ index) >>> 0, 4);
    if (spanId.every((b) => b === 0)) spanId[0] = 1;
    if (traceId.every((b) => b === 0)) traceId[0] = 1;
    return { traceId, spanId };
  }
}
