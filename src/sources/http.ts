// The http source: a URL returning a JSON object, published as vars (top-level keys; a string value as it is, null
// as "", any other value as its compact JSON text). Each request offers `text/event-stream` and `application/json`:
// - a `text/event-stream` answer is followed: every event of type `message` carries the full JSON object (one
//   snapshot per event; `event:` types other than `message` and `:` comments only prove the stream alive). When the
//   stream ends the source reconnects after the server's `retry:` (default 1 s) with Last-Event-ID; a stream silent
//   (no event, no comment) for 2 × intervalMs is taken as dead and reconnected.
// - any other answer is read as the JSON object, then polled every intervalMs with If-None-Match (a 304 publishes
//   nothing).
// timeoutMs bounds each request: the whole of a poll, and an event stream until its headers arrive.
// Failures before the first publish throw (a boot failure: the runtime retries with backoff). After it, a failed
// request, a bad status, a body or event that is not a JSON object keep the last snapshot (logged) and the source
// retries: from 250 ms (or the server's `retry:`), doubling up to intervalMs.
import { sleep } from '../common/async.js';
import type { HttpSourceConfig } from '../config/sources.js';
import { RateLimitedLog, type Logger } from '../log/logger.js';
import type { SidekickContext } from '../sidekicks/context.js';
import type { SourceMain } from './index.js';
import {
  Backoff,
  type Exchange,
  envSecret,
  explain,
  MAX_BODY_BYTES,
  readLines,
  readText,
  safeUrl,
  sourceLogger,
  withExchange,
} from './net.js';
import { reportSourceError } from './report.js';
import { SseParser } from './sse.js';

const DEFAULT_RETRY_MS = 1000;
const FAILURE_BASE_MS = 250;

export function createSource(config: HttpSourceConfig): SourceMain {
  return (ctx) => new HttpFollower(config, ctx).run();
}

/**
 * The vars of a JSON text: its top-level keys; strings as they are, null as "", other values as their compact JSON
 * text (the file source's mapping, so a document means the same served from a file or a URL).
 */
export function jsonToVars(text: string): Record<string, string> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`the body is not JSON (${explain(err)})`, { cause: err });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const kind = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
    throw new Error(`expected a JSON object, got ${kind}`);
  }
  // fromEntries defines own properties: a key such as "__proto__" stays data.
  return Object.fromEntries(
    Object.entries(value).map(
      ([k, v]) => [k, typeof v === 'string' ? v : v === null ? '' : JSON.stringify(v)] as const,
    ),
  );
}

type Outcome = 'polled' | 'stream-ended';

class HttpFollower {
  private readonly where: string;
  private readonly log: Logger;
  private readonly warn: RateLimitedLog;
  private readonly backoff: Backoff;
  private published = false;
  private etag: string | undefined;
  private lastEventId: string | undefined;
  private retryMs: number | undefined;

  constructor(
    private readonly config: HttpSourceConfig,
    private readonly ctx: SidekickContext,
  ) {
    this.where = safeUrl(config.url);
    this.log = sourceLogger(ctx, 'http');
    this.warn = new RateLimitedLog(this.log);
    this.backoff = new Backoff(FAILURE_BASE_MS, config.intervalMs);
  }

  async run(): Promise<void> {
    const headers = this.headers();
    const { signal } = this.ctx;
    while (!signal.aborted) {
      let delay: number;
      try {
        const outcome = await this.attempt(headers);
        this.backoff.reset();
        reportSourceError(undefined);
        // A server's `retry: 0` does not make a loop: reconnections are at least 100 ms apart.
        delay = outcome === 'polled' ? this.config.intervalMs : Math.max(100, this.retryMs ?? DEFAULT_RETRY_MS);
      } catch (err) {
        if (signal.aborted) return;
        const message = `http source ${this.where}: ${explain(err)}`;
        if (!this.published) throw new Error(message, { cause: err });
        delay = Math.max(100, this.backoff.next(this.retryMs ?? FAILURE_BASE_MS));
        this.warn.warn({ err: message, retryInMs: delay }, 'http source failed; keeping the last snapshot');
        reportSourceError(message);
      }
      await sleep(delay, signal);
    }
  }

  /** The request headers: Accept, the config's headers, then those read from environment variables. */
  private headers(): Headers {
    const headers = new Headers({ accept: 'text/event-stream, application/json' });
    for (const [name, value] of Object.entries(this.config.headers)) headers.set(name, value);
    for (const [name, env] of Object.entries(this.config.headersFromEnv)) {
      headers.set(name, envSecret(env, `http source ${this.where}: headersFromEnv.${name}`));
    }
    return headers;
  }

  private attempt(base: Headers): Promise<Outcome> {
    return withExchange(this.ctx.signal, this.config.timeoutMs, `GET ${this.where}`, async (ex) => {
      const headers = new Headers(base);
      if (this.etag !== undefined) headers.set('if-none-match', this.etag);
      if (this.lastEventId !== undefined) headers.set('last-event-id', this.lastEventId);
      const res = await fetch(this.config.url, { headers, signal: ex.signal });
      if (res.status === 304 && this.published) {
        await res.body?.cancel();
        return 'polled';
      }
      if (res.status !== 200) {
        await res.body?.cancel();
        throw new Error(`HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`);
      }
      if (/^\s*text\/event-stream\b/i.test(res.headers.get('content-type') ?? '')) return this.follow(res, ex);
      const vars = jsonToVars(await readText(res));
      this.publish(vars, true);
      this.etag = res.headers.get('etag') ?? undefined;
      return 'polled';
    });
  }

  /** Follows an event stream until it ends; throws if it ends (or dies) before any event was published. */
  private async follow(res: Response, ex: Exchange): Promise<Outcome> {
    const idleMs = 2 * this.config.intervalMs;
    ex.arm(idleMs, () => new Error(`the event stream was silent for ${idleMs} ms (no event, no comment)`));
    this.etag = undefined;
    const parser = new SseParser(MAX_BODY_BYTES);
    let events = 0;
    try {
      for await (const line of readLines(res.body!, () => ex.touch())) {
        const event = parser.line(line);
        if (event?.type !== 'message') continue;
        let vars: Record<string, string>;
        try {
          vars = jsonToVars(event.data);
        } catch (err) {
          if (!this.published) throw err;
          const message = `http source ${this.where}: ${explain(err)}`;
          this.warn.warn({ err: message }, 'http source: an event is not a JSON object; keeping the last snapshot');
          reportSourceError(message);
          continue;
        }
        if (this.publish(vars, false)) {
          events++;
          reportSourceError(undefined);
        }
      }
    } finally {
      this.lastEventId = parser.lastEventId ?? this.lastEventId;
      this.retryMs = parser.retryMs ?? this.retryMs;
    }
    if (events === 0) throw new Error('the event stream ended before its first event');
    return 'stream-ended';
  }

  /**
   * Publishes; a snapshot setVars refuses (too large) throws before the first publish, else is logged and skipped
   * (or thrown when `rethrow`, so a poll retries sooner). Returns whether it was published.
   */
  private publish(vars: Record<string, string>, rethrow: boolean): boolean {
    try {
      this.ctx.setVars(vars);
    } catch (err) {
      if (!this.published || rethrow) throw err;
      this.warn.warn({ err: explain(err) }, 'http source: snapshot refused; keeping the last one');
      return false;
    }
    this.published = true;
    return true;
  }
}
