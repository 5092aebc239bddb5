// OTLP/HTTP JSON encoding of the mapped model (./mapping.ts), as the OTLP specification defines it on top of the
// proto3 JSON mapping: lowerCamelCase field names, trace and span ids as hex (not base64), 64-bit integers
// (timeUnixNano, intValue) as decimal strings, enums as integers, default values left out.
import type { Attr, AttrValue, LogItem, SpanItem } from './mapping.js';
import type { Envelope } from './protobuf.js';

type Json = Record<string, unknown>;

/** Unix ms (fractions to the nanosecond) + `plusNs`, as the decimal string of its nanoseconds, exact. */
export function nanosString(ms: number, plusNs = 0): string {
  let whole = Math.floor(ms);
  let ns = Math.round((ms - whole) * 1e6) + plusNs;
  whole += Math.floor(ns / 1e6);
  ns %= 1e6;
  if (whole === 0) return String(ns);
  return `${whole}${String(ns).padStart(6, '0')}`;
}

function anyValue(v: AttrValue): Json {
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) return { intValue: String(v) };
    // proto3 JSON spells the non-finite doubles as strings (JSON.parse gives ±Infinity for 1e400; stringify, null)
    return { doubleValue: Number.isFinite(v) ? v : String(v) };
  }
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { arrayValue: { values: v.map(anyValue) } };
  if (v === null) return {};
  return { kvlistValue: { values: v.kv.map(keyValue) } };
}

function keyValue([key, v]: Attr): Json {
  return { key, value: anyValue(v) };
}

function resource(env: Envelope): Json {
  return { attributes: env.resource.map(keyValue) };
}

function scope(env: Envelope): Json {
  const s: Json = {};
  if (env.scopeName) s.name = env.scopeName;
  if (env.scopeVersion) s.version = env.scopeVersion;
  return s;
}

export function encodeLogsJson(env: Envelope, logs: LogItem[]): Buffer {
  const logRecords = logs.map((l) => {
    const o: Json = { timeUnixNano: nanosString(l.timeMs), observedTimeUnixNano: nanosString(l.observedMs) };
    if (l.severityNumber) o.severityNumber = l.severityNumber;
    if (l.severityText) o.severityText = l.severityText;
    if (l.attrs.length) o.attributes = l.attrs.map(keyValue);
    if (l.flags) o.flags = l.flags;
    if (l.traceId) o.traceId = l.traceId.toString('hex');
    if (l.spanId) o.spanId = l.spanId.toString('hex');
    if (l.eventName) o.eventName = l.eventName;
    return o;
  });
  const body = { resourceLogs: [{ resource: resource(env), scopeLogs: [{ scope: scope(env), logRecords }] }] };
  return Buffer.from(JSON.stringify(body));
}

export function encodeTracesJson(env: Envelope, spans: SpanItem[]): Buffer {
  const out = spans.map((s) => {
    const o: Json = { traceId: s.traceId.toString('hex'), spanId: s.spanId.toString('hex') };
    if (s.traceState) o.traceState = s.traceState;
    if (s.parentSpanId) o.parentSpanId = s.parentSpanId.toString('hex');
    o.name = s.name;
    o.kind = 2; // SPAN_KIND_SERVER
    o.startTimeUnixNano = nanosString(s.startMs);
    o.endTimeUnixNano = nanosString(s.startMs, s.durationNs);
    if (s.attrs.length) o.attributes = s.attrs.map(keyValue);
    if (s.statusCode || s.statusMessage) {
      const st: Json = {};
      if (s.statusMessage) st.message = s.statusMessage;
      if (s.statusCode) st.code = s.statusCode;
      o.status = st;
    }
    if (s.flags) o.flags = s.flags;
    return o;
  });
  const body = { resourceSpans: [{ resource: resource(env), scopeSpans: [{ scope: scope(env), spans: out }] }] };
  return Buffer.from(JSON.stringify(body));
}

/** The partial success of a JSON export response ({ partialSuccess: { rejectedLogRecords | rejectedSpans, errorMessage } }). */
export function decodePartialSuccessJson(b: Buffer): { rejected: number; message: string } {
  if (b.length === 0) return { rejected: 0, message: '' };
  const o = JSON.parse(b.toString('utf8')) as { partialSuccess?: Record<string, unknown> } | null;
  const ps = o?.partialSuccess;
  if (!ps || typeof ps !== 'object') return { rejected: 0, message: '' };
  const n = Number(ps.rejectedLogRecords ?? ps.rejectedSpans ?? 0);
  return {
    rejected: Number.isFinite(n) && n > 0 ? n : 0,
    message: typeof ps.errorMessage === 'string' ? ps.errorMessage : '',
  };
}
