// Structured logs (pino, JSON lines on stderr so stdout stays free for command output).
// Level: SIDEKICK_LOG_LEVEL (trace|debug|info|warn|error|fatal|silent), default info.
// Logging never blocks an event loop: lines go through one bounded, non-blocking writer per process
// (stderr-writer.ts); worker threads hand theirs to it (thread-link.ts). Dropped lines are counted (logCounts()).
import { isMainThread, workerData, type MessagePort } from 'node:worker_threads';
import { pino, type Logger } from 'pino';
import { StderrWriter, logBufferBytes, openStderr, type LogCounts } from './stderr-writer.js';
import {
  THREAD_LOG_KEY,
  ThreadLogSink,
  createThreadLogLink,
  threadDroppedLines,
  threadLogLinkOf,
  type ThreadLogLink,
} from './thread-link.js';

export type { Logger, LogCounts };

let root: Logger | undefined;
let writer: StderrWriter | undefined;

/** This process's (or this unlinked thread's) writer, created at first use; flushed (bounded) at exit. */
function processWriter(): StderrWriter {
  if (!writer) {
    const w = new StderrWriter(openStderr(), logBufferBytes(), threadDroppedLines);
    process.on('exit', () => w.flushAtExit());
    writer = w;
  }
  return writer;
}

export function logger(): Logger {
  const link = isMainThread ? undefined : threadLogLinkOf(workerData);
  root ??= pino(
    {
      level: process.env.SIDEKICK_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      formatters: { level: (label) => ({ level: label }) },
    },
    link ? new ThreadLogSink(link) : processWriter(),
  );
  return root;
}

/** Lines logged by this process (its threads included) and how many were dropped because stderr was not drained. */
export function logCounts(): LogCounts {
  return processWriter().counts();
}

/** For a new worker thread: `workerData` fields and `transferList` so the thread logs through this process. */
export function threadLogging(): { data: { [THREAD_LOG_KEY]: ThreadLogLink }; transferList: MessagePort[] } {
  const { link, transfer } = createThreadLogLink((line) => processWriter().write(line));
  return { data: { [THREAD_LOG_KEY]: link }, transferList: transfer };
}

/** A child logger for one component, e.g. `childLogger({ component: 'sidekick', app: 'shop', sidekick: 'flags' })`. */
export function childLogger(bindings: Record<string, unknown>): Logger {
  return logger().child(bindings);
}

/**
 * Rate-limited logging for noisy events (bad records, failed exports): at most `perWindow` lines per window, then one
 * summary line saying how many were suppressed. Counters elsewhere stay exact; only the log is thinned.
 */
export class RateLimitedLog {
  private windowStart = 0;
  private count = 0;
  private suppressed = 0;

  constructor(
    private readonly log: Logger,
    private readonly perWindow = 10,
    private readonly windowMs = 10_000,
  ) {}

  warn(obj: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    if (now - this.windowStart >= this.windowMs) {
      if (this.suppressed > 0)
        this.log.warn({ suppressed: this.suppressed }, `${this.suppressed} similar messages suppressed`);
      this.windowStart = now;
      this.count = 0;
      this.suppressed = 0;
    }
    if (this.count < this.perWindow) {
      this.count++;
      this.log.warn(obj, msg);
    } else {
      this.suppressed++;
    }
  }
}
