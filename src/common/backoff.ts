// Restart policy shared by sidekicks, HTTP workers and the agent worker.
//
// Delay before restart n (n = consecutive failures, 1-based): n² × baseMs, capped at maxMs — FrankenPHP's proven
// 100 ms / 1 s schedule by default: 100, 400, 900, 1000, 1000, … ms. Six boot failures therefore take about 4.4 s plus
// boot time, well inside getVars' default 30 s timeout, so a waiting caller learns *why* rather than timing out.
// The count resets once a child has stayed up for `stableAfterMs`.

export interface BackoffOptions {
  baseMs?: number;
  maxMs?: number;
  stableAfterMs?: number;
}

export class RestartBackoff {
  readonly baseMs: number;
  readonly maxMs: number;
  readonly stableAfterMs: number;
  private failures = 0;
  private startedAt = 0;

  constructor(opts: BackoffOptions = {}) {
    this.baseMs = opts.baseMs ?? 100;
    this.maxMs = opts.maxMs ?? 1000;
    this.stableAfterMs = opts.stableAfterMs ?? 10_000;
  }

  /** Call when the child starts (or becomes ready). */
  started(now = Date.now()): void {
    this.startedAt = now;
  }

  /** Call when the child failed; returns the delay before the next start and the consecutive-failure count. */
  failed(now = Date.now()): { delayMs: number; consecutive: number } {
    if (this.startedAt && now - this.startedAt >= this.stableAfterMs) this.failures = 0;
    this.failures++;
    return { delayMs: this.delayFor(this.failures), consecutive: this.failures };
  }

  delayFor(n: number): number {
    return Math.min(this.maxMs, n * n * this.baseMs);
  }

  get consecutive(): number {
    return this.failures;
  }

  reset(): void {
    this.failures = 0;
  }
}
