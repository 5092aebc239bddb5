// Health of an app's HTTP workers, seen from the supervisor: once a second each listening worker is pinged over IPC
// and answers from its event loop with its RSS and handler counters. A worker that stops answering (a handler in a
// busy loop) is killed, since node:cluster would keep handing it connections; one past its RSS or uptime limit is
// recycled gracefully (a replacement listens first, then it drains).
import type { AppConfig } from '../config/schema.js';
import type { HealthSample } from '../sidekicks/messages.js';

export const PING_INTERVAL_MS = 1000;
/** RSS recycling waits until a worker has run this long, so a limit set below the baseline cannot loop. */
const MIN_RSS_RECYCLE_UPTIME_MS = 10_000;

export type { HealthSample };

/** What the supervisor should do with one worker after a tick. */
export type HealthVerdict =
  | { action: 'none' }
  | { action: 'kill'; silentMs: number }
  | { action: 'recycle'; reason: 'rss' | 'uptime'; rss: number; uptimeMs: number };

/** One worker's ping bookkeeping. */
export class WorkerHealth {
  private nextId = 1;
  /** Sent time of the oldest ping not answered yet (pings are answered in order). */
  private unansweredSince: number | undefined;
  private answeredId = 0;
  latest: HealthSample | undefined;

  constructor(private readonly startedAt: number) {}

  /** The ping to send now. */
  ping(now: number): number {
    this.unansweredSince ??= now;
    return this.nextId++;
  }

  pong(id: number, sample: HealthSample): void {
    if (id <= this.answeredId) return;
    this.answeredId = id;
    this.latest = sample;
    // Every ping up to `id` is answered; a later one may still be out.
    this.unansweredSince = id === this.nextId - 1 ? undefined : Date.now();
  }

  verdict(config: Pick<AppConfig, 'unresponsiveMs' | 'recycle'>, now: number): HealthVerdict {
    const silentMs = this.unansweredSince === undefined ? 0 : now - this.unansweredSince;
    if (config.unresponsiveMs > 0 && silentMs >= config.unresponsiveMs) return { action: 'kill', silentMs };
    const uptimeMs = now - this.startedAt;
    const rss = this.latest?.rss ?? 0;
    const { maxRssBytes, maxUptimeMs } = config.recycle;
    if (maxRssBytes > 0 && rss > maxRssBytes && uptimeMs >= MIN_RSS_RECYCLE_UPTIME_MS)
      return { action: 'recycle', reason: 'rss', rss, uptimeMs };
    if (maxUptimeMs > 0 && uptimeMs >= maxUptimeMs) return { action: 'recycle', reason: 'uptime', rss, uptimeMs };
    return { action: 'none' };
  }
}
