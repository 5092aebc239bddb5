// Decoders for what an OTLP/HTTP exporter sends, independent of the exporter: protobuf bodies are decoded with
// protobufjs from the official .proto files vendored in test/fixtures/opentelemetry-proto (v1.11.0), JSON bodies are
// checked field by field against the same definitions under the OTLP/HTTP JSON rules. Both land in one normalized
// plain-JS shape, so the protobuf and the JSON encoding of one request compare deepStrictEqual.
//
// Strict on purpose (an encoder bug must fail a test, a real collector would often shrug it off):
// - protobuf: an unknown field number or a wire type that does not match the .proto throws (protobufjs alone would
//   skip the one and misread the other); two members of one oneof (AnyValue) throw;
// - JSON (OTLP/HTTP spec, "JSON Protobuf Encoding"): keys must be the lowerCamelCase field names (an unknown key,
//   snake_case included, throws); traceId/spanId/parentSpanId are hex strings of exactly 16/8 bytes or '' (base64, as
//   plain proto3 JSON would have it, throws); enums must be integers (names throw); 64-bit integers may be decimal
//   strings or integer numbers; other bytes (bytesValue) are base64; null means "absent", as in proto3 JSON;
// - both: ids of the wrong length, duplicate attribute keys (the spec says keys MUST be unique) and the profiles-only
//   string tables (stringValueStrindex, keyStrindex) and Resource.entityRefs (not modelled here) throw.
//
// Normalized values (absent proto3 fields become their defaults: '' / 0 / '0' / {} / []):
// - Attrs = Record<string, Value>, keys in wire order;
// - Value keeps the AnyValue type visible: { s: string } | { b: boolean } | { i: string } (int64 as a decimal string,
//   '-5', '42') | { d: number } (double; NaN/Infinity allowed) | { bytes: string } (lowercase hex) | { arr: Value[] } |
//   { kv: Attrs } | {} (an AnyValue with no value set; a LogRecord body that is absent or empty is undefined);
// - 64-bit timestamps are decimal strings (fixed64 nanoseconds, '1733475000123000000'), ids lowercase hex ('' when
//   absent), enums (severityNumber, kind, status.code) numbers.
import { join } from 'node:path';
import protobuf from 'protobufjs';

export type Value =
  | { s: string }
  | { b: boolean }
  | { i: string }
  | { d: number }
  | { bytes: string }
  | { arr: Value[] }
  | { kv: Attrs }
  | Record<string, never>;
export type Attrs = Record<string, Value>;

export interface OtlpScope {
  name: string;
  version: string;
  attributes: Attrs;
  droppedAttributesCount: number;
}
export interface OtlpLogRecord {
  timeUnixNano: string;
  observedTimeUnixNano: string;
  severityNumber: number;
  severityText: string;
  eventName: string;
  body: Value | undefined;
  attributes: Attrs;
  droppedAttributesCount: number;
  flags: number;
  traceId: string;
  spanId: string;
}
export interface OtlpLogs {
  resourceLogs: Array<{
    resource: Attrs;
    resourceDroppedAttributesCount: number;
    schemaUrl: string;
    scopeLogs: Array<{ scope: OtlpScope; schemaUrl: string; logRecords: OtlpLogRecord[] }>;
  }>;
}
export interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  traceState: string;
  name: string;
  kind: number;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes: Attrs;
  droppedAttributesCount: number;
  events: Array<{ timeUnixNano: string; name: string; attributes: Attrs; droppedAttributesCount: number }>;
  droppedEventsCount: number;
  links: Array<{
    traceId: string;
    spanId: string;
    traceState: string;
    attributes: Attrs;
    droppedAttributesCount: number;
    flags: number;
  }>;
  droppedLinksCount: number;
  status: { code: number; message: string };
  flags: number;
}
export interface OtlpTraces {
  resourceSpans: Array<{
    resource: Attrs;
    resourceDroppedAttributesCount: number;
    schemaUrl: string;
    scopeSpans: Array<{ scope: OtlpScope; schemaUrl: string; spans: OtlpSpan[] }>;
  }>;
}
export type Signal = 'logs' | 'traces';
export type OtlpEncoding = 'protobuf' | 'json';
export interface PartialSuccess {
  rejected: number;
  message: string;
}
/** google.rpc.Status, the body of an OTLP/HTTP error response (details are not modelled). */
export interface RpcStatus {
  code: number;
  message: string;
}

export const PROTOBUF = 'application/x-protobuf';
export const JSON_TYPE = 'application/json';
export const PROTO_DIR = join(import.meta.dirname, '..', 'fixtures', 'opentelemetry-proto');

const root = new protobuf.Root();
root.resolvePath = (_origin, target) => join(PROTO_DIR, target);
root.loadSync([
  'opentelemetry/proto/collector/logs/v1/logs_service.proto',
  'opentelemetry/proto/collector/trace/v1/trace_service.proto',
]);
// google.rpc.Status (googleapis google/rpc/status.proto) and google.protobuf.Any, defined inline: OTLP/HTTP error
// bodies are a Status, and the fixtures hold only the OTLP files.
root
  .define('google.protobuf')
  .add(
    new protobuf.Type('Any')
      .add(new protobuf.Field('typeUrl', 1, 'string'))
      .add(new protobuf.Field('value', 2, 'bytes')),
  );
root.define('google.rpc').add(
  new protobuf.Type('Status')
    .add(new protobuf.Field('code', 1, 'int32'))
    .add(new protobuf.Field('message', 2, 'string'))
    .add(new protobuf.Field('details', 3, '.google.protobuf.Any', 'repeated')),
);
root.resolveAll();

const T = {
  logsRequest: root.lookupType('opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest'),
  tracesRequest: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest'),
  logsResponse: root.lookupType('opentelemetry.proto.collector.logs.v1.ExportLogsServiceResponse'),
  tracesResponse: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse'),
  status: root.lookupType('google.rpc.Status'),
};

type Obj = Record<string, unknown>;

/** 'protobuf' | 'json' for an OTLP Content-Type (parameters such as charset ignored); throws on anything else. */
export function encodingOf(contentType: string | undefined): OtlpEncoding {
  const mime = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (mime === PROTOBUF) return 'protobuf';
  if (mime === JSON_TYPE) return 'json';
  throw new Error(`unsupported Content-Type ${JSON.stringify(contentType ?? '')}`);
}

// ---- protobuf: wire check, then protobufjs ----

function wireTypeOf(field: protobuf.Field): number {
  if (field.resolvedType instanceof protobuf.Type) return 2;
  if (field.resolvedType instanceof protobuf.Enum) return 0;
  const wt = (protobuf.types.basic as Record<string, number>)[field.type];
  if (wt === undefined) throw new Error(`no wire type for ${field.type}`);
  return wt;
}

/** Walks the wire format against `type`: every field number known, every wire type the one the .proto implies. */
function checkWire(type: protobuf.Type, buf: Uint8Array, path: string): void {
  const r = protobuf.Reader.create(buf);
  while (r.pos < r.len) {
    const tag = r.uint32();
    const id = tag >>> 3;
    const wt = tag & 7;
    const field = type.fieldsById[id];
    if (!field) throw new Error(`${path}: unknown field number ${id} (wire type ${wt}) in ${type.name}`);
    const want = wireTypeOf(field);
    const packed = field.repeated && wt === 2 && want !== 2;
    if (wt !== want && !packed) throw new Error(`${path}.${field.name}: wire type ${wt}, the .proto implies ${want}`);
    if (field.resolvedType instanceof protobuf.Type) {
      const len = r.uint32();
      if (r.pos + len > r.len) throw new Error(`${path}.${field.name}: length ${len} runs past the end`);
      checkWire(field.resolvedType, buf.subarray(r.pos, r.pos + len), `${path}.${field.name}`);
      r.pos += len;
    } else {
      r.skipType(wt);
    }
  }
}

function fromProtobuf(type: protobuf.Type, body: Uint8Array): Obj {
  checkWire(type, body, type.name);
  return type.toObject(type.decode(body), { longs: String, enums: Number, arrays: true });
}

// ---- JSON: checked against the same reflection, into the shape protobufjs' toObject gives ----

const HEX_ID_BYTES: Record<string, number> = { traceId: 16, spanId: 8, parentSpanId: 8 };
const INT64 = new Set(['int64', 'sint64', 'sfixed64']);
const UINT64 = new Set(['uint64', 'fixed64']);
const INT32 = new Set(['int32', 'sint32', 'sfixed32']);
const UINT32 = new Set(['uint32', 'fixed32']);

function jsonInteger(v: unknown, path: string, min: bigint, max: bigint): bigint {
  let n: bigint;
  if (typeof v === 'number' && Number.isInteger(v)) n = BigInt(v);
  else if (typeof v === 'string' && /^-?\d+$/.test(v)) n = BigInt(v);
  else throw new Error(`${path}: ${JSON.stringify(v)} is not an integer (a number or a decimal string)`);
  if (n < min || n > max) throw new Error(`${path}: ${n} out of range`);
  return n;
}

function fromJsonScalar(field: protobuf.Field, v: unknown, path: string): unknown {
  if (field.resolvedType instanceof protobuf.Type) return fromJson(field.resolvedType, v, path);
  if (field.resolvedType instanceof protobuf.Enum) {
    if (typeof v !== 'number' || !Number.isInteger(v))
      throw new Error(`${path}: enum ${JSON.stringify(v)} must be an integer in OTLP/JSON`);
    return v;
  }
  const t = field.type;
  if (t === 'string' || t === 'bool') {
    if (typeof v !== (t === 'string' ? 'string' : 'boolean'))
      throw new Error(`${path}: ${JSON.stringify(v)} not a ${t}`);
    return v;
  }
  if (t === 'double' || t === 'float') {
    if (typeof v === 'number') return v;
    if (v === 'NaN' || v === 'Infinity' || v === '-Infinity') return Number(v);
    throw new Error(`${path}: ${JSON.stringify(v)} is not a number`);
  }
  if (INT64.has(t)) return jsonInteger(v, path, -(2n ** 63n), 2n ** 63n - 1n).toString();
  if (UINT64.has(t)) return jsonInteger(v, path, 0n, 2n ** 64n - 1n).toString();
  if (INT32.has(t)) return Number(jsonInteger(v, path, -(2n ** 31n), 2n ** 31n - 1n));
  if (UINT32.has(t)) return Number(jsonInteger(v, path, 0n, 2n ** 32n - 1n));
  if (t === 'bytes') {
    if (typeof v !== 'string') throw new Error(`${path}: bytes must be a string`);
    const idBytes = HEX_ID_BYTES[field.name];
    if (idBytes !== undefined) {
      if (v !== '' && !new RegExp(`^[0-9a-fA-F]{${idBytes * 2}}$`).test(v))
        throw new Error(
          `${path}: ${JSON.stringify(v)} is not ${idBytes} bytes of hex (OTLP/JSON ids are hex, not base64)`,
        );
      return Buffer.from(v, 'hex');
    }
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(v)) throw new Error(`${path}: ${JSON.stringify(v)} is not base64`);
    return Buffer.from(v, 'base64');
  }
  throw new Error(`${path}: field type ${t} not handled`);
}

function fromJson(type: protobuf.Type, json: unknown, path: string): Obj {
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    throw new Error(`${path}: expected a JSON object for ${type.name}`);
  const out: Obj = {};
  for (const [key, v] of Object.entries(json as Obj)) {
    const field = Object.hasOwn(type.fields, key) ? type.fields[key] : undefined;
    if (!field)
      throw new Error(`${path}: unknown field ${JSON.stringify(key)} in ${type.name} (OTLP/JSON: lowerCamelCase)`);
    if (v === null) continue;
    if (field.repeated) {
      if (!Array.isArray(v)) throw new Error(`${path}.${key}: expected an array`);
      out[key] = v.map((x, i) => fromJsonScalar(field, x, `${path}.${key}[${i}]`));
    } else {
      out[key] = fromJsonScalar(field, v, `${path}.${key}`);
    }
  }
  return out;
}

function parseJson(type: protobuf.Type, body: Buffer): Obj {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch (err) {
    throw new Error(`${type.name}: body is not UTF-8 JSON: ${(err as Error).message}`, { cause: err });
  }
  return fromJson(type, json, type.name);
}

function decodeTo(type: protobuf.Type, body: Buffer, contentType: string): Obj {
  return encodingOf(contentType) === 'protobuf' ? fromProtobuf(type, body) : parseJson(type, body);
}

// ---- normalization (one path for both encodings) ----

const str = (o: Obj, k: string): string => (o[k] as string | undefined) ?? '';
const num = (o: Obj, k: string): number => (o[k] as number | undefined) ?? 0;
const long = (o: Obj, k: string): string => (o[k] as string | undefined) ?? '0';
const list = (o: Obj, k: string): Obj[] => (o[k] as Obj[] | undefined) ?? [];
const msg = (o: Obj, k: string): Obj => (o[k] as Obj | undefined) ?? {};

function id(o: Obj, k: string, bytes: number, path: string): string {
  const v = o[k] as Uint8Array | undefined;
  if (!v || v.length === 0) return '';
  if (v.length !== bytes) throw new Error(`${path}.${k}: ${v.length} bytes, must be ${bytes} (or empty)`);
  return Buffer.from(v).toString('hex');
}

function normValue(v: Obj, path: string): Value {
  const set = Object.keys(v);
  if (set.length > 1) throw new Error(`${path}: AnyValue with more than one value set: ${set.join(', ')}`);
  const k = set[0];
  if (k === undefined) return {};
  const x = v[k];
  switch (k) {
    case 'stringValue':
      return { s: x as string };
    case 'boolValue':
      return { b: x as boolean };
    case 'intValue':
      return { i: x as string };
    case 'doubleValue':
      return { d: x as number };
    case 'bytesValue':
      return { bytes: Buffer.from(x as Uint8Array).toString('hex') };
    case 'arrayValue':
      return { arr: list(x as Obj, 'values').map((e, i) => normValue(e, `${path}.arrayValue[${i}]`)) };
    case 'kvlistValue':
      return { kv: normAttrs(list(x as Obj, 'values'), `${path}.kvlistValue`) };
    default:
      throw new Error(`${path}: ${k} is not allowed in OTLP logs/traces (profiles-only string table)`);
  }
}

/**
 * A LogRecord body: absent and an empty AnyValue are both "no body" (undefined). The official JS SDK's JSON
 * serializer writes `"body":{}` for a record without one where its protobuf serializer omits the field.
 */
function normBody(v: Obj | undefined, path: string): Value | undefined {
  if (v === undefined) return undefined;
  const value = normValue(v, path);
  return Object.keys(value).length === 0 ? undefined : value;
}

function normAttrs(kvs: Obj[], path: string): Attrs {
  const out: Attrs = {};
  for (const [i, kv] of kvs.entries()) {
    if (kv.keyStrindex !== undefined) throw new Error(`${path}[${i}]: keyStrindex is profiles-only`);
    const key = str(kv, 'key');
    if (Object.hasOwn(out, key)) throw new Error(`${path}: duplicate key ${JSON.stringify(key)} (keys MUST be unique)`);
    const value = normValue(msg(kv, 'value'), `${path}[${JSON.stringify(key)}]`);
    Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function normScope(s: Obj, path: string): OtlpScope {
  return {
    name: str(s, 'name'),
    version: str(s, 'version'),
    attributes: normAttrs(list(s, 'attributes'), `${path}.attributes`),
    droppedAttributesCount: num(s, 'droppedAttributesCount'),
  };
}

function normResource(r: Obj, path: string): { resource: Attrs; resourceDroppedAttributesCount: number } {
  if (list(r, 'entityRefs').length) throw new Error(`${path}.entityRefs: not modelled by the test decoder`);
  return {
    resource: normAttrs(list(r, 'attributes'), `${path}.attributes`),
    resourceDroppedAttributesCount: num(r, 'droppedAttributesCount'),
  };
}

function normLogs(o: Obj): OtlpLogs {
  return {
    resourceLogs: list(o, 'resourceLogs').map((rl, i) => {
      const p = `resourceLogs[${i}]`;
      return {
        ...normResource(msg(rl, 'resource'), `${p}.resource`),
        schemaUrl: str(rl, 'schemaUrl'),
        scopeLogs: list(rl, 'scopeLogs').map((sl, j) => ({
          scope: normScope(msg(sl, 'scope'), `${p}.scopeLogs[${j}].scope`),
          schemaUrl: str(sl, 'schemaUrl'),
          logRecords: list(sl, 'logRecords').map((lr, k) => {
            const q = `${p}.scopeLogs[${j}].logRecords[${k}]`;
            return {
              timeUnixNano: long(lr, 'timeUnixNano'),
              observedTimeUnixNano: long(lr, 'observedTimeUnixNano'),
              severityNumber: num(lr, 'severityNumber'),
              severityText: str(lr, 'severityText'),
              eventName: str(lr, 'eventName'),
              body: normBody(lr.body as Obj | undefined, `${q}.body`),
              attributes: normAttrs(list(lr, 'attributes'), `${q}.attributes`),
              droppedAttributesCount: num(lr, 'droppedAttributesCount'),
              flags: num(lr, 'flags'),
              traceId: id(lr, 'traceId', 16, q),
              spanId: id(lr, 'spanId', 8, q),
            };
          }),
        })),
      };
    }),
  };
}

function normSpan(s: Obj, q: string): OtlpSpan {
  const status = msg(s, 'status');
  return {
    traceId: id(s, 'traceId', 16, q),
    spanId: id(s, 'spanId', 8, q),
    parentSpanId: id(s, 'parentSpanId', 8, q),
    traceState: str(s, 'traceState'),
    name: str(s, 'name'),
    kind: num(s, 'kind'),
    startTimeUnixNano: long(s, 'startTimeUnixNano'),
    endTimeUnixNano: long(s, 'endTimeUnixNano'),
    attributes: normAttrs(list(s, 'attributes'), `${q}.attributes`),
    droppedAttributesCount: num(s, 'droppedAttributesCount'),
    events: list(s, 'events').map((e, i) => ({
      timeUnixNano: long(e, 'timeUnixNano'),
      name: str(e, 'name'),
      attributes: normAttrs(list(e, 'attributes'), `${q}.events[${i}].attributes`),
      droppedAttributesCount: num(e, 'droppedAttributesCount'),
    })),
    droppedEventsCount: num(s, 'droppedEventsCount'),
    links: list(s, 'links').map((l, i) => ({
      traceId: id(l, 'traceId', 16, `${q}.links[${i}]`),
      spanId: id(l, 'spanId', 8, `${q}.links[${i}]`),
      traceState: str(l, 'traceState'),
      attributes: normAttrs(list(l, 'attributes'), `${q}.links[${i}].attributes`),
      droppedAttributesCount: num(l, 'droppedAttributesCount'),
      flags: num(l, 'flags'),
    })),
    droppedLinksCount: num(s, 'droppedLinksCount'),
    status: { code: num(status, 'code'), message: str(status, 'message') },
    flags: num(s, 'flags'),
  };
}

function normTraces(o: Obj): OtlpTraces {
  return {
    resourceSpans: list(o, 'resourceSpans').map((rs, i) => {
      const p = `resourceSpans[${i}]`;
      return {
        ...normResource(msg(rs, 'resource'), `${p}.resource`),
        schemaUrl: str(rs, 'schemaUrl'),
        scopeSpans: list(rs, 'scopeSpans').map((ss, j) => ({
          scope: normScope(msg(ss, 'scope'), `${p}.scopeSpans[${j}].scope`),
          schemaUrl: str(ss, 'schemaUrl'),
          spans: list(ss, 'spans').map((s, k) => normSpan(s, `${p}.scopeSpans[${j}].spans[${k}]`)),
        })),
      };
    }),
  };
}

/** An ExportLogsServiceRequest body (already gunzipped) → the normalized shape; throws on anything off-spec. */
export function decodeLogsRequest(body: Buffer, contentType: string): OtlpLogs {
  return normLogs(decodeTo(T.logsRequest, body, contentType));
}

/** An ExportTraceServiceRequest body (already gunzipped) → the normalized shape; throws on anything off-spec. */
export function decodeTracesRequest(body: Buffer, contentType: string): OtlpTraces {
  return normTraces(decodeTo(T.tracesRequest, body, contentType));
}

// ---- responses ----

const responseType = (signal: Signal): protobuf.Type => (signal === 'logs' ? T.logsResponse : T.tracesResponse);
const rejectedField = (signal: Signal): string => (signal === 'logs' ? 'rejectedLogRecords' : 'rejectedSpans');

/**
 * An ExportLogsServiceResponse / ExportTraceServiceResponse body in `contentType`'s encoding: empty (protobuf) or
 * `{}` (JSON) without `partial`; with it, partial_success { rejected_*, error_message } (JSON int64 as a string).
 */
export function encodeExportResponse(signal: Signal, contentType: string, partial?: PartialSuccess): Buffer {
  const fields = partial
    ? { partialSuccess: { [rejectedField(signal)]: String(partial.rejected), errorMessage: partial.message } }
    : {};
  if (encodingOf(contentType) === 'json') return Buffer.from(JSON.stringify(fields));
  const type = responseType(signal);
  return Buffer.from(type.encode(type.fromObject(fields)).finish());
}

/** Decodes an export response (strictly, like the requests); partialSuccess is undefined when the field is absent. */
export function decodeExportResponse(
  signal: Signal,
  body: Buffer,
  contentType: string,
): { partialSuccess: PartialSuccess | undefined } {
  const o = decodeTo(responseType(signal), body, contentType);
  const ps = o.partialSuccess as Obj | undefined;
  if (!ps) return { partialSuccess: undefined };
  return { partialSuccess: { rejected: Number(long(ps, rejectedField(signal))), message: str(ps, 'errorMessage') } };
}

export function decodeLogsResponse(body: Buffer, contentType: string): { partialSuccess: PartialSuccess | undefined } {
  return decodeExportResponse('logs', body, contentType);
}

export function decodeTracesResponse(
  body: Buffer,
  contentType: string,
): { partialSuccess: PartialSuccess | undefined } {
  return decodeExportResponse('traces', body, contentType);
}

/** A google.rpc.Status body (no details) in `contentType`'s encoding. */
export function encodeRpcStatus(contentType: string, status: RpcStatus): Buffer {
  if (encodingOf(contentType) === 'json') return Buffer.from(JSON.stringify(status));
  return Buffer.from(T.status.encode(T.status.fromObject(status)).finish());
}

export function decodeRpcStatus(body: Buffer, contentType: string): RpcStatus {
  const o = decodeTo(T.status, body, contentType);
  return { code: num(o, 'code'), message: str(o, 'message') };
}
