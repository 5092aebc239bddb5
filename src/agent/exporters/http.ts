// The http exporter: POST one part to central.
//
//   Content-Type: application/x-ndjson      body = the spooled lines, byte for byte
//   Content-Encoding: gzip                  when `gzip` (level 1: ~5× smaller on JSON at a fraction of level 6's CPU)
//   X-Sidekick-Batch-Id: <spool batch id>   the same on every retry and after a restart; central dedupes on it
//   X-Sidekick-Records: <n>
//
// Status matrix: 2xx delivered · 408, 429, 5xx, 3xx, network error, timeout → RetryableExportError (Retry-After kept)
// · 413 → too_large (split) · other 4xx → rejected (dead-letter). The whole exchange is bounded by `timeoutMs`: the
// status line decides, so it must arrive within it; of a body the agent keeps at most 1 KiB (a refusal's excerpt) and
// reads at most 64 KiB (a 2xx, drained for reuse of the connection), never more (central's garbage or multi-MB
// answers, trickles: test/agent-faults.test.ts).
//
// Per request cost: at the default batch size this runs for every 100 records, so what node:http does per call adds
// up. The request options (host, port, path, agent) are worked out once, not from the URL object on every call; the
// headers go as a raw list validated once (setHeader validates and lowercases each header on each call); one abort
// listener per stop signal serves every request in flight; a 2xx body is drained, not collected.
import http from 'node:http';
import https from 'node:https';
import { promisify } from 'node:util';
import { gzip as gzipCb, gzipSync } from 'node:zlib';
import { withDeadline } from '../../common/async.js';
import type { ExporterConfig } from '../../config/schema.js';
import { isSidekickError } from '../../errors.js';
import { RetryableExportError, type ExportOutcome, type ExportPart, type Exporter } from './types.js';

const gzip = promisify(gzipCb);
type HttpConfig = Extract<ExporterConfig, { type: 'http' }>;

const BODY_EXCERPT_BYTES = 1024;
/** A 2xx body longer than this is not read to its end: the connection is dropped instead of reused. */
const DRAIN_MAX_BYTES = 64 * 1024;
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

/** Headers the exporter sets itself; a configured header of the same name is dropped, as setHeader used to replace it. */
const OWN_HEADERS = new Set([
  'content-type',
  'content-encoding',
  'content-length',
  'x-sidekick-batch-id',
  'x-sidekick-records',
]);

export class HttpExporter implements Exporter {
  private readonly url: URL;
  private readonly agent: http.Agent;
  private readonly lib: typeof http | typeof https;
  /** Request options without headers, computed once. */
  private readonly base: http.RequestOptions;
  /** Raw header list (name, value, …) every request starts with: Host, configured headers, content type/encoding. */
  private readonly fixedHeaders: string[];
  /** A configured header Node would refuse (bad name or value). */
  private headerError: NodeJS.ErrnoException | undefined;
  /** Requests in flight per stop signal, so one listener per signal aborts them all. */
  private readonly inFlight = new WeakMap<AbortSignal, Set<http.ClientRequest>>();

  constructor(readonly config: HttpConfig) {
    const u = new URL(config.url);
    this.url = u;
    this.lib = u.protocol === 'https:' ? https : http;
    // The dispatcher bounds concurrency (batch.maxInFlight); the agent just keeps that many connections warm.
    this.agent = new this.lib.Agent({ keepAlive: true, maxSockets: 64, keepAliveMsecs: 1000, noDelay: true });
    this.base = {
      protocol: u.protocol,
      hostname: u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname,
      port: u.port || undefined,
      path: `${u.pathname}${u.search}`,
      method: 'POST',
      agent: this.agent,
      ...(u.username || u.password
        ? { auth: `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}` }
        : {}),
    };
    // With a raw list Node neither validates nor adds a Host header: both happen here, once.
    const configured = Object.entries(config.headers ?? {}).filter(([k]) => !OWN_HEADERS.has(k.toLowerCase()));
    const h: string[] = [];
    if (!configured.some(([k]) => k.toLowerCase() === 'host')) h.push('host', u.host);
    for (const [k, v] of configured) {
      try {
        http.validateHeaderName(k);
        http.validateHeaderValue(k, v);
      } catch (err) {
        this.headerError ??= err as NodeJS.ErrnoException; // every export fails with it, as setHeader made it before
      }
      h.push(k, String(v));
    }
    h.push('content-type', 'application/x-ndjson');
    if (config.gzip) h.push('content-encoding', 'gzip');
    this.fixedHeaders = h;
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
    if (this.headerError) {
      const e = this.headerError;
      throw new RetryableExportError(`POST ${this.url.href} failed: ${e.code ?? e.message}`, 'network');
    }
    const headers = this.fixedHeaders.concat(
      'content-length',
      String(body.length),
      'x-sidekick-batch-id',
      part.id,
      'x-sidekick-records',
      String(part.records),
    );
    const active = this.watch(stop);
    let status: number;
    let retryAfter: string | string[] | undefined;
    let excerpt: string;
    let req: http.ClientRequest | undefined;
    try {
      // The whole exchange (connect, send, answer) is bounded by timeoutMs; a stop aborts it at once.
      const exchange = new Promise<{
        status: number;
        retryAfter: string | string[] | undefined;
        excerpt: string;
      }>((resolve, reject) => {
        const options = { ...this.base, headers: headers as unknown as http.OutgoingHttpHeaders };
        const r = this.lib.request(options, (res) => {
          const code = res.statusCode ?? 0;
          res.on('error', reject);
          if (code >= 200 && code < 300) {
            // Delivered: the 2xx status line is central's answer, whatever follows (a cut, nonsense or endless body
            // cannot undo it, and a retry would only make a duplicate). The body is not needed: it is drained, never
            // kept, so the connection can be reused; past DRAIN_MAX_BYTES or timeoutMs the connection is dropped.
            resolve({ status: code, retryAfter: undefined, excerpt: '' });
            const drain = setTimeout(() => res.destroy(), this.config.timeoutMs).unref();
            res.once('close', () => clearTimeout(drain));
            let drained = 0;
            res.on('data', (c: Buffer) => {
              drained += c.length;
              if (drained > DRAIN_MAX_BYTES) res.destroy();
            });
            return;
          }
          // A refusal: only the first KiB of its body is read (the dead-letter sidecar's excerpt); a longer body is
          // not waited for, its connection is dropped.
          const chunks: Buffer[] = [];
          let kept = 0;
          const done = (): void =>
            resolve({
              status: code,
              retryAfter: res.headers['retry-after'],
              excerpt: Buffer.concat(chunks).subarray(0, BODY_EXCERPT_BYTES).toString('utf8'),
            });
          res.on('data', (c: Buffer) => {
            if (kept >= BODY_EXCERPT_BYTES) return;
            chunks.push(c);
            kept += c.length;
            if (kept < BODY_EXCERPT_BYTES) return;
            done();
            res.destroy();
          });
          res.on('end', done);
        });
        req = r;
        active.add(r);
        r.on('error', reject);
        r.end(body);
      });
      ({ status, retryAfter, excerpt } = await withDeadline(exchange, this.config.timeoutMs, `POST ${this.url.href}`));
    } catch (err) {
      const timedOut = isSidekickError(err, 'SK_ERR_TIMEOUT');
      if (timedOut) req?.destroy(new Error('timeout'));
      if (stop.aborted) throw err; // stopping: not central's fault, not a breaker failure
      if (timedOut)
        throw new RetryableExportError(`POST ${this.url.href} timed out after ${this.config.timeoutMs} ms`, 'timeout');
      const e = err as NodeJS.ErrnoException;
      throw new RetryableExportError(`POST ${this.url.href} failed: ${e.code ?? e.message}`, 'network');
    } finally {
      if (req) active.delete(req);
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

  /** The set of requests in flight under `stop`; the first call for a signal adds its one abort listener. */
  private watch(stop: AbortSignal): Set<http.ClientRequest> {
    let set = this.inFlight.get(stop);
    if (!set) {
      const s = new Set<http.ClientRequest>();
      set = s;
      this.inFlight.set(stop, s);
      stop.addEventListener(
        'abort',
        () => {
          for (const r of s) r.destroy(new Error('stopped'));
        },
        { once: true },
      );
    }
    return set;
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }
}
