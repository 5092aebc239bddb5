// What the network sources (http, etcd) share: one request's abort wiring (stop, timeout, idle), reading a body with
// a cap, splitting a streamed body into lines, the backoff between attempts, and error text that names the cause
// (fetch says only "fetch failed"; the reason is in err.cause).
import { describeError } from '../errors.js';
import { childLogger, type Logger } from '../log/logger.js';
import type { SidekickContext } from '../sidekicks/context.js';

/** A body, an SSE event or an etcd watch line larger than this is an error (a runaway server cannot fill the heap). */
export const MAX_BODY_BYTES = 32 * 1024 * 1024;

/**
 * One request's abort controller, aborted by the sidekick's stop signal, or by a timer armed with `arm` (the
 * request's timeout, then a stream's idle limit, re-armed with `touch` on every chunk). `close` removes the stop
 * listener and aborts whatever is still open (a stream's body), so nothing outlives the request.
 */
export class Exchange {
  readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private readonly onStop = (): void => this.controller.abort(this.stop.reason);

  constructor(private readonly stop: AbortSignal) {
    if (stop.aborted) this.controller.abort(stop.reason);
    else stop.addEventListener('abort', this.onStop, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Aborts with `reason()` after `ms` unless re-armed, touched or closed first. */
  arm(ms: number, reason: () => Error): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.controller.abort(reason()), ms);
  }

  /** Stops the armed timer (a stream is open: its life is not bounded). */
  disarm(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Restarts the armed timer (a stream's chunk arrived). */
  touch(): void {
    this.timer?.refresh();
  }

  close(): void {
    clearTimeout(this.timer);
    this.stop.removeEventListener('abort', this.onStop);
    if (!this.controller.signal.aborted) this.controller.abort(new Error('closed'));
  }
}

/** Runs `fn` with an Exchange whose timeout is armed, and closes it whatever happens. */
export async function withExchange<T>(
  stop: AbortSignal,
  timeoutMs: number,
  what: string,
  fn: (ex: Exchange) => Promise<T>,
): Promise<T> {
  const ex = new Exchange(stop);
  ex.arm(timeoutMs, () => new Error(`${what}: no answer within ${timeoutMs} ms`));
  try {
    return await fn(ex);
  } catch (err) {
    // An abort surfaces as a generic AbortError: report why it was aborted (timeout, idle, stop) instead.
    throw ex.signal.aborted && ex.signal.reason instanceof Error ? ex.signal.reason : err;
  } finally {
    ex.close();
  }
}

/** The body as text, at most `max` bytes (more is an error). */
export async function readText(res: Response, max = MAX_BODY_BYTES): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (res.body) {
    for await (const chunk of res.body) {
      size += chunk.byteLength;
      if (size > max) throw new Error(`response body over ${max} bytes`);
      chunks.push(chunk);
    }
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The lines of a streamed body (ended by \n, \r\n or \r, the SSE rule; NDJSON has no raw \r), with `onChunk` called
 * for every chunk received (liveness). A line longer than `max` bytes is an error. A last unterminated line is dropped.
 */
export async function* readLines(
  body: ReadableStream<Uint8Array>,
  onChunk: () => void,
  max = MAX_BODY_BYTES,
): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = '';
  let skipLf = false; // the previous chunk ended with \r: a \n starting this one belongs to it
  for await (const chunk of body) {
    onChunk();
    buffer += decoder.decode(chunk, { stream: true });
    if (skipLf && buffer.startsWith('\n')) buffer = buffer.slice(1);
    skipLf = false;
    let start = 0;
    for (;;) {
      const end = nextBreak(buffer, start);
      if (end < 0) break;
      yield buffer.slice(start, end);
      if (buffer[end] === '\r') {
        if (end + 1 === buffer.length) {
          skipLf = true;
          start = end + 1;
          break;
        }
        start = buffer[end + 1] === '\n' ? end + 2 : end + 1;
      } else {
        start = end + 1;
      }
    }
    buffer = buffer.slice(start);
    if (buffer.length > max) throw new Error(`a line of the stream is over ${max} bytes`);
  }
}

function nextBreak(s: string, from: number): number {
  const lf = s.indexOf('\n', from);
  const cr = s.indexOf('\r', from);
  if (cr < 0) return lf;
  if (lf < 0) return cr;
  return Math.min(lf, cr);
}

/** Doubling delays between failed attempts: base, 2×base, … up to max; `reset` after a success. */
export class Backoff {
  private failures = 0;

  constructor(
    private readonly baseMs: number,
    private readonly maxMs: number,
  ) {}

  /** The delay before the next attempt; `baseMs` overrides the base for this call (an SSE server's `retry:`). */
  next(baseMs = this.baseMs): number {
    this.failures++;
    const max = Math.max(baseMs, this.maxMs);
    return Math.min(max, baseMs * 2 ** Math.min(this.failures - 1, 20));
  }

  reset(): void {
    this.failures = 0;
  }
}

/** An error's message with its causes (fetch's "fetch failed" → "fetch failed: connect ECONNREFUSED 127.0.0.1:1"). */
export function explain(err: unknown): string {
  let text = describeError(err);
  let cause = err instanceof Error ? err.cause : undefined;
  for (let depth = 0; cause !== undefined && depth < 3; depth++) {
    const more = describeError(cause);
    if (!text.includes(more)) text += `: ${more}`;
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return text;
}

/** A URL safe to log: no credentials, no query string (it may carry a token). */
export function safeUrl(url: string): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

/** The value of environment variable `name`, or an error naming the config field that points to it. */
export function envSecret(name: string, field: string): string {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(`${field}: environment variable ${name} is not set`);
  }
  return value;
}

export function sourceLogger(ctx: SidekickContext, type: string): Logger {
  return childLogger({ component: 'source', source: type, app: ctx.app, sidekick: ctx.name });
}
