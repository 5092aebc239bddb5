// One bounded HTTP POST to one URL, shared by the http and otlp exporters: the transport, not the protocol.
//
// The whole exchange (connect, send, answer) is bounded by `timeoutMs`: the status line decides, so it must arrive
// within it; a stop signal aborts it at once. Bodies are read with a cap, never whole: of a refusal the poster keeps at
// most 1 KiB (the dead-letter sidecar's excerpt); a 2xx body is drained for the connection's reuse (up to 64 KiB),
// or kept up to 64 KiB when the protocol answers in it (OTLP's partial success), and past that the connection is
// dropped (central's garbage or multi-MB answers, trickles: test/agent-faults.test.ts). A 2xx status line is the
// answer whatever follows: a body cut or slow after it cannot undo a delivery (a retry would only make a duplicate).
//
// Per request cost: at the default batch size this runs for every 100 records, so what node:http does per call adds
// up. The request options (host, port, path, agent) are worked out once, not from the URL object on every call; the
// headers go as a raw list validated once (setHeader validates and lowercases each header on each call); one abort
// listener per stop signal serves every request in flight.
import http from 'node:http';
import https from 'node:https';
import { withDeadline } from '../../common/async.js';
import { isSidekickError } from '../../errors.js';
import { RetryableExportError } from './types.js';

const BODY_EXCERPT_BYTES = 1024;
/** A 2xx body longer than this is not read to its end: the connection is dropped instead of reused. */
const BODY_2XX_MAX_BYTES = 64 * 1024;

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

export interface PostAnswer {
  status: number;
  retryAfter: string | string[] | undefined;
  contentType: string | undefined;
  /** A refusal: its first KiB. A 2xx: its body when `keep2xxBody` (up to 64 KiB, else what came before the cut). */
  body: Buffer;
}

export interface PosterOptions {
  url: string;
  timeoutMs: number;
  /** Configured headers; those named in `ownHeaders` (set per request by the exporter) are dropped. */
  headers: Record<string, string>;
  ownHeaders: ReadonlySet<string>;
  /** Headers every request carries (content type, encoding), after the configured ones. */
  fixed: [string, string][];
  /** Keep a 2xx body (OTLP answers partial success in it); otherwise it is drained. */
  keep2xxBody: boolean;
  /** Shared keep-alive agent (one per exporter, so two URLs of one collector reuse the same connections). */
  agent: http.Agent;
}

/** A keep-alive agent for the dispatcher's concurrency (batch.maxInFlight): it just keeps that many connections warm. */
export function keepAliveAgent(url: string): http.Agent {
  const lib = new URL(url).protocol === 'https:' ? https : http;
  return new lib.Agent({ keepAlive: true, maxSockets: 64, keepAliveMsecs: 1000, noDelay: true });
}

export class HttpPoster {
  readonly href: string;
  private readonly lib: typeof http | typeof https;
  /** Request options without headers, computed once. */
  private readonly base: http.RequestOptions;
  /** Raw header list (name, value, …) every request starts with: Host, configured headers, fixed ones. */
  private readonly fixedHeaders: string[];
  /** A configured header Node would refuse (bad name or value): every post fails with it, as setHeader made it. */
  private readonly headerError: NodeJS.ErrnoException | undefined;
  /** Requests in flight per stop signal, so one listener per signal aborts them all. */
  private readonly inFlight = new WeakMap<AbortSignal, Set<http.ClientRequest>>();

  constructor(private readonly opts: PosterOptions) {
    const u = new URL(opts.url);
    this.href = u.href;
    this.lib = u.protocol === 'https:' ? https : http;
    this.base = {
      protocol: u.protocol,
      hostname: u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname,
      port: u.port || undefined,
      path: `${u.pathname}${u.search}`,
      method: 'POST',
      agent: opts.agent,
      ...(u.username || u.password
        ? { auth: `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}` }
        : {}),
    };
    // With a raw list Node neither validates nor adds a Host header: both happen here, once.
    const configured = Object.entries(opts.headers).filter(([k]) => !opts.ownHeaders.has(k.toLowerCase()));
    const h: string[] = [];
    let headerError: NodeJS.ErrnoException | undefined;
    if (!configured.some(([k]) => k.toLowerCase() === 'host')) h.push('host', u.host);
    for (const [k, v] of configured) {
      try {
        http.validateHeaderName(k);
        http.validateHeaderValue(k, v);
      } catch (err) {
        headerError ??= err as NodeJS.ErrnoException;
      }
      h.push(k, String(v));
    }
    for (const [k, v] of opts.fixed) h.push(k, v);
    this.fixedHeaders = h;
    this.headerError = headerError;
  }

  /**
   * POSTs `body` with the fixed headers plus `extra` (name, value, …). Resolves with the answer; throws
   * RetryableExportError for a network error or a timeout, and the stop signal's reason when stopped.
   */
  async post(body: Buffer, extra: string[], stop: AbortSignal): Promise<PostAnswer> {
    if (stop.aborted) throw stop.reason;
    if (this.headerError) {
      const e = this.headerError;
      throw new RetryableExportError(`POST ${this.href} failed: ${e.code ?? e.message}`, 'network');
    }
    const headers = this.fixedHeaders.concat('content-length', String(body.length), ...extra);
    const active = this.watch(stop);
    let req: http.ClientRequest | undefined;
    const timeoutMs = this.opts.timeoutMs;
    try {
      // Resolves at the status line for a 2xx (its body, when kept, is read after, on its own bound), after the
      // excerpt for a refusal.
      const exchange = new Promise<PostAnswer & { rest?: Promise<Buffer> }>((resolve, reject) => {
        const options = { ...this.base, headers: headers as unknown as http.OutgoingHttpHeaders };
        const r = this.lib.request(options, (res) => {
          const status = res.statusCode ?? 0;
          const contentType = res.headers['content-type'];
          const retryAfter = res.headers['retry-after'];
          res.on('error', reject);
          const ok = status >= 200 && status < 300;
          if (ok && !this.opts.keep2xxBody) {
            // The body is not needed: drained, never kept, so the connection can be reused.
            resolve({ status, retryAfter, contentType, body: Buffer.alloc(0) });
            this.drain(res);
            return;
          }
          const read = readCapped(res, ok ? BODY_2XX_MAX_BYTES : BODY_EXCERPT_BYTES);
          if (ok) resolve({ status, retryAfter, contentType, body: Buffer.alloc(0), rest: read });
          else void read.then((body) => resolve({ status, retryAfter, contentType, body }));
        });
        req = r;
        active.add(r);
        r.on('error', reject);
        r.end(body);
      });
      const answer = await withDeadline(exchange, timeoutMs, `POST ${this.href}`);
      if (!answer.rest) return answer;
      // A 2xx: delivered whatever follows. Its body (OTLP's partial success) gets timeoutMs of its own; what came
      // by then is the answer, and the connection is dropped.
      const rest = answer.rest;
      const timer = setTimeout(() => req?.destroy(), timeoutMs).unref();
      try {
        return { ...answer, body: await rest, rest: undefined } as PostAnswer;
      } finally {
        clearTimeout(timer);
      }
    } catch (err) {
      const timedOut = isSidekickError(err, 'SK_ERR_TIMEOUT');
      if (timedOut) req?.destroy(new Error('timeout'));
      if (stop.aborted) throw err; // stopping: not central's fault, not a breaker failure
      if (err instanceof RetryableExportError) throw err;
      if (timedOut) throw new RetryableExportError(`POST ${this.href} timed out after ${timeoutMs} ms`, 'timeout');
      const e = err as NodeJS.ErrnoException;
      throw new RetryableExportError(`POST ${this.href} failed: ${e.code ?? e.message}`, 'network');
    } finally {
      if (req) active.delete(req);
    }
  }

  /** Reads a 2xx body to its end for the connection's reuse; past 64 KiB or timeoutMs the connection is dropped. */
  private drain(res: http.IncomingMessage): void {
    const timer = setTimeout(() => res.destroy(), this.opts.timeoutMs).unref();
    res.once('close', () => clearTimeout(timer));
    let drained = 0;
    res.on('data', (c: Buffer) => {
      drained += c.length;
      if (drained > BODY_2XX_MAX_BYTES) res.destroy();
    });
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
}

/** The retry or refusal an HTTP status means for the http exporter (and, where the OTLP spec agrees, for otlp). */
export function retryableFor(
  status: number,
  retryAfter: string | string[] | undefined,
  href: string,
): RetryableExportError {
  const after = parseRetryAfter(retryAfter);
  const msg = `POST ${href} answered ${status}`;
  if (status === 408) return new RetryableExportError(msg, 'http_408', status, after);
  if (status === 429) return new RetryableExportError(msg, 'http_429', status, after);
  if (status >= 500) return new RetryableExportError(msg, 'http_5xx', status, after);
  return new RetryableExportError(msg, 'http_other', status, after);
}

/** Up to `cap` bytes of a body; resolves at its end, at the cap (then the rest is not read: destroyed), or at close. */
function readCapped(res: http.IncomingMessage, cap: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let kept = 0;
    const done = (): void => resolve(Buffer.concat(chunks).subarray(0, cap));
    res.on('data', (c: Buffer) => {
      if (kept >= cap) return;
      chunks.push(c);
      kept += c.length;
      if (kept < cap) return;
      done();
      res.destroy();
    });
    res.on('end', done);
    res.on('close', done);
  });
}
