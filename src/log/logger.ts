// Structured logs (pino, JSON lines on stderr so stdout stays free for command output).
// Level: SIDEKICK_LOG_LEVEL (trace|debug|info|warn|error|fatal|silent), default info.
import { pino, type Logger } from 'pino';

export type { Logger };

let root: Logger | undefined;

export function logger(): Logger {
  root ??= pino(
    {
      level: process.env.SIDEKICK_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination({ fd: 2, sync: true }),
  );
  return root;
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
