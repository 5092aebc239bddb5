// The otlp exporter: one part (spool batch or a piece of one) → an ExportLogsServiceRequest to /v1/logs and, for
// request records, an ExportTraceServiceRequest to /v1/traces, concurrently, over the same dispatcher, breaker, retry
// and spool as the http exporter (no second pipeline).
//
// Answers, as the OTLP/HTTP specification defines them:
//   200                       delivered; a partial_success in the body counts its rejected records as dead-lettered
//                             (reason otlp_partial: the part is kept in dead-letter/ with the collector's message)
//   429, 502, 503, 504        retryable, Retry-After honoured (capped as for the http exporter); also network errors,
//                             timeouts, 408 and 3xx (not the collector's final word), and 500: the spec says final,
//                             but Collectors before v0.97 answered 500 when their memory_limiter refused data
//                             (open-telemetry/opentelemetry-collector#9337, #9636), and the Collector's own otlphttp
//                             exporter lost data by taking that at its word (#8132)
//   413                       too large: the dispatcher splits the part in halves
//   400 and any other status  refused for good: the records whose outcome rides on that signal are dead-lettered
//                             with the collector's message (google.rpc.Status)
// The two signals of a part are settled separately: a signal the collector already took is not sent again when the
// other one is retried, or when the part is split after a 413 (the halves inherit the collector's answer to it, each
// settling its own records).
import http from 'node:http';
import { hostname } from 'node:os';
import type { ExporterConfig } from '../../../config/schema.js';
import { gzipFast } from '../http.js';
import { HttpPoster, keepAliveAgent, parseRetryAfter } from '../http-post.js';
import {
  RetryableExportError,
  splitPart,
  type ExportOutcome,
  type ExportPart,
  type ExportStats,
  type Exporter,
  type PartialRejection,
} from '../types.js';
import { decodePartialSuccessJson, encodeLogsJson, encodeTracesJson } from './json.js';
import { RecordMapper, type Mapped } from './mapping.js';
import { LogsTranscoder } from './transcode.js';
import { decodePartialSuccess, decodeStatusMessage, encodeLogs, encodeTraces, type Envelope } from './protobuf.js';

export type OtlpConfig = Extract<ExporterConfig, { type: 'otlp' }>;
type Signal = 'logs' | 'traces';

const SCOPE_NAME = 'sidekick-agent';
/** Parts whose first signal was taken while the other is still to go, kept at most (oldest forgotten first). */
const MAX_REMEMBERED_PARTS = 4096;
const RETRYABLE = new Set([429, 500, 502, 503, 504, 408]);
const OWN_HEADERS = new Set(['content-type', 'content-encoding', 'content-length']);

/** <endpoint>/v1/logs as the OTLP exporter configuration spec joins them (a '/' added when the base has none). */
export function signalUrl(cfg: OtlpConfig, signal: Signal): string {
  const own = signal === 'logs' ? cfg.logsEndpoint : cfg.tracesEndpoint;
  if (own) return own;
  const base = cfg.endpoint!;
  return `${base.endsWith('/') ? base : `${base}/`}v1/${signal}`;
}

/** Resource attributes: service.name and host.name by default, the configured ones win. */
export function resourceOf(cfg: OtlpConfig): [string, string][] {
  const r: Record<string, string> = { 'service.name': 'sidekick-agent', 'host.name': hostname(), ...cfg.resource };
  return Object.entries(r);
}

interface SignalAnswer {
  kind: 'ok' | 'too_large' | 'refused';
  status: number;
  rejected: number;
  message: string;
}

export class OtlpExporter implements Exporter {
  private readonly agent: http.Agent;
  private readonly posters: Record<Signal, HttpPoster>;
  private readonly mapper: RecordMapper;
  private readonly transcoder: LogsTranscoder;
  private readonly env: Envelope;
  private readonly json: boolean;
  private readonly gzip: boolean;
  /** Signals already answered, by part id (a 413 half: its share of the parent's answer), while the other is to go. */
  private readonly delivered = new Map<string, { signal: Signal; answer: SignalAnswer }>();

  constructor(
    readonly config: OtlpConfig,
    version: string,
  ) {
    this.json = config.protocol === 'http/json';
    this.gzip = config.compression === 'gzip';
    this.agent = keepAliveAgent(signalUrl(config, 'logs'));
    const fixed: [string, string][] = [['content-type', this.json ? 'application/json' : 'application/x-protobuf']];
    if (config.compression === 'gzip') fixed.push(['content-encoding', 'gzip']);
    const poster = (signal: Signal): HttpPoster =>
      new HttpPoster({
        url: signalUrl(config, signal),
        timeoutMs: config.timeoutMs,
        headers: config.headers,
        ownHeaders: OWN_HEADERS,
        fixed,
        keep2xxBody: true,
        agent: this.agent,
      });
    this.posters = { logs: poster('logs'), traces: poster('traces') };
    this.mapper = new RecordMapper({
      requestSignal: config.requestSignal,
      maxValueLength: config.limits.maxValueLength,
      maxDepth: config.limits.maxDepth,
    });
    this.env = { resource: resourceOf(config), scopeName: SCOPE_NAME, scopeVersion: version };
    this.transcoder = new LogsTranscoder(this.mapper, this.env);
  }

  overheadBytes(part: ExportPart): number {
    // the encoded requests (about the payload's size, more with spans) and their gzip copies
    return part.payload.length * 2;
  }

  async export(part: ExportPart, stop: AbortSignal): Promise<ExportOutcome> {
    // protobuf: LogRecords written straight from the NDJSON where the records allow it (./transcode.ts)
    // With gzip, the transcoder writes into buffers it reuses: send() compresses them before this returns (below).
    const m = this.json ? this.mapper.map(part) : this.transcoder.run(part, this.gzip);
    const already = this.rememberedFor(part.id);
    const todo: Signal[] = [];
    if (m.logCount > 0 && already?.signal !== 'logs') todo.push('logs');
    if (m.spanCount > 0 && already?.signal !== 'traces') todo.push('traces');
    const settled = await Promise.allSettled(todo.map((s) => this.send(s, m, stop)));
    const answers = new Map<Signal, SignalAnswer>();
    if (already) answers.set(already.signal, already.answer);
    let failure: unknown;
    settled.forEach((r, i) => {
      if (r.status === 'fulfilled') answers.set(todo[i]!, r.value);
      else failure ??= r.reason;
    });
    const tooLarge = [...answers.values()].find((a) => a.kind === 'too_large');
    if (failure !== undefined) {
      // remember a signal the collector took, so the retry does not send it again
      for (const [signal, answer] of answers) if (answer.kind !== 'too_large') this.remember(part.id, signal, answer);
      throw failure;
    }
    if (tooLarge) {
      // The halves send only the signal still to go. They inherit the answer to the signal taken, refusal and
      // partial rejections included, each for its own records: settled once, by the half that carries them (settled
      // here, those records would count twice: dead-lettered by this part, exported by its halves). A lone record has
      // no halves: the dispatcher dead-letters it, once.
      this.forget(part.id);
      const halves = splitPart(part);
      for (const [signal, answer] of answers) {
        if (answer.kind === 'too_large' || !halves) continue;
        const firstOwns = m.primary.slice(0, halves[0].records).filter((p) => p === signal).length;
        const first = Math.min(answer.rejected, firstOwns);
        this.remember(halves[0].id, signal, { ...answer, rejected: first });
        this.remember(halves[1].id, signal, { ...answer, rejected: answer.rejected - first });
      }
      return { kind: 'too_large', status: 413, body: tooLarge.message };
    }
    this.forget(part.id);
    return this.outcome(part, m, answers);
  }

  /** Encodes, compresses and posts one signal; throws RetryableExportError for what the spec says to retry. */
  private async send(signal: Signal, m: Mapped, stop: AbortSignal): Promise<SignalAnswer> {
    const raw =
      signal === 'logs'
        ? this.json
          ? encodeLogsJson(this.env, m.logs)
          : (m.logsBody ?? encodeLogs(this.env, m.logs))
        : this.json
          ? encodeTracesJson(this.env, m.spans)
          : (m.tracesBody ?? encodeTraces(this.env, m.spans));
    // (synchronously, before the first await: the transcoder's buffers are written over by the next part's run)
    const body = this.gzip ? await gzipFast(raw, { volatile: true }) : raw;
    const poster = this.posters[signal];
    const answer = await poster.post(body, [], stop);
    const { status } = answer;
    const type = answer.contentType ?? (this.json ? 'application/json' : 'application/x-protobuf');
    if (status >= 200 && status < 300) {
      let ps = { rejected: 0, message: '' };
      try {
        if (/json/i.test(type)) ps = decodePartialSuccessJson(answer.body);
        else if (/protobuf/i.test(type)) ps = decodePartialSuccess(answer.body);
      } catch {
        // an unreadable 2xx body is still a delivery (the spec: a 2xx means the data was accepted)
      }
      return { kind: 'ok', status, rejected: ps.rejected, message: ps.message };
    }
    const message = refusalMessage(answer.body, type);
    if (status === 413) return { kind: 'too_large', status, rejected: 0, message };
    if (RETRYABLE.has(status) || (status >= 300 && status < 400)) {
      const reason =
        status === 429 ? 'http_429' : status === 408 ? 'http_408' : status >= 500 ? 'http_5xx' : 'http_other';
      throw new RetryableExportError(
        `POST ${poster.href} answered ${status}${message ? `: ${message}` : ''}`,
        reason,
        status,
        parseRetryAfter(answer.retryAfter),
      );
    }
    return { kind: 'refused', status, rejected: 0, message };
  }

  /** Every signal answered 2xx or refused for good: which records are delivered, which dead-lettered, and why. */
  private outcome(part: ExportPart, m: Mapped, answers: Map<Signal, SignalAnswer>): ExportOutcome {
    const logs = answers.get('logs');
    const traces = answers.get('traces');
    const count = (p: 'logs' | 'traces'): number => m.primary.reduce((n, x) => n + (x === p ? 1 : 0), 0);
    const rejections: PartialRejection[] = [];
    const stats: ExportStats = {
      truncated: m.truncated,
      flattened: m.flattened,
      spans: traces?.kind === 'ok' ? m.spanCount - traces.rejected : 0,
      rejectedLogs: 0,
      rejectedSpans: 0,
    };
    if (m.unmappable.length > 0) {
      rejections.push({
        records: m.unmappable.length,
        reason: 'unmappable',
        status: 0,
        body: 'not a JSON object: cannot become an OTLP LogRecord',
        payload: Buffer.concat(m.unmappable),
        payloadRecords: m.unmappable.length,
      });
    }
    for (const [signal, a] of [
      ['logs', logs],
      ['traces', traces],
    ] as const) {
      if (!a) continue;
      const owned = count(signal); // records whose outcome this signal decides
      if (a.kind === 'refused') {
        if (signal === 'logs') stats.rejectedLogs += m.logCount;
        else stats.rejectedSpans += m.spanCount;
        if (owned > 0)
          rejections.push({
            records: owned,
            reason: 'rejected',
            status: a.status,
            body: a.message,
            payload: linesOf(part.payload, m.primary, signal),
            payloadRecords: owned,
          });
      } else if (a.rejected > 0) {
        if (signal === 'logs') stats.rejectedLogs += a.rejected;
        else stats.rejectedSpans += a.rejected;
        const n = Math.min(a.rejected, owned);
        if (n > 0)
          rejections.push({
            records: n,
            reason: 'otlp_partial',
            status: a.status,
            body: `${a.rejected} of ${signal === 'logs' ? m.logCount : m.spanCount} ${signal === 'logs' ? 'log records' : 'spans'} rejected (partial success)${a.message ? `: ${a.message}` : ''}`,
            // which ones the collector does not say: the whole part is kept, beside the collector's message
            payload: part.payload,
            payloadRecords: part.records,
          });
      }
    }
    const status = logs?.status ?? traces?.status;
    return {
      kind: 'delivered',
      ...(status !== undefined ? { status } : {}),
      ...(rejections.length ? { rejections } : {}),
      stats,
    };
  }

  /** What the collector already said of one signal of this part (or, for a 413 half, of its parent's records). */
  private rememberedFor(id: string): { signal: Signal; answer: SignalAnswer } | undefined {
    return this.delivered.get(id);
  }

  private remember(id: string, signal: Signal, answer: SignalAnswer): void {
    if (this.delivered.size >= MAX_REMEMBERED_PARTS) this.delivered.delete(this.delivered.keys().next().value!);
    this.delivered.set(id, { signal, answer });
  }

  private forget(id: string): void {
    this.delivered.delete(id);
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }
}

/** The records of `payload` whose outcome rides on `signal`. */
function linesOf(payload: Buffer, primary: Mapped['primary'], signal: 'logs' | 'traces'): Buffer {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; start < payload.length; i++) {
    let nl = payload.indexOf(0x0a, start);
    if (nl === -1) nl = payload.length - 1;
    if (primary[i] === signal) out.push(payload.subarray(start, nl + 1));
    start = nl + 1;
  }
  return Buffer.concat(out);
}

/** The collector's reason for a refusal: google.rpc.Status.message (protobuf or JSON), else the body's text. */
function refusalMessage(body: Buffer, contentType: string): string {
  if (body.length === 0) return '';
  try {
    if (/json/i.test(contentType)) {
      const o = JSON.parse(body.toString('utf8')) as { message?: unknown } | null;
      if (o && typeof o.message === 'string') return o.message;
    } else if (/protobuf/i.test(contentType)) {
      const m = decodeStatusMessage(body);
      if (m) return m;
    }
  } catch {
    // not the Status the spec asks for: keep the text
  }
  return body
    .toString('utf8')
    .replace(/[^\x20-\x7e]+/g, ' ')
    .trim()
    .slice(0, 1024);
}
