// One part → its OTLP request bodies, ready to POST: mapping (./mapping.ts), encoding (protobuf or JSON) and gzip.
// A pure function of the part and the settings, so it runs as well on the encoder thread (./encoder-thread.ts) as
// inline, and gives the same bytes either way.
import { gzipSync } from 'node:zlib';
import type { AcceptedTimes } from '../../queue/types.js';
import type { ExportPart } from '../types.js';
import { encodeLogsJson, encodeTracesJson } from './json.js';
import { RecordMapper, type MapOptions, type Mapped } from './mapping.js';
import { encodeLogs, encodeTraces, type Envelope } from './protobuf.js';

export interface EncodeSettings {
  map: MapOptions;
  env: Envelope;
  json: boolean;
  gzip: boolean;
}

/** What the encoder needs of a part (what crosses to the encoder thread). */
export interface PartInput {
  payload: Uint8Array;
  records: number;
  batchId: string;
  firstIndex: number;
  acceptedAt?: AcceptedTimes | undefined;
  firstAcceptedAt?: number | undefined;
}

export interface EncodedPart {
  /** The request bodies (compressed when configured); undefined when the part has nothing for that signal. */
  logs: Uint8Array | undefined;
  traces: Uint8Array | undefined;
  logCount: number;
  spanCount: number;
  primary: Mapped['primary'];
  unmappable: Uint8Array[];
  truncated: number;
  flattened: number;
}

export function encodePart(s: EncodeSettings, mapper: RecordMapper, input: PartInput): EncodedPart {
  const part = {
    id: input.batchId,
    payload: Buffer.from(input.payload.buffer, input.payload.byteOffset, input.payload.byteLength),
    records: input.records,
    batchId: input.batchId,
    firstIndex: input.firstIndex,
    acceptedAt: input.acceptedAt,
    firstAcceptedAt: input.firstAcceptedAt,
  } satisfies ExportPart;
  const m = mapper.map(part);
  const body = (raw: Buffer): Buffer => (s.gzip ? gzipSync(raw, { level: 1 }) : raw);
  return {
    logs: m.logs.length ? body(s.json ? encodeLogsJson(s.env, m.logs) : encodeLogs(s.env, m.logs)) : undefined,
    traces: m.spans.length ? body(s.json ? encodeTracesJson(s.env, m.spans) : encodeTraces(s.env, m.spans)) : undefined,
    logCount: m.logs.length,
    spanCount: m.spans.length,
    primary: m.primary,
    unmappable: m.unmappable,
    truncated: m.truncated,
    flattened: m.flattened,
  };
}

export function newMapper(s: EncodeSettings): RecordMapper {
  return new RecordMapper(s.map);
}
