// The http exporter: POST one part to central.
//
//   Content-Type: application/x-ndjson      body = the spooled lines, byte for byte
//   Content-Encoding: gzip                  when `gzip` (level 1: ~5× smaller on JSON at a fraction of level 6's CPU)
//   X-Sidekick-Batch-Id: <spool batch id>   the same on every retry and after a restart; central dedupes on it
//   X-Sidekick-Records: <n>
//
// Status matrix: 2xx delivered · 408, 429, 5xx, 3xx, network error, timeout → RetryableExportError (Retry-After kept)
// · 413 → too_large (split) · other 4xx → rejected (dead-letter). The whole exchange is bounded by `timeoutMs`.
import http from 'node:http';
import https from 'node:https';
import { promisify } from 'node:util';
import { gzip as gzipCb, gzipSync } from 'node:zlib';
import type { ExporterConfig } from '../../config/schema.js';
import { RetryableExportError } from '../breaker/breaker.js';
import type { ExportOutcome, ExportPart, Exporter } from './types.js';

const gzip = promisify(gzipCb);
type HttpConfig = Extract<ExporterConfig, { type: 'http' }>;

const BODY_EXCERPT_BYTES = 1024;
/** Up to this size gzip runs inline (≤ ~3 ms); bigger payloads go to the thread pool. */
const SYNC_GZIP_MAX_BYTES = 1024 * 1024;

/** Retry-After as milliseconds: delta-seconds or an HTTP date; undefined when absent or unparsable. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (!v) return undefined;
  const trimmed = v.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}

export class HttpExporter implements Exporter {
  private readonly url: URL;
  private readonly agent: http.Agent;
  private readonly lib: typeof http | typeof https;

  constructor(readonly config: HttpConfig) {
    this.url = new URL(config.url);
    this.lib = this.url.protocol === 'https:' ? https : http;
    // The dispatcher bounds concurrency (batch.maxInFlight); the agent just keeps that many connections warm.
    this.agent = new this.lib.Agent({ keepAlive: true, maxSockets: 64, keepAliveMsecs: 1000, noDelay: true });
  }

  overheadBytes(part: ExportPart): number {
    return this.config.gzip ? Math.ceil(part.payload.length / 3) : 0;
  }

  async export(part: ExportPart, stop: AbortSignal): Promise<ExportOutcome> {
    // Small parts are compressed inline: ~50 µs for 20 KB, several times cheaper than a thread-pool round trip.
    const body = !this.config.gzip
      ? part.payload
      : part.payload.length <= SYNC_GZIP_MAX_BYTES
        ? gzipSync(part.payload, { level: 1 })
        : await gzip(part.payload, { level: 1 });
    if (stop.aborted) throw stop.reason;
    const headers: Record<string, string | number> = {
      ...this.config.headers,
      'content-type': 'application/x-ndjson',
      'content-length': body.length,
      'x-sidekick-batch-id': part.id,
      'x-sidekick-records': part.records,
    };
    if (this.config.gzip) headers['content-encoding'] = 'gzip';
    let status: number;
    let retryAfter: string | string[] | undefined;
    let excerpt: string;
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    let onStop: (() => void) | undefined;
    try {
      ({ status, retryAfter, excerpt } = await new Promise<{
        status: number;
        retryAfter: string | string[] | undefined;
        excerpt: string;
      }>((resolve, reject) => {
        const req = this.lib.request(this.url, { method: 'POST', agent: this.agent, headers }, (res) => {
          const chunks: Buffer[] = [];
          let kept = 0;
          res.on('data', (c: Buffer) => {
            if (kept < BODY_EXCERPT_BYTES) {
              chunks.push(c);
              kept += c.length;
            }
          });
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              retryAfter: res.headers['retry-after'],
              excerpt: Buffer.concat(chunks).subarray(0, BODY_EXCERPT_BYTES).toString('utf8'),
            }),
          );
          res.on('error', reject);
        });
        // The whole exchange (connect, send, answer) is bounded by timeoutMs; a stop aborts it at once.
        timer = setTimeout(() => {
          timedOut = true;
          req.destroy(new Error('timeout'));
        }, this.config.timeoutMs);
        onStop = () => req.destroy(new Error('stopped'));
        stop.addEventListener('abort', onStop, { once: true });
        req.on('error', reject);
        req.end(body);
      }));
    } catch (err) {
      if (stop.aborted) throw err; // stopping: not central's fault, not a breaker failure
      if (timedOut)
        throw new RetryableExportError(`POST ${this.url.href} timed out after ${this.config.timeoutMs} ms`, 'timeout');
      const e = err as NodeJS.ErrnoException;
      throw new RetryableExportError(`POST ${this.url.href} failed: ${e.code ?? e.message}`, 'network');
    } finally {
      clearTimeout(timer);
      if (onStop) stop.removeEventListener('abort', onStop);
    }
    if (status >= 200 && status < 300) return { kind: 'delivered', status };
    if (status === 413) return { kind: 'too_large', status, body: excerpt };
    const after = parseRetryAfter(retryAfter);
    const msg = `POST ${this.url.href} answered ${status}`;
    if (status === 408) throw new RetryableExportError(msg, 'http_408', status, after);
    if (status === 429) throw new RetryableExportError(msg, 'http_429', status, after);
    if (status >= 500) throw new RetryableExportError(msg, 'http_5xx', status, after);
    if (status >= 400) return { kind: 'rejected', status, body: excerpt };
    throw new RetryableExportError(msg, 'http_other', status, after);
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }
}
