// The OTLP transcoder (src/agent/exporters/otlp/transcode.ts) writes LogRecords straight from the NDJSON bytes. Its
// promise is to write exactly the bytes the model path writes (RecordMapper.map → encodeLogs), whose mapping rules
// test/agent-otlp-mapping.test.ts checks one by one with independent decoders. Here: thousands of generated parts
// (flat and nested records, every field the mapping reads, escapes, non-ASCII, duplicate and array-index keys,
// long strings, every kind of JSON number, odd whitespace, lines that are not objects, split parts) under several
// option sets, compared byte for byte with the model path, plus one decode by protobufjs. Pure unit tests.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { gzipFast } from '../src/agent/exporters/http.ts';
import { acceptedAt, RecordMapper, type MapOptions } from '../src/agent/exporters/otlp/mapping.ts';
import { encodeLogs, encodeTraces, type Envelope } from '../src/agent/exporters/otlp/protobuf.ts';
import { LogsTranscoder } from '../src/agent/exporters/otlp/transcode.ts';
import type { ExportPart } from '../src/agent/exporters/types.ts';
import { decodeLogsRequest, decodeTracesRequest, PROTOBUF } from './helpers/otlp.ts';
import { mulberry32 as rng } from './helpers/random.ts';

const ENV: Envelope = {
  resource: [
    ['service.name', 'shop'],
    ['host.name', 'web-1'],
  ],
  scopeName: 'sidekick-agent',
  scopeVersion: '1.2.3',
};

const KEYS = [
  'ts', 'type', 'status', 'error', 'method', 'duration_ms', 'route', 'pid', 'host', 'k', 'pad', 'req', 'n',
  'sidekick.batch.id', 'sidekick.batch.index', 'traceparent', 'tracestate', 'http.route', 'error.type', 'process.pid',
  'http.request.method', 'http.response.status_code', '0', '42', '07', '', 'a b', 'x'.repeat(130), 'méthode',
]; // prettier-ignore

const FRACTIONS = [
  '0.1', '0.000001', '-0.0', '0.30000000000000004', '3.141592653589793', '99999999999999.9', '999999999999999.9',
  '1234567890.12345', '1234567890123456.5', '123.456e-2', '1.5E3', '0.1e1', '4.35', '1.005', '2.675', '-1.7976931348623157e308',
  '5e-324', '0.9999999999999999', '12345.678901234567890', '1.000000000000000',
]; // prettier-ignore

function value(r: () => number, depth: number): string {
  const pick = Math.floor(r() * 28);
  switch (pick) {
    case 0: return '"GET"';
    case 1: return '"php_request"';
    case 2: return JSON.stringify('x'.repeat(Math.floor(r() * 300)));
    case 3: return '""';
    case 4: return '"a\\"b\\\\c\\n"';
    case 5: return '"caf\u00e9 \ud83d\ude00"';
    case 6: return String(Math.floor(r() * 1000));
    case 7: return String(-Math.floor(r() * 1e6));
    case 8: return '-0';
    case 9: return '1767000000123';
    case 10: return '123456789012345678901'; // past 2^53: a double
    case 11: return '9007199254740993';
    case 12: return (r() * 1000).toFixed(3);
    case 13: return '1e3';
    case 14: return '-2.5E-3';
    case 15: return '1.0';
    case 16: return '500';
    case 17: return 'true';
    case 18: return 'false';
    case 19: return 'null';
    case 20: return depth < 3 ? `{"a":${value(r, depth + 1)},"b":[1,${value(r, depth + 1)}]}` : '1';
    case 21: return depth < 3 ? `[${value(r, depth + 1)}]` : '2';
    case 22: return '"2026-12-06T16:00:00.5Z"';
    case 23: return '"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"';
    case 24: return '1e400';
    // decimals read in place (≤ 15 digits, no exponent) and the ones that are not: the same doubles as JSON.parse
    case 25: return `${r() < 0.3 ? '-' : ''}${(r() * 10 ** Math.floor(r() * 14)).toFixed(Math.floor(r() * 12))}`;
    case 26: return FRACTIONS[Math.floor(r() * FRACTIONS.length)]!;
    default: return '"1767000000000"';
  } // prettier-ignore
}

const SPACES = ['', ' ', '\t', '  ', '\r'];

function line(r: () => number): string {
  const roll = r();
  if (roll < 0.02) return ['[1,2]', '3', '"s"', 'null', '{}', ' {} '][Math.floor(r() * 6)]!;
  const fields = 1 + Math.floor(r() * 9);
  const ws = (): string => (r() < 0.1 ? SPACES[Math.floor(r() * SPACES.length)]! : '');
  const parts: string[] = [];
  for (let f = 0; f < fields; f++) {
    // mostly the keys a request record or a plain log has, now and then the odd ones
    const key = r() < 0.8 ? KEYS[Math.floor(r() * 13)]! : KEYS[Math.floor(r() * KEYS.length)]!;
    parts.push(`${ws()}${JSON.stringify(key)}${ws()}:${ws()}${value(r, 1)}${ws()}`);
  }
  return `${ws()}{${parts.join(',')}}${ws()}`;
}

function partOf(lines: string[], r: () => number): ExportPart {
  const first = r() < 0.3 ? Math.floor(r() * 5000) : 0;
  const frames = 1 + Math.floor(r() * 3);
  const starts = Array.from({ length: frames }, (_, i) => first + Math.floor((i * lines.length) / frames));
  return {
    id: 'seg00000007-0000000000001234-5f3a9c',
    payload: Buffer.from(lines.map((l) => `${l}\n`).join('')),
    records: lines.length,
    batchId: r() < 0.5 ? 'seg00000007-0000000000001234-5f3a9c' : 'b'.repeat(200),
    firstIndex: first,
    acceptedAt: { starts, times: starts.map((_, i) => 1767000000000 + i * 2 + (r() < 0.2 ? 0.25 : 0)) },
    firstAcceptedAt: 1767000000000,
  };
}

const OPTION_SETS: MapOptions[] = [
  { requestSignal: 'both', maxValueLength: 4096, maxDepth: 8 },
  { requestSignal: 'logs', maxValueLength: 4096, maxDepth: 8 },
  { requestSignal: 'traces', maxValueLength: 4096, maxDepth: 8 },
  { requestSignal: 'logs', maxValueLength: 16, maxDepth: 1 },
];

/** One transcoder per option set that reuses its buffers from part to part (as the exporter runs it with gzip). */
const reusing = new Map<MapOptions, LogsTranscoder>();

function compare(part: ExportPart, opts: MapOptions, label: string): { fast: number } {
  const model = new RecordMapper(opts).map(part);
  const transcoder = new LogsTranscoder(new RecordMapper(opts), ENV);
  const got = transcoder.run(part);
  assert.equal(got.logCount, model.logs.length, `${label}: log count`);
  assert.deepEqual(got.primary, model.primary, `${label}: primary`);
  assert.deepEqual(got.unmappable, model.unmappable, `${label}: unmappable`);
  assert.equal(got.truncated, model.truncated, `${label}: truncated`);
  assert.equal(got.flattened, model.flattened, `${label}: flattened`);
  const want = model.logs.length > 0 ? encodeLogs(ENV, model.logs) : undefined;
  const body = got.logsBody ?? (got.logs.length > 0 ? encodeLogs(ENV, got.logs) : undefined);
  if (want?.toString('hex') !== body?.toString('hex')) {
    assert.deepEqual(
      body && decodeLogsRequest(body, PROTOBUF),
      want && decodeLogsRequest(want, PROTOBUF),
      `${label}: LogRecords differ\n${part.payload.toString()}`,
    );
    assert.fail(`${label}: same LogRecords, different bytes\n${part.payload.toString()}`);
  }
  assert.equal(got.spanCount, model.spans.length, `${label}: span count`);
  const wantSpans = model.spans.length > 0 ? encodeTraces(ENV, model.spans) : undefined;
  const spans = got.tracesBody ?? (got.spans.length > 0 ? encodeTraces(ENV, got.spans) : undefined);
  if (wantSpans?.toString('hex') !== spans?.toString('hex')) {
    assert.deepEqual(
      spans && decodeTracesRequest(spans, PROTOBUF),
      wantSpans && decodeTracesRequest(wantSpans, PROTOBUF),
      `${label}: spans differ\n${part.payload.toString()}`,
    );
    assert.fail(`${label}: same spans, different bytes\n${part.payload.toString()}`);
  }
  // written into buffers kept from the previous parts (smaller and larger ones): the same bytes
  let again = reusing.get(opts);
  if (!again) reusing.set(opts, (again = new LogsTranscoder(new RecordMapper(opts), ENV)));
  const reused = again.run(part, true);
  assert.equal(reused.logsBody?.toString('hex'), got.logsBody?.toString('hex'), `${label}: logs, buffers reused`);
  assert.equal(reused.tracesBody?.toString('hex'), got.tracesBody?.toString('hex'), `${label}: spans, buffers reused`);
  return { fast: transcoder.transcoded };
}

test('generated parts: the transcoder writes the very bytes the model path writes, under every option set', () => {
  let fast = 0;
  let records = 0;
  for (let seed = 1; seed <= 1500; seed++) {
    const r = rng(seed);
    const lines = Array.from({ length: 1 + Math.floor(r() * 12) }, () => line(r));
    // most parts clean (ASCII, no escapes: the transcoder's own path), the rest take the model path whole
    const clean = lines.filter((l) => /^[\x20-\x7e\t\r]*$/.test(l) && !l.includes('\\'));
    const chosen = seed % 5 === 0 ? lines : clean.length > 0 ? clean : lines;
    const part = partOf(chosen, r);
    for (const [o, opts] of OPTION_SETS.entries()) {
      fast += compare(part, opts, `seed ${seed}, option set ${o}`).fast;
      records += chosen.length;
    }
  }
  // the comparison proves something only if the transcoder's own path wrote most records
  assert.ok(fast > records / 5, `${fast} of ${records} records transcoded`);
});

test('an empty part, and a part of lines that are not objects: no LogRecords, nothing encoded', () => {
  const r = rng(3);
  const opts: MapOptions = { requestSignal: 'both', maxValueLength: 4096, maxDepth: 8 };
  const empty = new LogsTranscoder(new RecordMapper(opts), ENV).run({
    ...partOf(['{}'], r),
    payload: Buffer.alloc(0),
    records: 0,
  });
  assert.equal(empty.logCount, 0);
  assert.equal(empty.logsBody, undefined);
  assert.deepEqual(empty.primary, []);
  const junk = new LogsTranscoder(new RecordMapper(opts), ENV).run(partOf(['[1]', '"s"', '7'], r));
  assert.equal(junk.logCount, 0);
  assert.equal(junk.logsBody, undefined);
  assert.deepEqual(junk.primary, ['none', 'none', 'none']);
  assert.equal(junk.unmappable.length, 3);
});

test('request records with spans are transcoded; after 8 records in a row that need the model, the rest is not tried', () => {
  const r = rng(11);
  const req = (i: number): string =>
    `{"ts":${1767000000000 + i},"type":"php_request","route":"/x","method":"GET","status":${i % 3 ? 200 : 503},"duration_ms":${i + 0.5}${i % 3 ? '' : ',"error":"boom"'},"pid":${i}}`;
  const nested = (i: number): string => `{"k":${i},"o":{"a":[1,2]}}`;
  const both: MapOptions = { requestSignal: 'both', maxValueLength: 4096, maxDepth: 8 };
  const requests = Array.from({ length: 20 }, (_, i) => req(i));
  assert.equal(compare(partOf(requests, r), both, 'requests').fast, 20, 'every request record transcoded');
  const traces: MapOptions = { ...both, requestSignal: 'traces' };
  assert.equal(compare(partOf(requests, r), traces, 'requests, traces only').fast, 20);
  const lines = [...Array.from({ length: 10 }, (_, i) => nested(i)), ...requests.slice(0, 10)];
  assert.equal(compare(partOf(lines, r), both, 'nested first').fast, 0, 'not tried after 8 misses in a row');
  const mixed = lines.map((_, i) => (i % 2 ? req(i) : nested(i)));
  assert.equal(compare(partOf(mixed, r), both, 'alternating').fast, 10, 'every flat record transcoded');
});

test('the records B4 and the PHP client send: all transcoded (no model path), equal bytes, decoded by protobufjs', () => {
  const b4 = (i: number): string => `{"k":"p-1-${i}","t":1700000000000,"pad":"${'x'.repeat(150)}"}`;
  const php = (i: number): string =>
    `{"ts":${1767000000000 + i},"type":"php_request","route":"/api/orders","method":"GET","status":${i % 10 === 3 ? 503 : 200},` +
    `"duration_ms":${(i * 7.919) % 250},"memory_peak_bytes":2097152,"host":"web-7f9c-02","pid":21001,"sapi":"fpm-fcgi","sampled":false,"req":"r-${i}"}`;
  const r = rng(7);
  for (const [shape, make] of [
    ['b4', b4],
    ['php', php],
  ] as const) {
    const part = partOf(
      Array.from({ length: 100 }, (_, i) => make(i)),
      r,
    );
    const opts: MapOptions = { requestSignal: 'logs', maxValueLength: 4096, maxDepth: 8 };
    const { fast } = compare(part, opts, shape);
    assert.equal(fast, 100, `${shape}: every record transcoded`);
    const decoded = decodeLogsRequest(new LogsTranscoder(new RecordMapper(opts), ENV).run(part).logsBody!, PROTOBUF);
    const logs = decoded.resourceLogs[0]!.scopeLogs[0]!.logRecords;
    assert.equal(logs.length, 100);
    assert.deepEqual(logs[3]!.attributes['sidekick.batch.index'], { i: String(part.firstIndex + 3) });
    if (shape === 'php') {
      assert.equal(logs[3]!.severityText, 'ERROR');
      assert.equal(logs[3]!.eventName, 'php_request');
      assert.deepEqual(logs[4]!.attributes.sampled, { b: false });
    } else assert.deepEqual(logs[0]!.attributes.pad, { s: 'x'.repeat(150) });
  }
});

test('gzipFast with a volatile payload: one compressed off the loop (over 1 MiB) is copied first, so writing over it is safe', async () => {
  const payload = Buffer.alloc(3 * 1024 * 1024, 'a');
  const pending = gzipFast(payload, { volatile: true });
  payload.fill('b'); // what the transcoder's next run does to its reused buffer
  assert.ok(gunzipSync(await pending).equals(Buffer.alloc(3 * 1024 * 1024, 'a')));
});

test('acceptedAt: each record gets the append time of the last frame that starts at or before it', () => {
  const r = rng(5);
  for (let round = 0; round < 300; round++) {
    const frames = 1 + Math.floor(r() * 60);
    const starts: number[] = [];
    for (let f = 0, at = Math.floor(r() * 3); f < frames; f++, at += 1 + Math.floor(r() * 40)) starts.push(at);
    const times = starts.map((_, f) => 1767000000000 + f);
    const part = { ...partOf(['{}'], r), firstIndex: Math.floor(r() * 50), acceptedAt: { starts, times } };
    for (let i = 0; i < 200; i++) {
      const index = part.firstIndex + i;
      let want = times[0]!;
      for (let k = starts.length - 1; k >= 0; k--)
        if (starts[k]! <= index) {
          want = times[k]!;
          break;
        }
      assert.equal(acceptedAt(part, i), want, `round ${round}, record ${i}`);
    }
  }
});
