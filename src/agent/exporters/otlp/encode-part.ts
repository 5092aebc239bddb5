// One part → its OTLP request bodies before compression: the transcoder for protobuf (./transcode.ts, the model path
// for what it does not handle), the mapping model for JSON. The same code on the encoder thread
// (./encoder-thread.ts) and inline, so both give the same bytes.
import type { AcceptedTimes } from '../../queue/types.js';
import type { ExportPart } from '../types.js';
import { encodeLogsJson, encodeTracesJson } from './json.js';
import { RecordMapper, type MapOptions, type Mapped } from './mapping.js';
import { encodeLogs, encodeTraces, type Envelope } from './protobuf.js';
import { LogsTranscoder } from './transcode.js';

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

/** Per record of the part, where its outcome is decided (Mapped['primary'] as one byte each, to cross threads). */
export const PRIMARY_CODES = ['logs', 'traces', 'none'] as const;

export interface EncodedPart {
  /** The request bodies, compressed when configured; undefined when the part has nothing for that signal. */
  logs: Uint8Array | undefined;
  traces: Uint8Array | undefined;
  logCount: number;
  spanCount: number;
  /** Per record: an index into PRIMARY_CODES. */
  primary: Uint8Array;
  unmappable: Uint8Array[];
  truncated: number;
  flattened: number;
}

/** An encoded part before compression; the bodies may be views of buffers the next encode() writes over. */
export interface RawPart extends Omit<EncodedPart, 'logs' | 'traces'> {
  logs: Buffer | undefined;
  traces: Buffer | undefined;
}

export class PartEncoder {
  private readonly mapper: RecordMapper;
  private readonly transcoder: LogsTranscoder;

  constructor(private readonly settings: EncodeSettings) {
    this.mapper = new RecordMapper(settings.map);
    this.transcoder = new LogsTranscoder(this.mapper, settings.env);
  }

  /**
   * The part's request bodies, uncompressed. With gzip (protobuf), they are views of the transcoder's two reused
   * buffers: compress them (or copy them) before the next call.
   */
  encode(input: PartInput): RawPart {
    const s = this.settings;
    const part: ExportPart = {
      id: input.batchId,
      payload: Buffer.from(input.payload.buffer, input.payload.byteOffset, input.payload.byteLength),
      records: input.records,
      batchId: input.batchId,
      firstIndex: input.firstIndex,
      ...(input.acceptedAt ? { acceptedAt: input.acceptedAt } : {}),
      ...(input.firstAcceptedAt !== undefined ? { firstAcceptedAt: input.firstAcceptedAt } : {}),
    };
    const m: Mapped = s.json ? this.mapper.map(part) : this.transcoder.run(part, s.gzip);
    const logs =
      m.logCount === 0 ? undefined : s.json ? encodeLogsJson(s.env, m.logs) : (m.logsBody ?? encodeLogs(s.env, m.logs));
    const traces =
      m.spanCount === 0
        ? undefined
        : s.json
          ? encodeTracesJson(s.env, m.spans)
          : (m.tracesBody ?? encodeTraces(s.env, m.spans));
    const primary = new Uint8Array(m.primary.length);
    for (let i = 0; i < primary.length; i++)
      primary[i] = m.primary[i] === 'logs' ? 0 : m.primary[i] === 'traces' ? 1 : 2;
    return {
      logs,
      traces,
      logCount: m.logCount,
      spanCount: m.spanCount,
      primary,
      unmappable: m.unmappable,
      truncated: m.truncated,
      flattened: m.flattened,
    };
  }
}

/** Per record, where its outcome is decided (the exporter's view of EncodedPart.primary). */
export function primaryOf(e: EncodedPart): Mapped['primary'] {
  return Array.from(e.primary, (c) => PRIMARY_CODES[c]!);
}
