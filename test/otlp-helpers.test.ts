// The OTLP test infrastructure itself (test/helpers/otlp*.ts), before anything relies on it: the decoders agree with
// the official SDK's protobuf and JSON encodings of one sample, they fail on what the OTLP/HTTP JSON rules forbid,
// and the fake collector records, decodes and answers (success, partial success, errors, hang, torn connection) the
// way the spec describes. No agent here.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { withDeadline } from '../src/common/async.ts';
import {
  decodeLogsRequest,
  decodeLogsResponse,
  decodeRpcStatus,
  decodeTracesRequest,
  decodeTracesResponse,
  JSON_TYPE,
  PROTOBUF,
  sdkLogsJson,
  sdkLogsRequest,
  sdkTracesJson,
  sdkTracesRequest,
  startCollector,
  type FakeCollector,
  type SdkLogInput,
  type SdkSpanInput,
} from './helpers/otlp.ts';

const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
const SPAN_ID = 'b7ad6b7169203331';
const RESOURCE = { 'service.name': 'checkout', 'host.cpus': 8 };
const SCOPE = { name: 'sidekick.test', version: '1.2.3' };

const RECORDS: SdkLogInput[] = [
  {
    timeMs: 1733475000123,
    observedMs: 1733475000124.5,
    severityNumber: 17,
    severityText: 'ERROR',
    eventName: 'order.failed',
    attributes: {
      str: 'x',
      int: 42,
      neg: -5,
      big: 2 ** 53 - 1,
      dbl: 1.5,
      ok: true,
      no: false,
      raw: new Uint8Array([0xde, 0xad]),
      list: [1, 'two', 3.25, [true]],
      map: { inner: { deep: 'y', n: 7 }, arr: ['a'] },
    },
    traceId: TRACE_ID,
    spanId: SPAN_ID,
    traceFlags: 1,
    body: { msg: 'boom', code: 500 },
  },
  { timeMs: 1733475000200, observedMs: 1733475000201, severityNumber: 9, severityText: 'INFO', attributes: {} },
];

const SPANS: SdkSpanInput[] = [
  {
    traceId: TRACE_ID,
    spanId: SPAN_ID,
    parentSpanId: '00f067aa0ba902b7',
    name: 'GET /orders',
    kind: 1,
    startMs: 1733475000000,
    endMs: 1733475000250.5,
    attributes: { 'http.status_code': 503, retry: [1, 2], meta: { a: 1.25 } },
    status: { code: 2, message: 'upstream down' },
    traceFlags: 1,
    events: [{ name: 'retry', timeMs: 1733475000100, attributes: { n: 1 } }],
  },
];

test('the SDK protobuf and SDK JSON encodings of one log sample decode to the same normalized records', () => {
  const fromProto = decodeLogsRequest(sdkLogsRequest(RECORDS, RESOURCE, SCOPE), PROTOBUF);
  const fromJson = decodeLogsRequest(sdkLogsJson(RECORDS, RESOURCE, SCOPE), JSON_TYPE);
  assert.deepStrictEqual(fromJson, fromProto);

  // Not vacuously equal: the sample is there, typed as the Value representation says.
  assert.equal(fromProto.resourceLogs.length, 1);
  const rl = fromProto.resourceLogs[0]!;
  assert.deepStrictEqual(rl.resource, { 'service.name': { s: 'checkout' }, 'host.cpus': { i: '8' } });
  assert.deepStrictEqual(rl.scopeLogs[0]!.scope, { ...SCOPE, attributes: {}, droppedAttributesCount: 0 });
  const [full, bare] = rl.scopeLogs[0]!.logRecords;
  assert.deepStrictEqual(full, {
    timeUnixNano: '1733475000123000000',
    observedTimeUnixNano: '1733475000124500000',
    severityNumber: 17,
    severityText: 'ERROR',
    eventName: 'order.failed',
    body: { kv: { msg: { s: 'boom' }, code: { i: '500' } } },
    attributes: {
      str: { s: 'x' },
      int: { i: '42' },
      neg: { i: '-5' },
      big: { i: '9007199254740991' },
      dbl: { d: 1.5 },
      ok: { b: true },
      no: { b: false },
      raw: { bytes: 'dead' },
      list: { arr: [{ i: '1' }, { s: 'two' }, { d: 3.25 }, { arr: [{ b: true }] }] },
      map: { kv: { inner: { kv: { deep: { s: 'y' }, n: { i: '7' } } }, arr: { arr: [{ s: 'a' }] } } },
    },
    droppedAttributesCount: 0,
    flags: 1,
    traceId: TRACE_ID,
    spanId: SPAN_ID,
  });
  assert.deepStrictEqual(bare, {
    timeUnixNano: '1733475000200000000',
    observedTimeUnixNano: '1733475000201000000',
    severityNumber: 9,
    severityText: 'INFO',
    eventName: '',
    body: undefined,
    attributes: {},
    droppedAttributesCount: 0,
    flags: 0,
    traceId: '',
    spanId: '',
  });
});

test('the SDK protobuf and SDK JSON encodings of one span decode to the same normalized span', () => {
  const fromProto = decodeTracesRequest(sdkTracesRequest(SPANS, RESOURCE, SCOPE), PROTOBUF);
  const fromJson = decodeTracesRequest(sdkTracesJson(SPANS, RESOURCE, SCOPE), JSON_TYPE);
  assert.deepStrictEqual(fromJson, fromProto);
  const span = fromProto.resourceSpans[0]!.scopeSpans[0]!.spans[0]!;
  assert.deepStrictEqual(
    { ...span, events: undefined },
    {
      traceId: TRACE_ID,
      spanId: SPAN_ID,
      parentSpanId: '00f067aa0ba902b7',
      traceState: '',
      name: 'GET /orders',
      kind: 2, // api SpanKind.SERVER (1) is OTLP SPAN_KIND_SERVER (2)
      startTimeUnixNano: '1733475000000000000',
      endTimeUnixNano: '1733475000250500000',
      attributes: {
        'http.status_code': { i: '503' },
        retry: { arr: [{ i: '1' }, { i: '2' }] },
        meta: { kv: { a: { d: 1.25 } } },
      },
      droppedAttributesCount: 0,
      events: undefined,
      droppedEventsCount: 0,
      links: [],
      droppedLinksCount: 0,
      status: { code: 2, message: 'upstream down' },
      flags: 0x101, // sampled, and HAS_IS_REMOTE (the parent is local)
    },
  );
  assert.deepStrictEqual(span.events, [
    { timeUnixNano: '1733475000100000000', name: 'retry', attributes: { n: { i: '1' } }, droppedAttributesCount: 0 },
  ]);
});

/** The SDK's JSON for RECORDS with `edit` applied to the first log record. */
function editedJson(edit: (lr: Record<string, unknown>) => void): Buffer {
  const req = JSON.parse(sdkLogsJson(RECORDS, RESOURCE, SCOPE).toString());
  edit(req.resourceLogs[0].scopeLogs[0].logRecords[0]);
  return Buffer.from(JSON.stringify(req));
}

test('the JSON decoder rejects what OTLP/JSON forbids, and sees a changed value type', () => {
  const base64Id = Buffer.from(TRACE_ID, 'hex').toString('base64');
  assert.throws(
    () =>
      decodeLogsRequest(
        editedJson((lr) => (lr.traceId = base64Id)),
        JSON_TYPE,
      ),
    /traceId.*hex/,
  );
  const b64Span = Buffer.from(SPAN_ID, 'hex').toString('base64');
  assert.throws(
    () =>
      decodeLogsRequest(
        editedJson((lr) => (lr.spanId = b64Span)),
        JSON_TYPE,
      ),
    /spanId.*hex/,
  );
  assert.throws(
    () =>
      decodeLogsRequest(
        editedJson((lr) => (lr.bogus = 1)),
        JSON_TYPE,
      ),
    /unknown field "bogus"/,
  );
  const snake = editedJson((lr) => {
    lr.time_unix_nano = lr.timeUnixNano;
    delete lr.timeUnixNano;
  });
  assert.throws(() => decodeLogsRequest(snake, JSON_TYPE), /unknown field "time_unix_nano"/);
  const enumName = editedJson((lr) => (lr.severityNumber = 'SEVERITY_NUMBER_ERROR'));
  assert.throws(() => decodeLogsRequest(enumName, JSON_TYPE), /enum .* integer/);
  const fraction = editedJson((lr) => (lr.timeUnixNano = 1.5));
  assert.throws(() => decodeLogsRequest(fraction, JSON_TYPE), /not an integer/);
  const twoValues = editedJson((lr) => (lr.body = { stringValue: 'a', intValue: 1 }));
  assert.throws(() => decodeLogsRequest(twoValues, JSON_TYPE), /more than one value/);
  const dup = editedJson((lr) => (lr.attributes = [...(lr.attributes as unknown[]), { key: 'str', value: {} }]));
  assert.throws(() => decodeLogsRequest(dup, JSON_TYPE), /duplicate key "str"/);

  // 64-bit integers as numbers or strings are both fine, and the same; an int turned double is not.
  const asNumber = editedJson((lr) => (lr.timeUnixNano = 1733475000123000));
  assert.equal(
    decodeLogsRequest(asNumber, JSON_TYPE).resourceLogs[0]!.scopeLogs[0]!.logRecords[0]!.timeUnixNano,
    '1733475000123000',
  );
  const asDouble = editedJson((lr) => {
    const attrs = lr.attributes as Array<{ key: string; value: Record<string, unknown> }>;
    attrs.find((a) => a.key === 'int')!.value = { doubleValue: 42 };
  });
  const reference = decodeLogsRequest(sdkLogsJson(RECORDS, RESOURCE, SCOPE), JSON_TYPE);
  assert.notDeepStrictEqual(decodeLogsRequest(asDouble, JSON_TYPE), reference);
});

test('the protobuf decoder rejects unknown field numbers and mismatched wire types', () => {
  const good = sdkLogsRequest(RECORDS, RESOURCE, SCOPE);
  // Field 99, varint 1, appended to ExportLogsServiceRequest: protobufjs alone would skip it.
  const unknown = Buffer.concat([good, Buffer.from([0x98, 0x06, 0x01])]);
  assert.throws(() => decodeLogsRequest(unknown, PROTOBUF), /unknown field number 99/);
  // Field 1 (resource_logs, a message) sent as a varint.
  assert.throws(() => decodeLogsRequest(Buffer.from([0x08, 0x01]), PROTOBUF), /wire type 0/);
  assert.throws(() => decodeLogsRequest(good, 'text/plain'), /unsupported Content-Type/);
});

async function post(c: FakeCollector, path: string, body: Buffer, headers: Record<string, string>) {
  const res = await withDeadline(fetch(c.url + path, { method: 'POST', headers, body }), 5_000, `POST ${path}`);
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

test(
  'the collector records a gzip protobuf request and a JSON request, and answers each in its own encoding',
  { timeout: 20_000 },
  async (t) => {
    const c = await startCollector();
    t.after(() => c.close());
    const proto = sdkLogsRequest(RECORDS, RESOURCE, SCOPE);
    const gz = gzipSync(proto);
    const r1 = await post(c, '/v1/logs', gz, { 'content-type': PROTOBUF, 'content-encoding': 'gzip' });
    assert.equal(r1.status, 200);
    assert.equal(r1.headers.get('content-type'), PROTOBUF);
    assert.deepStrictEqual(decodeLogsResponse(r1.body, PROTOBUF), { partialSuccess: undefined });

    const json = sdkLogsJson(RECORDS, RESOURCE, SCOPE);
    const r2 = await post(c, '/v1/logs', json, { 'content-type': 'application/json; charset=utf-8' });
    assert.equal(r2.status, 200);
    assert.equal(r2.headers.get('content-type'), JSON_TYPE);
    assert.deepStrictEqual(decodeLogsResponse(r2.body, JSON_TYPE), { partialSuccess: undefined });

    const r3 = await post(c, '/v1/traces', sdkTracesRequest(SPANS, RESOURCE, SCOPE), { 'content-type': PROTOBUF });
    assert.equal(r3.status, 200);

    await c.waitFor((x) => x.requests.length === 3, 'three requests', 5_000);
    const [a, b] = c.requests;
    assert.equal(a!.signal, 'logs');
    assert.equal(a!.encoding, 'gzip');
    assert.deepStrictEqual(a!.bytes, gz);
    assert.deepStrictEqual(a!.body, proto);
    assert.equal(b!.encoding, 'identity');
    assert.equal(b!.contentType, 'application/json; charset=utf-8');
    assert.deepStrictEqual(a!.decoded, b!.decoded);
    const records = c.logRecords();
    assert.equal(records.length, 4);
    assert.deepStrictEqual(records[0]!.resource, { 'service.name': { s: 'checkout' }, 'host.cpus': { i: '8' } });
    assert.equal(records[0]!.scope.name, SCOPE.name);
    assert.equal(records[2]!.eventName, 'order.failed');
    assert.deepStrictEqual(
      c.spans().map((s) => s.name),
      ['GET /orders'],
    );

    // An undecodable body is answered 400 and makes logRecords() fail loudly.
    const bad = await post(c, '/v1/logs', Buffer.from('{"resourceLogs":[{"nope":1}]}'), { 'content-type': JSON_TYPE });
    assert.equal(bad.status, 400);
    assert.match(decodeRpcStatus(bad.body, JSON_TYPE).message, /unknown field "nope"/);
    assert.throws(() => c.logRecords(), /request #3 was not decodable/);
  },
);

test('the collector answers a scripted partial success in the request encoding', { timeout: 20_000 }, async (t) => {
  const c = await startCollector({
    respond: (req) => ({
      partialSuccess: { rejected: req.signal === 'logs' ? 1 : 3, message: `some ${req.signal} dropped` },
    }),
  });
  t.after(() => c.close());
  const proto = await post(c, '/v1/logs', sdkLogsRequest(RECORDS, RESOURCE, SCOPE), { 'content-type': PROTOBUF });
  assert.equal(proto.status, 200);
  assert.deepStrictEqual(decodeLogsResponse(proto.body, PROTOBUF), {
    partialSuccess: { rejected: 1, message: 'some logs dropped' },
  });
  const json = await post(c, '/v1/traces', sdkTracesJson(SPANS, RESOURCE, SCOPE), { 'content-type': JSON_TYPE });
  assert.equal(json.status, 200);
  assert.deepStrictEqual(JSON.parse(json.body.toString()), {
    partialSuccess: { rejectedSpans: '3', errorMessage: 'some traces dropped' },
  });
  assert.deepStrictEqual(decodeTracesResponse(json.body, JSON_TYPE), {
    partialSuccess: { rejected: 3, message: 'some traces dropped' },
  });
});

test(
  'the collector answers 429/503 with Retry-After, 400 and 413 with a google.rpc.Status',
  { timeout: 20_000 },
  async (t) => {
    const script = [
      { status: 429, retryAfter: 7 },
      { status: 503, retryAfter: 'Wed, 21 Oct 2026 07:28:00 GMT', errorMessage: 'overloaded' },
      { status: 400, errorMessage: 'bad batch' },
      { status: 413 },
    ];
    const c = await startCollector({ respond: (_req, n) => script[n]! });
    t.after(() => c.close());
    const body = sdkLogsRequest(RECORDS, RESOURCE, SCOPE);
    const r429 = await post(c, '/v1/logs', body, { 'content-type': PROTOBUF });
    assert.equal(r429.status, 429);
    assert.equal(r429.headers.get('retry-after'), '7');
    assert.deepStrictEqual(decodeRpcStatus(r429.body, PROTOBUF), { code: 8, message: 'scripted 429' });
    const r503 = await post(c, '/v1/logs', sdkLogsJson(RECORDS, RESOURCE, SCOPE), { 'content-type': JSON_TYPE });
    assert.equal(r503.status, 503);
    assert.equal(r503.headers.get('retry-after'), 'Wed, 21 Oct 2026 07:28:00 GMT');
    assert.deepStrictEqual(decodeRpcStatus(r503.body, JSON_TYPE), { code: 14, message: 'overloaded' });
    const r400 = await post(c, '/v1/logs', body, { 'content-type': PROTOBUF });
    assert.deepStrictEqual(
      [r400.status, decodeRpcStatus(r400.body, PROTOBUF)],
      [400, { code: 3, message: 'bad batch' }],
    );
    const r413 = await post(c, '/v1/logs', body, { 'content-type': PROTOBUF });
    assert.equal(r413.status, 413);
  },
);

test(
  'the collector refuses what is not an OTLP request: other paths, content types, oversized bodies',
  { timeout: 20_000 },
  async (t) => {
    const c = await startCollector({ maxBodyBytes: 1024, pathPrefix: '/otlp' });
    t.after(() => c.close());
    assert.match(c.url, /^http:\/\/127\.0\.0\.1:\d+\/otlp$/);
    const small = sdkLogsRequest(RECORDS.slice(1), RESOURCE, SCOPE);
    assert.equal((await post(c, '/v1/metrics', small, { 'content-type': PROTOBUF })).status, 404);
    assert.equal((await post(c, '/v1/logs', small, { 'content-type': 'text/plain' })).status, 415);
    const big = await post(c, '/v1/logs', Buffer.alloc(4096), { 'content-type': PROTOBUF });
    assert.equal(big.status, 413);
    const bomb = await post(c, '/v1/logs', gzipSync(Buffer.alloc(4096)), {
      'content-type': PROTOBUF,
      'content-encoding': 'gzip',
    });
    assert.equal(bomb.status, 413);
    assert.equal((await post(c, '/v1/logs', small, { 'content-type': PROTOBUF })).status, 200);
    assert.deepStrictEqual(c.unmatched, ['POST /otlp/v1/metrics']);
  },
);

test(
  'a hanging request stays open until close(), which does not hang; a destroyed one fails',
  { timeout: 20_000 },
  async (t) => {
    const c = await startCollector({ respond: (_req, n) => (n === 0 ? 'hang' : 'destroy') });
    t.after(() => c.close());
    const body = sdkLogsRequest(RECORDS, RESOURCE, SCOPE);
    const send = () => fetch(c.url + '/v1/logs', { method: 'POST', headers: { 'content-type': PROTOBUF }, body });
    let settled = false;
    const hung = send().finally(() => (settled = true));
    hung.catch(() => undefined);
    await c.waitFor((x) => x.hanging() === 1, 'the first request held open', 5_000);
    assert.equal(c.requests.length, 1);

    await assert.rejects(withDeadline(send(), 5_000, 'the destroyed request'), /fetch failed/);
    assert.equal(c.requests.length, 2);
    assert.equal(settled, false, 'the held request is still open');

    await withDeadline(c.close(), 2_000, 'collector close with a request held open');
    await assert.rejects(withDeadline(hung, 5_000, 'the held request after close'), /fetch failed/);
    assert.equal(c.hanging(), 0);
    await withDeadline(c.close(), 1_000, 'a second close');
  },
);
