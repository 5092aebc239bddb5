// What every exporter implements. An exporter sends one *part* (a spool batch, or a half of one after a 413) and
// answers with a definitive outcome, or throws RetryableExportError (the breaker counts it; the batch is retried).
import type { ExporterConfig } from '../../config/schema.js';
import type { DeadLetterReason, RetryReason } from '../metrics.js';
import type { AcceptedTimes } from '../queue/types.js';

/** Thrown by an export attempt that should count as a failure and be retried later (the breaker counts these). */
export class RetryableExportError extends Error {
  constructor(
    message: string,
    readonly reason: RetryReason,
    readonly status?: number,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'RetryableExportError';
  }
}

export interface ExportPart {
  /** Spool batch id, with a suffix per split ('.0', '.1', '.1.0', …): stable across retries and restarts. */
  id: string;
  /** '\n'-terminated NDJSON lines. */
  payload: Buffer;
  records: number;
  /** The spool batch this part is cut from, and the index of its first record there (the same on every retry). */
  batchId: string;
  firstIndex: number;
  /** When the agent accepted the batch's records (per spool frame), for OTLP's observed time. */
  acceptedAt?: AcceptedTimes;
  firstAcceptedAt?: number;
}

/** The spool batch fields a part is cut from. */
export interface PartSource {
  id: string;
  payload: Buffer;
  records: number;
  acceptedAt?: AcceptedTimes;
  firstAppendedAt?: number;
}

export type ExportStats = {
  /** OTLP: string values cut to the length limit, objects/arrays past the depth limit sent as JSON text. */
  truncated: number;
  flattened: number;
  spans: number;
  /** OTLP partial success, or a signal refused for good while the record's outcome rode on the other signal. */
  rejectedLogs: number;
  rejectedSpans: number;
};

/** Records of a delivered part that did not make it (OTLP partial success, unmappable lines): counted, kept on disk. */
export interface PartialRejection {
  records: number;
  reason: DeadLetterReason;
  status: number;
  body: string;
  /** What to keep in the dead-letter directory (the lines concerned, or the whole part when they are not known). */
  payload: Buffer;
  payloadRecords: number;
}

export type ExportOutcome =
  | { kind: 'delivered'; status?: number; rejections?: PartialRejection[]; stats?: ExportStats }
  /** Central said 413: split and retry the halves; a single record still 413 is dead-lettered. */
  | { kind: 'too_large'; status: number; body: string }
  /** Central rejected it for good (4xx other than 408/413/429): dead-letter. */
  | { kind: 'rejected'; status: number; body: string };

export interface Exporter {
  readonly config: ExporterConfig;
  export(part: ExportPart, signal: AbortSignal): Promise<ExportOutcome>;
  close(): Promise<void>;
  /** Extra bytes held in memory per in-flight part (e.g. the gzip copy), for the memory bound. */
  overheadBytes(part: ExportPart): number;
}

/** Lines in a payload (every line ends with '\n'). */
export function countLines(payload: Buffer): number {
  let n = 0;
  let pos = -1;
  while ((pos = payload.indexOf(0x0a, pos + 1)) !== -1) n++;
  return n;
}

/**
 * A spool batch as parts of at most `maxRecords` records, sent concurrently (batch.maxInFlight). A batch that fits is
 * one part under the spool batch id itself; otherwise part k is `<id>~k`. Both are functions of the batch (same id,
 * same payload after a release or a restart) and maxRecords, so central can dedupe parts too.
 */
export function chunkParts(batch: PartSource, maxRecords: number): ExportPart[] {
  const from = (id: string, payload: Buffer, records: number, firstIndex: number): ExportPart => ({
    id,
    payload,
    records,
    batchId: batch.id,
    firstIndex,
    acceptedAt: batch.acceptedAt,
    firstAcceptedAt: batch.firstAppendedAt,
  });
  if (batch.records <= maxRecords) return [from(batch.id, batch.payload, batch.records, 0)];
  const parts: ExportPart[] = [];
  let start = 0;
  let left = batch.records;
  for (let k = 0; left > 0; k++) {
    const n = Math.min(maxRecords, left);
    let pos = start - 1;
    for (let i = 0; i < n; i++) pos = batch.payload.indexOf(0x0a, pos + 1);
    const end = pos + 1;
    parts.push(from(`${batch.id}~${k}`, batch.payload.subarray(start, end), n, batch.records - left));
    start = end;
    left -= n;
  }
  return parts;
}

/** Splits a payload into two halves at a line boundary (by record count); undefined for a single record. */
export function splitPart(part: ExportPart): [ExportPart, ExportPart] | undefined {
  if (part.records < 2) return undefined;
  const firstRecords = Math.floor(part.records / 2);
  let pos = -1;
  for (let i = 0; i < firstRecords; i++) pos = part.payload.indexOf(0x0a, pos + 1);
  const cut = pos + 1;
  return [
    { ...part, id: `${part.id}.0`, payload: part.payload.subarray(0, cut), records: firstRecords },
    {
      ...part,
      id: `${part.id}.1`,
      payload: part.payload.subarray(cut),
      records: part.records - firstRecords,
      firstIndex: part.firstIndex + firstRecords,
    },
  ];
}
