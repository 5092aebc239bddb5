// The same logical records encoded by the official OpenTelemetry JS SDK path (@opentelemetry/sdk-logs LoggerProvider
// → ReadableLogRecord → @opentelemetry/otlp-transformer serializers), for cross-checking the agent's own encoder and
// our decoders against a third implementation. Spans are ReadableSpan objects built directly (a tracer would pick
// its own ids and clock), then the same transformer.
//
// What the SDK path cannot say (compare with care): a JS number is an int64 when Number.isInteger (so a double 2.0
// becomes intValue 2), else a double; int64 beyond 2^53 is not expressible exactly; bytes go in as Uint8Array. The SDK
// writes LogRecord.flags from the span context's traceFlags only (0 without a trace id). eventName is expressible
// (LogRecord.eventName, field 12) in this SDK version.
import { ROOT_CONTEXT, trace, type Attributes, type HrTime, type SpanKind } from '@opentelemetry/api';
import {
  JsonLogsSerializer,
  JsonTraceSerializer,
  ProtobufLogsSerializer,
  ProtobufTraceSerializer,
} from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { LoggerProvider, type LogRecordProcessor, type ReadableLogRecord } from '@opentelemetry/sdk-logs';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';

export interface SdkLogInput {
  /** Milliseconds since the epoch (fractions carry to nanoseconds through the SDK's own conversion). */
  timeMs: number;
  observedMs: number;
  severityNumber: number;
  severityText: string;
  eventName?: string;
  attributes: Record<string, unknown>;
  /** Hex; both or neither. traceFlags defaults to 0 (not sampled). */
  traceId?: string;
  spanId?: string;
  traceFlags?: number;
  body?: unknown;
}

export interface SdkSpanInput {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  /** @opentelemetry/api SpanKind (INTERNAL = 0 …); OTLP's kind is this + 1. */
  kind: SpanKind;
  startMs: number;
  endMs: number;
  attributes: Record<string, unknown>;
  /** @opentelemetry/api SpanStatusCode (UNSET 0, OK 1, ERROR 2): the same numbers as OTLP. */
  status?: { code: number; message?: string };
  traceFlags?: number;
  events?: Array<{ name: string; timeMs: number; attributes?: Record<string, unknown> }>;
}

export interface SdkScope {
  name: string;
  version: string;
}

function sdkLogRecords(records: SdkLogInput[], resourceAttrs: Record<string, unknown>, scope: SdkScope) {
  const out: ReadableLogRecord[] = [];
  // A processor that keeps each record as it is emitted: the SDK's Simple processor + in-memory exporter hand over
  // asynchronously, which would make these builders async for nothing.
  const keep: LogRecordProcessor = {
    onEmit: (r) => void out.push(r),
    forceFlush: async () => {},
    shutdown: async () => {},
  };
  const provider = new LoggerProvider({
    resource: resourceFromAttributes(resourceAttrs as Attributes),
    processors: [keep],
  });
  const logger = provider.getLogger(scope.name, scope.version);
  for (const r of records) {
    const context =
      r.traceId && r.spanId
        ? trace.setSpanContext(ROOT_CONTEXT, { traceId: r.traceId, spanId: r.spanId, traceFlags: r.traceFlags ?? 0 })
        : ROOT_CONTEXT;
    logger.emit({
      timestamp: r.timeMs,
      observedTimestamp: r.observedMs,
      severityNumber: r.severityNumber,
      severityText: r.severityText,
      ...(r.eventName !== undefined && { eventName: r.eventName }),
      ...(r.body !== undefined && { body: r.body }),
      attributes: r.attributes as Attributes,
      context,
    });
  }
  if (out.length !== records.length) throw new Error(`sdk: ${records.length} records emitted, ${out.length} kept`);
  return out;
}

/** ExportLogsServiceRequest protobuf bytes, as the official SDK encodes these records. */
export function sdkLogsRequest(
  records: SdkLogInput[],
  resourceAttrs: Record<string, unknown>,
  scope: SdkScope,
): Buffer {
  const bytes = ProtobufLogsSerializer.serializeRequest(sdkLogRecords(records, resourceAttrs, scope));
  if (!bytes) throw new Error('sdk: ProtobufLogsSerializer returned nothing');
  return Buffer.from(bytes);
}

/** The same request as OTLP/JSON, as the official SDK encodes it. */
export function sdkLogsJson(records: SdkLogInput[], resourceAttrs: Record<string, unknown>, scope: SdkScope): Buffer {
  const bytes = JsonLogsSerializer.serializeRequest(sdkLogRecords(records, resourceAttrs, scope));
  if (!bytes) throw new Error('sdk: JsonLogsSerializer returned nothing');
  return Buffer.from(bytes);
}

const hr = (ms: number): HrTime => [Math.floor(ms / 1000), Math.round((ms % 1000) * 1e6)];

function sdkSpans(spans: SdkSpanInput[], resourceAttrs: Record<string, unknown>, scope: SdkScope): ReadableSpan[] {
  const resource = resourceFromAttributes(resourceAttrs as Attributes);
  return spans.map((s) => ({
    name: s.name,
    kind: s.kind,
    spanContext: () => ({ traceId: s.traceId, spanId: s.spanId, traceFlags: s.traceFlags ?? 0 }),
    ...(s.parentSpanId && {
      parentSpanContext: { traceId: s.traceId, spanId: s.parentSpanId, traceFlags: s.traceFlags ?? 0 },
    }),
    startTime: hr(s.startMs),
    endTime: hr(s.endMs),
    duration: hr(s.endMs - s.startMs),
    ended: true,
    status: { code: s.status?.code ?? 0, ...(s.status?.message !== undefined && { message: s.status.message }) },
    attributes: s.attributes as Attributes,
    links: [],
    events: (s.events ?? []).map((e) => ({ name: e.name, time: hr(e.timeMs), attributes: e.attributes as Attributes })),
    resource,
    instrumentationScope: scope,
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  }));
}

/** ExportTraceServiceRequest protobuf bytes, as the official SDK's transformer encodes these spans. */
export function sdkTracesRequest(
  spans: SdkSpanInput[],
  resourceAttrs: Record<string, unknown>,
  scope: SdkScope,
): Buffer {
  const bytes = ProtobufTraceSerializer.serializeRequest(sdkSpans(spans, resourceAttrs, scope));
  if (!bytes) throw new Error('sdk: ProtobufTraceSerializer returned nothing');
  return Buffer.from(bytes);
}

/** The same request as OTLP/JSON. */
export function sdkTracesJson(spans: SdkSpanInput[], resourceAttrs: Record<string, unknown>, scope: SdkScope): Buffer {
  const bytes = JsonTraceSerializer.serializeRequest(sdkSpans(spans, resourceAttrs, scope));
  if (!bytes) throw new Error('sdk: JsonTraceSerializer returned nothing');
  return Buffer.from(bytes);
}
