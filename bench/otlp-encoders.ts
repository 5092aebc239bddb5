// OTLP encoders: the cost of turning one spool part of 100 php_request records (NDJSON, ~12 fields each as
// clients/php/sidekick-agent.php sends them, plus two Agent::tag() fields) into an ExportLogsServiceRequest, three
// ways, every one starting from the NDJSON Buffer (JSON.parse included: each needs parsed objects):
//
//   ours          RecordMapper.map (requestSignal 'logs': LogRecords only, the same work as the others) + encodeLogs
//                 (src/agent/exporters/otlp/: the hand-written encoder the exporter uses)
//   protobufjs    the official .proto files (test/fixtures/opentelemetry-proto, loaded once); per part: plain objects
//                 → Type.encode().finish() (protobufjs' fast path), and the same through Type.fromObject first
//   otel sdk      @opentelemetry/sdk-logs LoggerProvider (made once) → logger.emit per record → ReadableLogRecords →
//                 @opentelemetry/otlp-transformer ProtobufLogsSerializer (what a user of the SDK path pays per part)
//
// plus our whole per-part path with spans (map 'both' + encodeLogs + encodeTraces), encodeTraces alone, and gzip
// level 1 (what the exporter uses) of each request. tinybench, --rounds rounds (task order rotated each round),
// reporting the median over rounds of each task's median time per part, ÷ 100 = µs per record. Once, before timing:
// the three encoders' outputs decode (test/helpers/otlp-decode.ts, protobufjs, strict) to the same records.
//
//   node --import tsx bench/otlp-encoders.ts [--rounds 5] [--time 500]
import assert from 'node:assert/strict';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { Attributes } from '@opentelemetry/api';
import { ProtobufLogsSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { LoggerProvider, type LogRecordProcessor, type ReadableLogRecord } from '@opentelemetry/sdk-logs';
import protobuf from 'protobufjs';
import { Bench } from 'tinybench';
import { RecordMapper } from '../src/agent/exporters/otlp/mapping.ts';
import { encodeLogs, encodeTraces, type Envelope } from '../src/agent/exporters/otlp/protobuf.ts';
import { LogsTranscoder } from '../src/agent/exporters/otlp/transcode.ts';
import type { ExportPart } from '../src/agent/exporters/types.ts';
import { decodeLogsRequest, PROTO_DIR } from '../test/helpers/otlp-decode.ts';
import { arg, median, report } from './fixtures/runtime-util.ts';

const BENCH = 'OTLP encoders';
const N = 100;
const ROUNDS = Number(arg('rounds', '5'));
const TIME_MS = Number(arg('time', '500'));

// ------------------------------------------------------------------------------------------------ the part

/** 100 php_request records as the PHP client writes them (a few 5xx with an error), two tags each. */
function phpRequestLines(n: number): Buffer {
  const routes = ['/index.php', '/api/orders', '/api/users/42', '/checkout', '/search'];
  const methods = ['GET', 'GET', 'GET', 'POST', 'PUT'];
  let s = '';
  for (let i = 0; i < n; i++) {
    const failed = i % 25 === 7;
    const rec: Record<string, unknown> = {
      ts: 1_767_000_000_000 + i * 13,
      type: 'php_request',
      route: routes[i % routes.length],
      method: methods[i % methods.length],
      status: failed ? 500 : i % 10 === 3 ? 404 : 200,
      duration_ms: Math.round((3 + ((i * 7919) % 250) / 3.7) * 1000) / 1000 + 0.001, // never a whole number
      memory_peak_bytes: 2_097_152 * (1 + (i % 4)),
      host: 'web-7f9c-02',
      pid: 21_000 + (i % 16),
      sapi: 'fpm-fcgi',
      sampled: i % 10 === 0,
      ...(failed ? { error: 'Uncaught PDOException: SQLSTATE[HY000] [2002] Connection refused' } : {}),
      // Agent::tag() fields
      tenant: `acme-${i % 7}`,
      release: '2026.12.3',
    };
    s += `${JSON.stringify(rec)}\n`;
  }
  return Buffer.from(s);
}

const payload = phpRequestLines(N);
const ACCEPTED = 1_767_000_000_500;
const part: ExportPart = {
  id: '0000001a2b3c4d5e-000042',
  payload,
  records: N,
  batchId: '0000001a2b3c4d5e-000042',
  firstIndex: 0,
  firstAcceptedAt: ACCEPTED,
};
const env: Envelope = {
  resource: [
    ['service.name', 'sidekick-agent'],
    ['host.name', 'web-7f9c-02'],
  ],
  scopeName: 'sidekick-agent',
  scopeVersion: '0.1.0',
};
const limits = { maxValueLength: 4096, maxDepth: 8 };
const mapLogs = new RecordMapper({ requestSignal: 'logs', ...limits });
const mapBoth = new RecordMapper({ requestSignal: 'both', ...limits });

// ------------------------------------------------------------------------------------------------ shared model

/** The NDJSON lines parsed, as the mapper parses them. */
function parseLines(p: Buffer): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  let start = 0;
  while (start < p.length) {
    let nl = p.indexOf(0x0a, start);
    if (nl === -1) nl = p.length - 1;
    out.push(JSON.parse(p.toString('utf8', start, nl + 1)) as Record<string, unknown>);
    start = nl + 1;
  }
  return out;
}

const failedOf = (r: Record<string, unknown>): boolean =>
  (r.error !== undefined && r.error !== null && r.error !== false) || (typeof r.status === 'number' && r.status >= 500);

// ------------------------------------------------------------------------------------------------ protobufjs

const root = new protobuf.Root();
root.resolvePath = (_origin, target) => join(PROTO_DIR, target);
root.loadSync(['opentelemetry/proto/collector/logs/v1/logs_service.proto']);
root.resolveAll();
const LogsRequest = root.lookupType('opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest');

/** Unix ms → fixed64 nanoseconds as {low, high} (exact; a number would lose the low digits past 2^53). */
function nanos(ms: number): { low: number; high: number; unsigned: boolean } {
  const whole = Math.floor(ms);
  const fracNs = Math.round((ms - whole) * 1e6);
  const wh = Math.floor(whole / 4294967296);
  const low = (whole - wh * 4294967296) * 1e6 + fracNs;
  const carry = Math.floor(low / 4294967296);
  return { low: (low - carry * 4294967296) | 0, high: (wh * 1e6 + carry) | 0, unsigned: true };
}

/** The mapping's observed time: when the agent accepted the record, never before a request ended. */
const observedOf = (r: Record<string, unknown>): number =>
  Math.max(ACCEPTED, (r.ts as number) + ((r.duration_ms as number | undefined) ?? 0));

function pbValue(v: unknown): Record<string, unknown> {
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'number') return Number.isSafeInteger(v) ? { intValue: v } : { doubleValue: v };
  return {}; // (no null, array or object in these records)
}

function pbjsRequest(p: Buffer): Record<string, unknown> {
  const recs = parseLines(p);
  const logRecords = recs.map((r, i) => {
    const attributes: { key: string; value: Record<string, unknown> }[] = [];
    for (const k in r) attributes.push({ key: k, value: pbValue(r[k]) });
    attributes.push(
      { key: 'sidekick.batch.id', value: { stringValue: part.batchId } },
      { key: 'sidekick.batch.index', value: { intValue: part.firstIndex + i } },
    );
    const failed = failedOf(r);
    return {
      timeUnixNano: nanos(r.ts as number),
      observedTimeUnixNano: nanos(observedOf(r)),
      severityNumber: failed ? 17 : 9,
      severityText: failed ? 'ERROR' : 'INFO',
      attributes,
      eventName: r.type as string,
    };
  });
  return {
    resourceLogs: [
      {
        resource: { attributes: env.resource.map(([key, v]) => ({ key, value: { stringValue: v } })) },
        scopeLogs: [{ scope: { name: env.scopeName, version: env.scopeVersion }, logRecords }],
      },
    ],
  };
}

// ------------------------------------------------------------------------------------------------ OpenTelemetry SDK

let emitted: ReadableLogRecord[] = [];
const keep: LogRecordProcessor = {
  onEmit: (r) => void emitted.push(r),
  forceFlush: async () => {},
  shutdown: async () => {},
};
const provider = new LoggerProvider({
  resource: resourceFromAttributes(Object.fromEntries(env.resource)),
  processors: [keep],
});
const logger = provider.getLogger(env.scopeName, env.scopeVersion);

function sdkRecords(p: Buffer): ReadableLogRecord[] {
  emitted = [];
  parseLines(p).forEach((r, i) => {
    const failed = failedOf(r);
    logger.emit({
      timestamp: r.ts as number,
      observedTimestamp: observedOf(r),
      severityNumber: failed ? 17 : 9,
      severityText: failed ? 'ERROR' : 'INFO',
      eventName: r.type as string,
      attributes: {
        ...(r as Attributes),
        'sidekick.batch.id': part.batchId,
        'sidekick.batch.index': part.firstIndex + i,
      },
    });
  });
  return emitted;
}

// ------------------------------------------------------------------------------------------------ the tasks

const ours = (): Buffer => encodeLogs(env, mapLogs.map(part).logs);
const pbjsPlain = (): Uint8Array => LogsRequest.encode(pbjsRequest(payload)).finish();
const pbjsFromObject = (): Uint8Array => LogsRequest.encode(LogsRequest.fromObject(pbjsRequest(payload))).finish();
const sdk = (): Uint8Array => ProtobufLogsSerializer.serializeRequest(sdkRecords(payload))!;

// Sanity, once: the three encoders give the same records (ours also against the mapping with spans, minus ids).
{
  const dec = (b: Uint8Array): unknown => decodeLogsRequest(Buffer.from(b), 'application/x-protobuf');
  const a = dec(ours());
  assert.deepStrictEqual(dec(pbjsPlain()), a, 'protobufjs (plain objects) decodes to other records than ours');
  assert.deepStrictEqual(dec(pbjsFromObject()), a, 'protobufjs (fromObject) decodes to other records than ours');
  assert.deepStrictEqual(dec(sdk()), a, 'the OpenTelemetry SDK path decodes to other records than ours');
  const recs = (a as { resourceLogs: [{ scopeLogs: [{ logRecords: unknown[] }] }] }).resourceLogs[0].scopeLogs[0]
    .logRecords;
  assert.equal(recs.length, N);
}

const both = mapBoth.map(part);
const logsBody = encodeLogs(env, both.logs);
const tracesBody = encodeTraces(env, both.spans);
const sizes = {
  payload: payload.length,
  logsOnly: ours().length,
  pbjs: pbjsPlain().length,
  sdk: sdk().length,
  logsWithIds: logsBody.length,
  traces: tracesBody.length,
  logsGz: gzipSync(logsBody, { level: 1 }).length,
  tracesGz: gzipSync(tracesBody, { level: 1 }).length,
};

// B4's own records (3 fields, 200 B of NDJSON each), logs only: the B4 otlp-100 variant's part
const b4Payload = Buffer.from(
  Array.from({ length: N }, (_, i) => {
    const head = `{"k":"p-1-${i}","t":1700000000000,"pad":"`;
    return `${head}${'x'.repeat(200 - head.length - 3)}"}\n`;
  }).join(''),
);
const b4Part: ExportPart = { ...part, payload: b4Payload };
const transcodeLogs = new LogsTranscoder(mapLogs, env);
const transcodeBoth = new LogsTranscoder(mapBoth, env);
{
  // the transcoder writes the model path's very bytes (test/agent-otlp-transcode.test.ts checks it on many parts)
  assert.ok(transcodeLogs.run(part).logsBody!.equals(ours()), 'the transcoder wrote other bytes than the model path');
  assert.ok(transcodeLogs.run(b4Part).logsBody!.equals(encodeLogs(env, mapLogs.map(b4Part).logs)));
}

let sink = 0;
const tasks: Record<string, () => void> = {
  'ours: map (logs) + encodeLogs': () => void (sink += ours().length),
  'protobufjs: plain objects + encode': () => void (sink += pbjsPlain().length),
  'protobufjs: fromObject + encode': () => void (sink += pbjsFromObject().length),
  'otel sdk: emit + ProtobufLogsSerializer': () => void (sink += sdk().length),
  'ours: map (both: logs + spans)': () => void (sink += mapBoth.map(part).logs.length),
  'ours: encodeTraces (100 spans)': () => void (sink += encodeTraces(env, both.spans).length),
  'ours: encodeLogs (100 logs, with ids)': () => void (sink += encodeLogs(env, both.logs).length),
  'gzip -1 of the logs request': () => void (sink += gzipSync(logsBody, { level: 1 }).length),
  'gzip -1 of the traces request': () => void (sink += gzipSync(tracesBody, { level: 1 }).length),
  'ours: whole part (map both + 2 encodes + 2 gzip)': () => {
    const m = mapBoth.map(part);
    sink += gzipSync(encodeLogs(env, m.logs), { level: 1 }).length;
    sink += gzipSync(encodeTraces(env, m.spans), { level: 1 }).length;
  },
  'http exporter equivalent: gzip -1 of the NDJSON': () => void (sink += gzipSync(payload, { level: 1 }).length),
  'transcoder: whole part (both: logs + spans + 2 gzip)': () => {
    const m = transcodeBoth.run(part);
    sink += gzipSync(m.logsBody!, { level: 1 }).length;
    sink += gzipSync(encodeTraces(env, m.spans), { level: 1 }).length;
  },
  'transcoder: logs straight from the NDJSON': () => void (sink += transcodeLogs.run(part).logsBody!.length),
  'B4 records: model path (map + encodeLogs + gzip)': () =>
    void (sink += gzipSync(encodeLogs(env, mapLogs.map(b4Part).logs), { level: 1 }).length),
  'B4 records: transcoder + gzip': () =>
    void (sink += gzipSync(transcodeLogs.run(b4Part).logsBody!, { level: 1 }).length),
  'B4 records: http exporter (gzip -1 of the NDJSON)': () => void (sink += gzipSync(b4Payload, { level: 1 }).length),
};

const load0 = loadavg()[0]!;
console.log(
  `${BENCH}: ${N} php_request records per part (${sizes.payload} B NDJSON), ${ROUNDS} rounds × ${TIME_MS} ms per ` +
    `task; ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), Node ${process.version}; load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
);
console.log(
  `  request sizes: logs ${sizes.logsOnly} B (protobufjs ${sizes.pbjs}, sdk ${sizes.sdk}); with spans: logs ` +
    `${sizes.logsWithIds} B + traces ${sizes.traces} B; gzip -1: ${sizes.logsGz} + ${sizes.tracesGz} B`,
);
const perRound: Record<string, number[]> = Object.fromEntries(Object.keys(tasks).map((k) => [k, []]));
for (let round = 0; round < ROUNDS; round++) {
  const bench = new Bench({ time: TIME_MS, warmupTime: 200, timestampProvider: 'hrtimeNow' });
  const order = Object.keys(tasks);
  for (let i = 0; i < round % order.length; i++) order.push(order.shift()!);
  for (const name of order) bench.add(name, tasks[name]!);
  await bench.run();
  for (const t of bench.tasks) {
    const r = t.result;
    if (r.state !== 'completed') throw new Error(`task ${t.name} ${r.state}`);
    perRound[t.name]!.push((r.latency.p50 * 1000) / N); // ms per part → µs per record
  }
}
if (sink === 0) throw new Error('sink is zero');
const us = Object.fromEntries(Object.entries(perRound).map(([k, v]) => [k, median(v)])) as Record<string, number>;
const base = us['ours: map (logs) + encodeLogs']!;
console.log(`\n| task | µs/record (median) | × ours | rounds |`);
console.log('| --- | ---: | ---: | --- |');
for (const [k, v] of Object.entries(perRound)) {
  console.log(
    `| ${k} | ${us[k]!.toFixed(2)} | ${(us[k]! / base).toFixed(2)}× | ${v.map((x) => x.toFixed(2)).join(', ')} |`,
  );
  report({ bench: BENCH, metric: k, value: Number(us[k]!.toFixed(3)), unit: 'µs/record' });
}
console.log(`\nload average (1 min): ${load0.toFixed(2)} at the start, ${loadavg()[0]!.toFixed(2)} at the end`);
