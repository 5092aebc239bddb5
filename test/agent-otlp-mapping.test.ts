// The OTLP exporter's mapping (src/agent/exporters/otlp/mapping.ts) and its two encodings (protobuf.ts, json.ts),
// rule by rule, as a collector sees them: every request here is decoded only by the independent decoders of
// test/helpers/otlp.ts (protobufjs on the official .proto files, and a strict OTLP/JSON reader), never by the agent's
// own code. `decodeBoth` decodes the protobuf and the JSON encoding of one mapped part and requires them to be equal,
// so every rule below is checked in both encodings. The last tests compare the agent's requests with the official
// OpenTelemetry JS SDK's encoding of the same logical records. Pure unit tests: no processes, no sockets.
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { test } from 'node:test';
import { resourceOf, type OtlpConfig } from '../src/agent/exporters/otlp/exporter.ts';
import { decodePartialSuccessJson, encodeLogsJson, encodeTracesJson } from '../src/agent/exporters/otlp/json.ts';
import { RecordMapper, type MapOptions, type Mapped } from '../src/agent/exporters/otlp/mapping.ts';
import {
  decodePartialSuccess,
  decodeStatusMessage,
  encodeLogs,
  encodeTraces,
  type Envelope,
} from '../src/agent/exporters/otlp/protobuf.ts';
import type { ExportPart } from '../src/agent/exporters/types.ts';
import {
  decodeLogsRequest,
  decodeTracesRequest,
  encodeExportResponse,
  encodeRpcStatus,
  JSON_TYPE,
  PROTOBUF,
  sdkLogsJson,
  sdkLogsRequest,
  sdkTracesJson,
  sdkTracesRequest,
  type Attrs,
  type OtlpLogRecord,
  type OtlpLogs,
  type OtlpSpan,
  type OtlpTraces,
  type SdkLogInput,
  type Value,
} from './helpers/otlp.ts';

const VERSION = '9.8.7-test';
const ENV: Envelope = {
  // resourceOf only reads `resource` (service.name / host.name defaults, the configured ones win)
  resource: resourceOf({
    resource: { 'service.name': 'shop', 'deployment.environment.name': 'test' },
  } as unknown as OtlpConfig),
  scopeName: 'sidekick-agent',
  scopeVersion: VERSION,
};
const BATCH = 'seg00000007-0000000000001234-5f3a9c';
const TS = 1733500000123; // 2024-12-06T15:46:40.123Z
const T1 = 1733500001000;
const T2 = 1733500002500;
const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
const PARENT_ID = 'b7ad6b7169203331';
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_ID}-01`;
const FLAG_SAMPLED_HAS_REMOTE = 0x101;

/** Unix ms (an integer) → the decoded nanosecond string. */
const ns = (ms: number): string => (BigInt(ms) * 1_000_000n).toString();

function part(lines: (string | object)[], over: Partial<ExportPart> = {}): ExportPart {
  const text = lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l)) + '\n').join('');
  return {
    id: BATCH,
    payload: Buffer.from(text),
    records: lines.length,
    batchId: BATCH,
    firstIndex: 0,
    acceptedAt: { starts: [0], times: [T1] },
    firstAcceptedAt: T1,
    ...over,
  };
}

function mapper(o: Partial<MapOptions> = {}): RecordMapper {
  return new RecordMapper({ requestSignal: 'both', maxValueLength: 4096, maxDepth: 8, ...o });
}

interface Decoded {
  logsReq: OtlpLogs;
  tracesReq: OtlpTraces;
  logs: OtlpLogRecord[];
  spans: OtlpSpan[];
}

/** Both encodings of the mapped part through the independent decoders; they must agree, envelope included. */
function decodeBoth(m: Mapped): Decoded {
  const logsReq = decodeLogsRequest(encodeLogs(ENV, m.logs), PROTOBUF);
  const tracesReq = decodeTracesRequest(encodeTraces(ENV, m.spans), PROTOBUF);
  assert.deepEqual(decodeLogsRequest(encodeLogsJson(ENV, m.logs), JSON_TYPE), logsReq, 'logs: JSON ≠ protobuf');
  assert.deepEqual(
    decodeTracesRequest(encodeTracesJson(ENV, m.spans), JSON_TYPE),
    tracesReq,
    'traces: JSON ≠ protobuf',
  );
  for (const rl of [...logsReq.resourceLogs, ...tracesReq.resourceSpans]) {
    assertAttrs(rl.resource, {
      'service.name': { s: 'shop' },
      'host.name': { s: hostname() },
      'deployment.environment.name': { s: 'test' },
    });
  }
  const scopes = [...logsReq.resourceLogs[0]!.scopeLogs, ...tracesReq.resourceSpans[0]!.scopeSpans];
  for (const s of scopes)
    assert.deepEqual(s.scope, { name: 'sidekick-agent', version: VERSION, attributes: {}, droppedAttributesCount: 0 });
  return {
    logsReq,
    tracesReq,
    logs: logsReq.resourceLogs[0]!.scopeLogs[0]!.logRecords,
    spans: tracesReq.resourceSpans[0]!.scopeSpans[0]!.spans,
  };
}

function mapDecode(lines: (string | object)[], o: Partial<MapOptions> = {}, over: Partial<ExportPart> = {}) {
  const m = mapper(o).map(part(lines, over));
  return { m, ...decodeBoth(m) };
}

/** deepEqual ignores key order: attributes are a list on the wire, so their order is checked too. */
function assertAttrs(got: Attrs, want: Attrs, msg?: string): void {
  assert.deepEqual(got, want, msg);
  assert.deepEqual(Object.keys(got), Object.keys(want), `${msg ?? 'attributes'}: key order`);
}

const batchAttrs = (index: number): Attrs => ({
  'sidekick.batch.id': { s: BATCH },
  'sidekick.batch.index': { i: String(index) },
});

// ---------------------------------------------------------------- LogRecord

test('LogRecord time: record ts as integer ms, fractional ms, ISO string; else the accepted time', () => {
  const { logs } = mapDecode([
    { ts: TS },
    { ts: TS + 0.5 },
    { ts: TS + 0.25 },
    { ts: '2024-12-06T15:46:40.123Z' },
    {},
    { ts: 'yesterday' },
    { ts: -5 },
    { ts: true },
    { ts: { ms: TS } },
    { ts: null },
    // beyond what a fixed64 of nanoseconds holds (a ts in µs, a year-100000 date): not a time either; these made
    // the protobuf encoder throw (and the part retried for ever) and the JSON one send an out-of-range uint64
    { ts: TS * 1000 },
    { ts: '+100000-01-01T00:00:00Z' },
  ]);
  assert.equal(logs.length, 12);
  assert.equal(logs[0]!.timeUnixNano, '1733500000123000000');
  assert.equal(logs[1]!.timeUnixNano, '1733500000123500000');
  assert.equal(logs[2]!.timeUnixNano, '1733500000123250000');
  assert.equal(logs[3]!.timeUnixNano, '1733500000123000000');
  for (let i = 4; i < 12; i++) assert.equal(logs[i]!.timeUnixNano, ns(T1), `record ${i}: the accepted time`);
  for (const l of logs) assert.equal(l.observedTimeUnixNano, ns(T1));
});

test('LogRecord observed time: the accept time of the record’s own spool frame, by batch index', () => {
  const acceptedAt = { starts: [0, 2], times: [T1, T2] };
  const four = mapDecode([{ n: 0 }, { n: 1 }, { n: 2 }, { n: 3 }], {}, { acceptedAt });
  assert.deepEqual(
    four.logs.map((l) => l.observedTimeUnixNano),
    [ns(T1), ns(T1), ns(T2), ns(T2)],
  );
  assert.deepEqual(
    four.logs.map((l) => l.attributes['sidekick.batch.index']),
    [0, 1, 2, 3].map((i) => ({ i: String(i) })),
  );
  // a part cut from the same batch (a chunk or a 413 half): firstIndex picks the frame
  const tail = mapDecode([{ n: 2 }, { n: 3 }], {}, { acceptedAt, firstIndex: 2 });
  assert.deepEqual(
    tail.logs.map((l) => l.observedTimeUnixNano),
    [ns(T2), ns(T2)],
  );
  assert.deepEqual(
    tail.logs.map((l) => l.attributes['sidekick.batch.index']),
    [{ i: '2' }, { i: '3' }],
  );
  const middle = mapDecode([{ n: 1 }, { n: 2 }], {}, { acceptedAt, firstIndex: 1 });
  assert.deepEqual(
    middle.logs.map((l) => l.observedTimeUnixNano),
    [ns(T1), ns(T2)],
  );
  // no per-frame times: the batch's first accept time
  const old = mapDecode([{ n: 0 }], {}, { acceptedAt: undefined, firstAcceptedAt: T2 });
  assert.equal(old.logs[0]!.observedTimeUnixNano, ns(T2));
  // time falls back to the frame's accept time too
  assert.deepEqual(
    four.logs.map((l) => l.timeUnixNano),
    [ns(T1), ns(T1), ns(T2), ns(T2)],
  );
});

test('LogRecord severity: ERROR (17) for status >= 500 or an error field, else INFO (9)', () => {
  const cases: [object, 9 | 17][] = [
    [{ status: 200 }, 9],
    [{ status: 404 }, 9],
    [{ status: 499 }, 9],
    [{ status: 500 }, 17],
    [{ status: 503 }, 17],
    [{ error: 'boom' }, 17],
    [{ error: true }, 17],
    [{ error: { code: 'E1' } }, 17],
    [{ error: false }, 9],
    [{ error: null }, 9],
    [{ status: '500' }, 9], // not a number: not an HTTP status
    [{}, 9],
  ];
  const { logs } = mapDecode(cases.map((c) => c[0]));
  cases.forEach(([rec, sev], i) => {
    assert.equal(logs[i]!.severityNumber, sev, JSON.stringify(rec));
    assert.equal(logs[i]!.severityText, sev === 17 ? 'ERROR' : 'INFO', JSON.stringify(rec));
    assert.equal(logs[i]!.body, undefined);
    assert.equal(logs[i]!.droppedAttributesCount, 0);
  });
});

test('LogRecord eventName from `type`, absent without one', () => {
  const { logs } = mapDecode([{ type: 'order.placed' }, { msg: 'x' }, { type: 42 }]);
  assert.equal(logs[0]!.eventName, 'order.placed');
  assert.equal(logs[1]!.eventName, '');
  assert.equal(logs[2]!.eventName, '');
  assertAttrs(logs[0]!.attributes, { type: { s: 'order.placed' }, ...batchAttrs(0) });
  assertAttrs(logs[2]!.attributes, { type: { i: '42' }, ...batchAttrs(2) });
});

test('LogRecord attributes: every field with its type, nested objects as kvlists, then the batch id and index', () => {
  const rec = {
    ts: TS,
    str: 'hello',
    int: 42,
    neg: -7,
    zero: 0,
    dbl: 1.5,
    negdbl: -0.25,
    yes: true,
    no: false,
    nil: null,
    arr: [1, 'two', 3.5, null, [false], { k: 'v' }],
    empty_arr: [],
    obj: { a: { b: 1, c: 'd' }, e: [] },
    empty_obj: {},
  };
  const { logs, m } = mapDecode([{ x: 1 }, rec], {}, { firstIndex: 40 });
  assert.deepEqual(m.primary, ['logs', 'logs']);
  const l = logs[1]!;
  assertAttrs(l.attributes, {
    ts: { i: String(TS) },
    str: { s: 'hello' },
    int: { i: '42' },
    neg: { i: '-7' },
    zero: { i: '0' },
    dbl: { d: 1.5 },
    negdbl: { d: -0.25 },
    yes: { b: true },
    no: { b: false },
    nil: {},
    arr: { arr: [{ i: '1' }, { s: 'two' }, { d: 3.5 }, {}, { arr: [{ b: false }] }, { kv: { k: { s: 'v' } } }] },
    empty_arr: { arr: [] },
    obj: { kv: { a: { kv: { b: { i: '1' }, c: { s: 'd' } } }, e: { arr: [] } } },
    empty_obj: { kv: {} },
    'sidekick.batch.id': { s: BATCH },
    'sidekick.batch.index': { i: '41' },
  });
  // no request, no traceparent: no trace context
  assert.equal(l.traceId, '');
  assert.equal(l.spanId, '');
  assert.equal(l.flags, 0);
});

test('a record field named like an attribute the agent sets is not sent twice (OTLP keys MUST be unique)', () => {
  // before: the record's own sidekick.batch.* / http.* fields went out beside the agent's, and a collector got
  // duplicate keys (the strict decoder threw), or, worse, a client-chosen dedupe key
  const { logs, spans } = mapDecode([
    {
      method: 'GET',
      route: '/a',
      status: 500,
      pid: 7,
      duration_ms: 1,
      'sidekick.batch.id': 'forged',
      'sidekick.batch.index': 999,
      'http.route': '/forged',
      'http.request.method': 'FORGED',
      'http.response.status_code': 1,
      'process.pid': 1,
      'error.type': 'forged',
      'user.id': 'u1',
    },
    { 'sidekick.batch.index': 5, 'error.type': 'kept: not set by the agent on a LogRecord' },
  ]);
  assertAttrs(spans[0]!.attributes, {
    'http.request.method': { s: 'GET' },
    'http.route': { s: '/a' },
    'http.response.status_code': { i: '500' },
    'process.pid': { i: '7' },
    'error.type': { s: '500' },
    'user.id': { s: 'u1' },
    ...batchAttrs(0),
  });
  assertAttrs(logs[1]!.attributes, {
    'error.type': { s: 'kept: not set by the agent on a LogRecord' },
    ...batchAttrs(1),
  });
  assert.deepEqual(logs[0]!.attributes['sidekick.batch.index'], { i: '0' });
  assert.deepEqual(logs[0]!.attributes['http.route'], { s: '/forged' }, 'the LogRecord keeps the record as it is');
});

// ---------------------------------------------------------------- spans

const REQUEST = {
  ts: TS,
  type: 'request',
  method: 'GET',
  route: '/orders/:id',
  status: 200,
  duration_ms: 12.345,
  pid: 4242,
  user: 'ann',
  bytes: 512,
};

test('span of a request record: SERVER, `METHOD route`, exact times, HTTP attributes, UNSET, fresh ids', () => {
  const { spans, logs, m } = mapDecode([{ msg: 'not a request' }, REQUEST], {}, { firstIndex: 10 });
  assert.equal(spans.length, 1);
  assert.deepEqual(m.primary, ['logs', 'logs']);
  const s = spans[0]!;
  assert.equal(s.kind, 2);
  assert.equal(s.name, 'GET /orders/:id');
  assert.equal(s.startTimeUnixNano, '1733500000123000000');
  assert.equal(s.endTimeUnixNano, '1733500000135345000');
  assertAttrs(s.attributes, {
    'http.request.method': { s: 'GET' },
    'http.route': { s: '/orders/:id' },
    'http.response.status_code': { i: '200' },
    'process.pid': { i: '4242' },
    user: { s: 'ann' },
    bytes: { i: '512' },
    ...batchAttrs(11),
  });
  assert.deepEqual(s.status, { code: 0, message: '' });
  assert.equal(s.flags, FLAG_SAMPLED_HAS_REMOTE);
  assert.match(s.traceId, /^[0-9a-f]{32}$/);
  assert.match(s.spanId, /^[0-9a-f]{16}$/);
  assert.equal(s.parentSpanId, '');
  assert.equal(s.traceState, '');
  assert.deepEqual([s.events, s.links, s.droppedAttributesCount], [[], [], 0]);
  // its LogRecord carries the span's ids (signal 'both')
  const l = logs[1]!;
  assert.equal(l.traceId, s.traceId);
  assert.equal(l.spanId, s.spanId);
  assert.equal(l.flags, 1);
  assert.equal(l.eventName, 'request');
  assert.deepEqual(l.attributes['duration_ms'], { d: 12.345 });
  assert.equal(logs[0]!.traceId, '', 'a non-request record has no span');
});

test('span name and status: method alone without a route; ERROR on 5xx or error, 4xx stays UNSET', () => {
  const base = { ts: TS, method: 'POST', duration_ms: 3 };
  const { spans } = mapDecode([
    base,
    { ...base, route: '/pay', status: 503 },
    { ...base, route: '/pay', status: 200, error: 'card declined' },
    { ...base, route: '/pay', status: 404 },
    { ...base, status: 502, error: 'upstream reset' },
    { ...base, error: true },
    { ...base, error: false, status: 201 },
    { ...base, route: 7 }, // not a string: no route
  ]);
  assert.equal(spans.length, 8);
  assert.equal(spans[0]!.name, 'POST');
  assert.equal(spans[0]!.attributes['http.route'], undefined);
  assert.equal(spans[0]!.attributes['http.response.status_code'], undefined);
  assert.deepEqual(spans[0]!.status, { code: 0, message: '' });
  assert.equal(spans[0]!.endTimeUnixNano, ns(TS + 3));

  assert.equal(spans[1]!.name, 'POST /pay');
  assert.deepEqual(spans[1]!.status, { code: 2, message: '' });
  assert.deepEqual(spans[1]!.attributes['error.type'], { s: '503' });

  assert.deepEqual(spans[2]!.status, { code: 2, message: 'card declined' });
  assert.deepEqual(spans[2]!.attributes['error.type'], { s: '_OTHER' });
  assert.deepEqual(spans[2]!.attributes['error'], { s: 'card declined' }, 'error is also an ordinary attribute');

  assert.deepEqual(spans[3]!.status, { code: 0, message: '' }, '4xx is the client’s error, not the server span’s');
  assert.equal(spans[3]!.attributes['error.type'], undefined);
  assert.deepEqual(spans[3]!.attributes['http.response.status_code'], { i: '404' });

  assert.deepEqual(spans[4]!.status, { code: 2, message: 'upstream reset' });
  assert.deepEqual(spans[4]!.attributes['error.type'], { s: '502' });
  assert.deepEqual(spans[5]!.status, { code: 2, message: '' });
  assert.deepEqual(spans[5]!.attributes['error.type'], { s: '_OTHER' });
  assert.deepEqual(spans[6]!.status, { code: 0, message: '' });
  assert.equal(spans[6]!.attributes['error.type'], undefined);
  assert.equal(spans[7]!.name, 'POST');
});

test('span end = ts + duration_ms to the nanosecond; odd durations stay a valid span', () => {
  const { spans } = mapDecode([
    { ts: TS, method: 'GET', duration_ms: 12.345 },
    { ts: TS, method: 'GET', duration_ms: 0.000001 },
    { ts: TS, method: 'GET', duration_ms: 0 },
    { ts: TS, method: 'GET', duration_ms: -4 },
    { ts: TS + 0.5, method: 'GET', duration_ms: 0.75 },
    { ts: TS, method: 'GET', duration_ms: 86_400_000 },
    // JSON.parse gives Infinity for 1e400: before, the protobuf encoder threw and the JSON one wrote "Infinity000NaN"
    '{"ts":1733500000123,"method":"GET","duration_ms":1e400}',
    { method: 'GET', duration_ms: 5 }, // no ts: starts at the accepted time
    { ts: TS, method: 'GET', duration_ms: '5' }, // not a number: not a request
    { ts: TS, method: ['GET'], duration_ms: 5 },
  ]);
  assert.equal(spans.length, 8);
  assert.deepEqual(spans.map((s) => [s.startTimeUnixNano, s.endTimeUnixNano]).slice(0, 6), [
    ['1733500000123000000', '1733500000135345000'],
    ['1733500000123000000', '1733500000123000001'],
    ['1733500000123000000', '1733500000123000000'],
    ['1733500000123000000', '1733500000123000000'], // a negative duration is 0
    ['1733500000123500000', '1733500000124250000'],
    ['1733500000123000000', ns(TS + 86_400_000)],
  ]);
  const inf = spans[6]!;
  assert.equal(inf.startTimeUnixNano, ns(TS));
  assert.ok(BigInt(inf.endTimeUnixNano) > BigInt(inf.startTimeUnixNano));
  assert.ok(BigInt(inf.endTimeUnixNano) < 2n ** 63n, 'a time every receiver can hold');
  assert.deepEqual([spans[7]!.startTimeUnixNano, spans[7]!.endTimeUnixNano], [ns(T1), ns(T1 + 5)]);
});

test('span joins a valid traceparent: its trace id, its span as parent, its flags + remote, the tracestate', () => {
  const { spans, logs } = mapDecode([
    { ...REQUEST, traceparent: TRACEPARENT, tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7' },
    { ...REQUEST, traceparent: `00-${TRACE_ID}-${PARENT_ID}-00` },
    { ...REQUEST, traceparent: `cc-${TRACE_ID}-${PARENT_ID}-01-future-part` }, // a later version, read as 00
  ]);
  const [a, b, c] = spans;
  assert.equal(a!.traceId, TRACE_ID);
  assert.equal(a!.parentSpanId, PARENT_ID);
  assert.notEqual(a!.spanId, PARENT_ID);
  assert.match(a!.spanId, /^[0-9a-f]{16}$/);
  assert.equal(a!.flags, 0x301);
  assert.equal(a!.traceState, 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7');
  assert.equal(a!.attributes['traceparent'], undefined, 'the traceparent is the span’s context, not an attribute');
  assert.equal(a!.attributes['tracestate'], undefined, 'the tracestate is the span’s trace_state, not an attribute');
  assert.equal(b!.flags, 0x300);
  assert.equal(b!.traceState, '');
  assert.equal(c!.traceId, TRACE_ID);
  assert.equal(c!.parentSpanId, PARENT_ID);
  // the LogRecords belong to the request's span
  assert.deepEqual(
    logs.map((l) => [l.traceId, l.spanId, l.flags]),
    [
      [TRACE_ID, a!.spanId, 1],
      [TRACE_ID, b!.spanId, 0],
      [TRACE_ID, c!.spanId, 1],
    ],
  );
  assert.deepEqual(logs[0]!.attributes['traceparent'], { s: TRACEPARENT }, 'the LogRecord keeps every field');
});

test('invalid traceparents are ignored: fresh ids, no parent, no tracestate', () => {
  const bad = [
    `00-${'0'.repeat(32)}-${PARENT_ID}-01`, // all-zero trace id
    `00-${TRACE_ID}-${'0'.repeat(16)}-01`, // all-zero parent id
    `ff-${TRACE_ID}-${PARENT_ID}-01`, // version ff
    `00-${TRACE_ID}-${PARENT_ID}-01-extra`, // version 00 is exactly 55 chars
    `00-${TRACE_ID.slice(2)}-${PARENT_ID}-01`, // short trace id
    `00-${TRACE_ID}-${PARENT_ID}1-01`, // long parent id
    `00-${TRACE_ID.toUpperCase()}-${PARENT_ID}-01`, // uppercase hex
    `00-${TRACE_ID}-${PARENT_ID}-1`,
    'garbage',
    '',
    42,
    { traceId: TRACE_ID },
  ];
  const { spans, logs } = mapDecode(bad.map((traceparent) => ({ ...REQUEST, traceparent, tracestate: 'k=v' })));
  assert.equal(spans.length, bad.length);
  spans.forEach((s, i) => {
    const what = JSON.stringify(bad[i]);
    assert.notEqual(s.traceId, TRACE_ID, what);
    assert.match(s.traceId, /^[0-9a-f]{32}$/, what);
    assert.equal(s.parentSpanId, '', what);
    assert.equal(s.traceState, '', what);
    assert.equal(s.flags, FLAG_SAMPLED_HAS_REMOTE, what);
    assert.equal(logs[i]!.traceId, s.traceId, what);
    assert.equal(logs[i]!.spanId, s.spanId, what);
  });
});

test('requestSignal: logs carries the traceparent’s context; traces sends no LogRecord for requests', () => {
  const lines = [{ ...REQUEST, traceparent: `00-${TRACE_ID}-${PARENT_ID}-03` }, REQUEST, { msg: 'plain', ts: TS }];
  const onlyLogs = mapDecode(lines, { requestSignal: 'logs' });
  assert.equal(onlyLogs.spans.length, 0);
  assert.deepEqual(onlyLogs.m.primary, ['logs', 'logs', 'logs']);
  assert.deepEqual(
    onlyLogs.logs.map((l) => [l.traceId, l.spanId, l.flags]),
    [
      [TRACE_ID, PARENT_ID, 3],
      ['', '', 0],
      ['', '', 0],
    ],
  );
  const onlyTraces = mapDecode(lines, { requestSignal: 'traces' });
  assert.equal(onlyTraces.spans.length, 2);
  assert.deepEqual(onlyTraces.m.primary, ['traces', 'traces', 'logs']);
  assert.equal(onlyTraces.logs.length, 1);
  assert.deepEqual(onlyTraces.logs[0]!.attributes['msg'], { s: 'plain' });
  assert.deepEqual(onlyTraces.logs[0]!.attributes['sidekick.batch.index'], { i: '2' });
  assert.equal(onlyTraces.spans[0]!.traceId, TRACE_ID);
  assert.deepEqual(onlyTraces.spans[1]!.attributes['sidekick.batch.index'], { i: '1' });
});

test('ids: a pure function of (batch id, index): same bytes on a retry and in a split part, distinct otherwise', () => {
  const lines = Array.from({ length: 300 }, (_, i) => ({ ...REQUEST, n: i }));
  const whole = part(lines);
  const m1 = mapper().map(whole);
  const m2 = mapper().map(whole);
  assert.ok(encodeTraces(ENV, m1.spans).equals(encodeTraces(ENV, m2.spans)));
  assert.ok(encodeLogs(ENV, m1.logs).equals(encodeLogs(ENV, m2.logs)));
  assert.ok(encodeTracesJson(ENV, m1.spans).equals(encodeTracesJson(ENV, m2.spans)));
  const d = decodeBoth(m1);
  const spanIds = new Set(d.spans.map((s) => s.spanId));
  const traceIds = new Set(d.spans.map((s) => s.traceId));
  assert.equal(spanIds.size, 300);
  assert.equal(traceIds.size, 300);
  for (const s of d.spans) {
    assert.doesNotMatch(s.spanId, /^0+$/);
    assert.doesNotMatch(s.traceId, /^0+$/);
  }
  // the second half of the same batch (a chunk or a 413 half) gets the very same spans
  const half = decodeBoth(mapper().map(part(lines.slice(150), { firstIndex: 150 })));
  assert.deepEqual(half.spans, d.spans.slice(150));
  assert.deepEqual(half.logs, d.logs.slice(150));
  // another batch: other ids
  const other = decodeBoth(mapper().map(part(lines.slice(0, 5), { batchId: `${BATCH}x`, id: `${BATCH}x` })));
  for (let i = 0; i < 5; i++) {
    assert.notEqual(other.spans[i]!.spanId, d.spans[i]!.spanId);
    assert.notEqual(other.spans[i]!.traceId, d.spans[i]!.traceId);
  }
});

// ---------------------------------------------------------------- limits

test('maxValueLength: strings cut to exactly the limit, never through a surrogate pair, and counted', () => {
  const { m, logs, spans } = mapDecode(
    [
      {
        exact: 'abcdefgh',
        long: 'abcdefghij',
        emoji: 'abcdefg😀xyz', // 😀 is units 7 and 8: cutting at 8 would leave half of it
        emoji_fits: 'abcdef😀xyz',
        nested: { deep: ['0123456789'] },
        type: 'event-name-long',
      },
      { method: 'PROPFIND-X', route: '/a/very/long/route', duration_ms: 1, error: 'error message long' },
    ],
    { maxValueLength: 8 },
  );
  const a = logs[0]!.attributes;
  assert.deepEqual(a['exact'], { s: 'abcdefgh' });
  assert.deepEqual(a['long'], { s: 'abcdefgh' });
  assert.deepEqual(a['emoji'], { s: 'abcdefg' });
  assert.deepEqual(a['emoji_fits'], { s: 'abcdef😀' });
  assert.deepEqual(a['nested'], { kv: { deep: { arr: [{ s: '01234567' }] } } });
  assert.equal(logs[0]!.eventName, 'event-na');
  assert.deepEqual(a['type'], { s: 'event-na' });
  for (const l of logs) assert.doesNotMatch(JSON.stringify(l), /\ufffd/);
  const s = spans[0]!;
  assert.equal(s.name, 'PROPFIND /a/very/');
  assert.deepEqual(s.attributes['http.request.method'], { s: 'PROPFIND' });
  assert.deepEqual(s.attributes['http.route'], { s: '/a/very/' });
  assert.equal(s.status.message, 'error me');
  // record 0: long, emoji, emoji_fits, nested, type (eventName) and type (attribute): 6; record 1's LogRecord:
  // method, route, error (3); its span: method, route, error (status message), error (attribute) (4)
  assert.equal(m.truncated, 13);
});

test('maxDepth: objects and arrays nested deeper become their JSON text, counted', () => {
  const { m, logs } = mapDecode(
    [
      {
        two: { a: { b: 1 } },
        three: { a: { b: { c: 1 } } },
        arr: [[[1, 2]]],
        mixed: [{ x: [true] }],
      },
    ],
    { maxDepth: 2 },
  );
  const a = logs[0]!.attributes;
  assert.deepEqual(a['two'], { kv: { a: { kv: { b: { i: '1' } } } } });
  assert.deepEqual(a['three'], { kv: { a: { kv: { b: { s: '{"c":1}' } } } } });
  assert.deepEqual(a['arr'], { arr: [{ arr: [{ s: '[1,2]' }] }] });
  assert.deepEqual(a['mixed'], { arr: [{ kv: { x: { s: '[true]' } } }] });
  assert.equal(m.flattened, 3);
  assert.equal(m.truncated, 0);
});

test('lines that are not JSON objects are unmappable (never a crash); indexes keep counting them', () => {
  const lines = ['garbage', '[1,2]', '42', 'null', '"str"', '', '{"ok":1}', '{"truncated":', 'true', '{"ok":2}'];
  const p = part(lines);
  const m = mapper().map(p);
  assert.deepEqual(m.primary, ['none', 'none', 'none', 'none', 'none', 'none', 'logs', 'none', 'none', 'logs']);
  assert.deepEqual(
    m.unmappable.map((b) => b.toString()),
    lines.filter((l) => !l.startsWith('{"ok"')).map((l) => `${l}\n`),
  );
  const { logs } = decodeBoth(m);
  assert.deepEqual(
    logs.map((l) => l.attributes['sidekick.batch.index']),
    [{ i: '6' }, { i: '9' }],
  );
  // the last line without its '\n' still counts
  const noNl = mapper().map({ ...p, payload: Buffer.from('{"a":1}\nnope') });
  assert.deepEqual(noNl.primary, ['logs', 'none']);
  assert.deepEqual(
    noNl.unmappable.map((b) => b.toString()),
    ['nope'],
  );
});

test('an empty part maps to nothing and still encodes to a valid request', () => {
  const m = mapper().map(part([]));
  assert.deepEqual(m, {
    logs: [],
    logCount: 0,
    spans: [],
    spanCount: 0,
    primary: [],
    unmappable: [],
    truncated: 0,
    flattened: 0,
  });
  const d = decodeBoth(m);
  assert.deepEqual(d.logs, []);
  assert.deepEqual(d.spans, []);
});

// ---------------------------------------------------------------- protobuf = JSON on hard inputs

test('protobuf and JSON decode to the same requests: multi-byte, long strings, many attributes, big ints, depth', () => {
  const many: Record<string, number> = {};
  for (let i = 0; i < 200; i++) many[`attr_${i}`] = i * 1000;
  let deep: unknown = 'bottom';
  // 30 kvlists deep: 5 + 3 × 29 nested messages, within protoc's (and protobufjs') default recursion limit of 100
  for (let i = 0; i < 30; i++) deep = { [`l${i}`]: deep, [`n${i}`]: i };
  const multi = 'ünïcödé 日本語テキスト 🎉🎉 '.repeat(8); // > 127 bytes: the length-prefix move path
  const rec = {
    ts: TS,
    multi,
    short_multi: 'é',
    long_ascii: 'x'.repeat(20_000),
    long_multi: 'é日'.repeat(9_000), // 45 000 bytes: a 3-byte length prefix
    ключ: 'значение',
    鍵: '値',
    '🔑': '🗝️',
    neg1: -1,
    neg_big: -123_456_789_012,
    neg_max: -(2 ** 53 - 1),
    max_safe: 2 ** 53 - 1,
    near: 2 ** 53 - 2,
    // not a safe integer any more: a double (JSON.parse already rounded 2^53 + 1 to 2^53)
    two53: 2 ** 53,
    huge: 1e21,
    inf: 'placeholder',
    deep,
    ...many,
  };
  const text = JSON.stringify(rec).replace('"placeholder"', '-1e400');
  const { logs, spans, m } = mapDecode([text, { ...REQUEST, route: `/${multi}`, note: 'x'.repeat(17_000), neg: -42 }], {
    maxValueLength: 100_000,
    maxDepth: 64,
  });
  assert.equal(m.truncated, 0);
  assert.equal(m.flattened, 0);
  const a = logs[0]!.attributes;
  assert.equal(Object.keys(a).length, 17 + 200 + 2);
  assert.deepEqual(a['multi'], { s: multi });
  assert.deepEqual(a['short_multi'], { s: 'é' });
  assert.deepEqual(a['long_ascii'], { s: rec.long_ascii });
  assert.deepEqual(a['long_multi'], { s: rec.long_multi });
  assert.deepEqual(a['ключ'], { s: 'значение' });
  assert.deepEqual(a['鍵'], { s: '値' });
  assert.deepEqual(a['🔑'], { s: '🗝️' });
  assert.deepEqual(a['neg1'], { i: '-1' });
  assert.deepEqual(a['neg_big'], { i: '-123456789012' });
  assert.deepEqual(a['neg_max'], { i: '-9007199254740991' });
  assert.deepEqual(a['max_safe'], { i: '9007199254740991' });
  assert.deepEqual(a['near'], { i: '9007199254740990' });
  assert.deepEqual(a['two53'], { d: 2 ** 53 });
  assert.deepEqual(a['huge'], { d: 1e21 });
  // JSON.parse reads -1e400 as -Infinity: OTLP/JSON writes it "-Infinity" (before, JSON.stringify made it null)
  assert.deepEqual(a['inf'], { d: -Infinity });
  assert.deepEqual(a['attr_199'], { i: '199000' });
  let v: Value = a['deep']!;
  for (let i = 29; i >= 0; i--) {
    assert.ok('kv' in v, `level ${i}`);
    assert.deepEqual(v.kv[`n${i}`], { i: String(i) });
    v = v.kv[`l${i}`]!;
  }
  assert.deepEqual(v, { s: 'bottom' });
  assert.equal(spans[0]!.name, `GET /${multi}`);
  assert.deepEqual(spans[0]!.attributes['note'], { s: 'x'.repeat(17_000) });
  assert.deepEqual(spans[0]!.attributes['neg'], { i: '-42' });
});

test('protobuf and JSON agree on a large part (the encoder’s buffer grows many times)', () => {
  const lines = Array.from({ length: 2000 }, (_, i) =>
    i % 3 === 0 ? { ...REQUEST, n: i, s: 'ü'.repeat(i % 200) } : { ts: TS + i, n: -i, s: '🎉'.repeat(i % 50) },
  );
  const { logs, spans } = mapDecode(lines);
  assert.equal(logs.length, 2000);
  assert.equal(spans.length, 667);
  assert.deepEqual(logs[1999]!.attributes['s'], { s: '🎉'.repeat(1999 % 50) });
});

// ---------------------------------------------------------------- the official SDK, same logical records

/** The agent's attribute list as the SDK takes it (a plain object; insertion order is the wire order). */
function sdkAttrs(rec: Record<string, unknown>, index: number): Record<string, unknown> {
  return { ...rec, 'sidekick.batch.id': BATCH, 'sidekick.batch.index': index };
}

const sdkResource = (): Record<string, unknown> => Object.fromEntries(ENV.resource);
const SDK_SCOPE = { name: 'sidekick-agent', version: VERSION };

test('LogRecords equal the official SDK’s encoding of the same records (protobuf and JSON)', () => {
  const acceptedAt = { starts: [0, 2], times: [T1, T2] };
  const plain = {
    ts: TS + 0.5,
    type: 'order.placed',
    user: 'ann',
    n: 3,
    ratio: 0.5,
    ok: true,
    nil: null,
    tags: ['a', null, 2],
    empty: {},
  };
  const failed = { ts: '2024-12-06T15:46:40.123Z', status: 503, error: 'db down', meta: { retry: { count: 2 } } };
  const noTs = { msg: 'ünïcödé 🎉', neg: -12 };
  const req = { ...REQUEST, traceparent: TRACEPARENT };
  const lines = [plain, failed, noTs, req];
  const { m, logsReq, spans } = mapDecode(lines, {}, { acceptedAt, firstIndex: 0 });
  const records: SdkLogInput[] = [
    {
      timeMs: TS + 0.5,
      observedMs: T1,
      severityNumber: 9,
      severityText: 'INFO',
      eventName: 'order.placed',
      attributes: sdkAttrs(plain, 0),
    },
    { timeMs: TS, observedMs: T1, severityNumber: 17, severityText: 'ERROR', attributes: sdkAttrs(failed, 1) },
    { timeMs: T2, observedMs: T2, severityNumber: 9, severityText: 'INFO', attributes: sdkAttrs(noTs, 2) },
    {
      timeMs: TS,
      observedMs: T2,
      severityNumber: 9,
      severityText: 'INFO',
      eventName: 'request',
      attributes: sdkAttrs(req, 3),
      // the request's own span (its ids are the agent's: checked above); the traceparent's sampled flag
      traceId: spans[0]!.traceId,
      spanId: spans[0]!.spanId,
      traceFlags: 1,
    },
  ];
  assert.equal(spans[0]!.traceId, TRACE_ID);
  assert.equal(m.logs.length, 4);
  const sdk = decodeLogsRequest(sdkLogsRequest(records, sdkResource(), SDK_SCOPE), PROTOBUF);
  assert.deepEqual(logsReq, sdk);
  // attribute order too (deepEqual does not see it)
  sdk.resourceLogs[0]!.scopeLogs[0]!.logRecords.forEach((r, i) =>
    assertAttrs(logsReq.resourceLogs[0]!.scopeLogs[0]!.logRecords[i]!.attributes, r.attributes),
  );
  assert.deepEqual(
    decodeLogsRequest(encodeLogsJson(ENV, m.logs), JSON_TYPE),
    decodeLogsRequest(sdkLogsJson(records, sdkResource(), SDK_SCOPE), JSON_TYPE),
  );
  // What the SDK cannot express, so it is left out of this comparison (covered by the protobuf = JSON test above):
  // a whole-number double. The agent only sees JSON.parse's numbers, so a record's 2.0 is 2 for both (an intValue);
  // but an integer beyond 2^53 (2 ** 53, 1e21) is a doubleValue from the agent (an int64 would not be exact) where
  // the SDK, going by Number.isInteger, writes an intValue.
});

test('a request span equals the official SDK’s encoding of the same span (protobuf and JSON)', () => {
  // duration 12.5, not REQUEST's 12.345: the SDK path takes the end as a ms double, and TS + 12.345 as a double is
  // 1733500000135.344970703125 (the ~240 ns resolution of a double at 1.7e12), so the SDK would send …135344971
  // where the agent sends the exact …135345000 (checked in the span-end test above)
  const root = { ...REQUEST, duration_ms: 12.5, status: 502, error: 'upstream reset' };
  const joined = { ...REQUEST, duration_ms: 12.5, traceparent: TRACEPARENT, tracestate: 'congo=t61rcWkgMzE' };
  const { m, tracesReq, spans } = mapDecode([root, joined]);
  const rest = (r: Record<string, unknown>, index: number, failed?: string): Record<string, unknown> => {
    const { ts, type, method, route, status, duration_ms, pid, traceparent, tracestate, ...others } = r;
    void [ts, type, duration_ms, traceparent, tracestate];
    return {
      'http.request.method': method,
      'http.route': route,
      'http.response.status_code': status,
      'process.pid': pid,
      ...(failed !== undefined && { 'error.type': failed }),
      ...others,
      'sidekick.batch.id': BATCH,
      'sidekick.batch.index': index,
    };
  };
  const sdkSpans = [
    {
      traceId: spans[0]!.traceId,
      spanId: spans[0]!.spanId,
      name: 'GET /orders/:id',
      kind: 1, // @opentelemetry/api SpanKind.SERVER: OTLP's 2
      startMs: TS,
      endMs: TS + 12.5,
      attributes: rest(root, 0, '502'),
      status: { code: 2, message: 'upstream reset' },
      traceFlags: 1,
    },
  ];
  const sdk = decodeTracesRequest(sdkTracesRequest(sdkSpans, sdkResource(), SDK_SCOPE), PROTOBUF);
  // the SDK path gives the root span flags 0x101 (sampled, "parent remoteness known": there is no parent) as well
  assert.deepEqual({ ...tracesReq, resourceSpans: [] }, { ...sdk, resourceSpans: [] });
  const ours = tracesReq.resourceSpans[0]!;
  const theirs = sdk.resourceSpans[0]!;
  assert.deepEqual(ours.resource, theirs.resource);
  assert.deepEqual(ours.scopeSpans[0]!.scope, theirs.scopeSpans[0]!.scope);
  assert.deepEqual(ours.scopeSpans[0]!.spans[0], theirs.scopeSpans[0]!.spans[0]);
  assertAttrs(ours.scopeSpans[0]!.spans[0]!.attributes, theirs.scopeSpans[0]!.spans[0]!.attributes);
  const sdkJson = decodeTracesRequest(sdkTracesJson(sdkSpans, sdkResource(), SDK_SCOPE), JSON_TYPE);
  assert.deepEqual(decodeTracesRequest(encodeTracesJson(ENV, m.spans.slice(0, 1)), JSON_TYPE), sdkJson);

  // A span joined to a traceparent: the helper's ReadableSpan cannot say that its parent is remote (no isRemote on
  // parentSpanContext) nor carry a traceState, so the SDK writes flags 0x101 and no trace_state where the agent
  // writes 0x301 (W3C: a traceparent's parent is remote) and the record's tracestate. Everything else must match.
  const joinedSdk = decodeTracesRequest(
    sdkTracesRequest(
      [
        {
          traceId: TRACE_ID,
          spanId: spans[1]!.spanId,
          parentSpanId: PARENT_ID,
          name: 'GET /orders/:id',
          kind: 1,
          startMs: TS,
          endMs: TS + 12.5,
          attributes: rest(joined, 1),
          traceFlags: 1,
        },
      ],
      sdkResource(),
      SDK_SCOPE,
    ),
    PROTOBUF,
  ).resourceSpans[0]!.scopeSpans[0]!.spans[0]!;
  assert.deepEqual(joinedSdk.flags, 0x101);
  assert.deepEqual(joinedSdk.traceState, '');
  assert.deepEqual({ ...spans[1]!, flags: 0x101, traceState: '' }, joinedSdk);
  assert.equal(spans[1]!.flags, 0x301);
  assert.equal(spans[1]!.traceState, 'congo=t61rcWkgMzE');
});

// ---------------------------------------------------------------- responses

test('partial success and rpc Status bodies, as a collector encodes them, decode', () => {
  for (const signal of ['logs', 'traces'] as const) {
    const ps = { rejected: 3, message: 'ünïcödé: 3 records had no timestamp' };
    assert.deepEqual(decodePartialSuccess(encodeExportResponse(signal, PROTOBUF, ps)), ps);
    assert.deepEqual(decodePartialSuccessJson(encodeExportResponse(signal, JSON_TYPE, ps)), ps);
    const big = { rejected: 2 ** 40 + 5, message: '' };
    assert.deepEqual(decodePartialSuccess(encodeExportResponse(signal, PROTOBUF, big)), big);
    assert.deepEqual(decodePartialSuccessJson(encodeExportResponse(signal, JSON_TYPE, big)), big);
    const long = { rejected: 1, message: 'm'.repeat(300) }; // a 2-byte length
    assert.deepEqual(decodePartialSuccess(encodeExportResponse(signal, PROTOBUF, long)), long);
    // plain success: an empty body (protobuf), {} (JSON); and a partial_success of zeros
    const none = { rejected: 0, message: '' };
    assert.deepEqual(decodePartialSuccess(encodeExportResponse(signal, PROTOBUF)), none);
    assert.deepEqual(decodePartialSuccessJson(encodeExportResponse(signal, JSON_TYPE)), none);
    assert.deepEqual(decodePartialSuccess(encodeExportResponse(signal, PROTOBUF, none)), none);
    assert.deepEqual(decodePartialSuccessJson(Buffer.alloc(0)), none);
  }
  // the other signal's counter name is read too (a collector that answers traces with the logs field, or v.v.)
  assert.deepEqual(decodePartialSuccessJson(Buffer.from('{"partialSuccess":{"rejectedSpans":"2"}}')), {
    rejected: 2,
    message: '',
  });
  assert.deepEqual(decodePartialSuccessJson(Buffer.from('{"partialSuccess":{"rejectedLogRecords":-4}}')), {
    rejected: 0,
    message: '',
  });
  assert.deepEqual(decodePartialSuccessJson(Buffer.from('null')), { rejected: 0, message: '' });
  assert.deepEqual(decodePartialSuccessJson(Buffer.from('[1]')), { rejected: 0, message: '' });

  assert.equal(
    decodeStatusMessage(encodeRpcStatus(PROTOBUF, { code: 3, message: 'bad attribute: ключ' })),
    'bad attribute: ключ',
  );
  assert.equal(
    decodeStatusMessage(encodeRpcStatus(PROTOBUF, { code: 8, message: 'x'.repeat(1000) })),
    'x'.repeat(1000),
  );
  assert.equal(decodeStatusMessage(encodeRpcStatus(PROTOBUF, { code: 14, message: '' })), '');
  assert.equal(decodeStatusMessage(Buffer.alloc(0)), '');
});

test('garbage response bodies: the decoders throw (the exporter catches), they never hang or return junk silently', () => {
  // decodePartialSuccess / decodeStatusMessage throw a RangeError on a body that is not protobuf (an HTML error
  // page, text, a cut-off body); exporter.ts calls them inside try/catch (a 2xx stays a delivery, a refusal keeps
  // the body's text), which is where "must not throw out of the exporter path" is met.
  const garbage = [
    '<html>502 Bad Gateway</html>',
    'garbage',
    '\x0a\x05ab',
    '\x0a\xff',
    '\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80',
  ];
  for (const g of garbage) {
    const b = Buffer.from(g, 'latin1');
    assert.throws(() => decodePartialSuccess(b), RangeError, JSON.stringify(g));
    assert.throws(() => decodeStatusMessage(b), RangeError, JSON.stringify(g));
  }
  // a cut-off partial success
  const full = encodeExportResponse('logs', PROTOBUF, { rejected: 1, message: 'cut here' });
  assert.throws(() => decodePartialSuccess(full.subarray(0, full.length - 2)), RangeError);
  // unknown fields of every wire type are skipped
  const unknown = Buffer.concat([Buffer.from([0x18, 0x07, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2d, 1, 2, 3, 4]), full]);
  assert.deepEqual(decodePartialSuccess(unknown), { rejected: 1, message: 'cut here' });
  // JSON: not JSON throws a SyntaxError (caught the same way); JSON of another shape is zeros
  assert.throws(() => decodePartialSuccessJson(Buffer.from('<html>')), SyntaxError);
  assert.deepEqual(decodePartialSuccessJson(Buffer.from('{"partialSuccess":"yes"}')), { rejected: 0, message: '' });
  assert.deepEqual(decodePartialSuccessJson(Buffer.from('{"partialSuccess":{"rejectedLogRecords":"x"}}')), {
    rejected: 0,
    message: '',
  });
});
