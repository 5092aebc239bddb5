// What a task pool counts about its tasks for `sidekick status` and /metrics: answered/failed/cancelled totals and a
// histogram of run times. Counted in the sidekick host (or the library process); the serve supervisor only reads it.
import type { Histogram, TaskCounts } from './instance.js';

/** Upper bounds (seconds) of the run-time histogram: from an empty round trip (~50 µs) to a minute-long export. */
export const DURATION_BOUNDS = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, Infinity];

export class TaskStats {
  readonly counts: Required<TaskCounts> = { sent: 0, completed: 0, failed: 0, cancelled: 0 };
  private readonly histogram: Histogram = {
    bounds: DURATION_BOUNDS,
    counts: DURATION_BOUNDS.map(() => 0),
    sum: 0,
    count: 0,
  };

  /** One answered task that ran `seconds` in a thread. */
  observe(seconds: number): void {
    const i = DURATION_BOUNDS.findIndex((b) => seconds <= b);
    this.histogram.counts[i]!++;
    this.histogram.sum += seconds;
    this.histogram.count++;
  }

  /** A copy, for status. */
  durations(): Histogram {
    return { ...this.histogram, counts: [...this.histogram.counts] };
  }

  /** A new sidekick host carries on from the last status of the one that died (SidekickPool.resume). */
  restore(counts: TaskCounts, durations: Histogram | undefined): void {
    Object.assign(this.counts, { cancelled: 0, ...counts });
    if (durations && durations.counts.length === DURATION_BOUNDS.length) {
      this.histogram.counts = [...durations.counts];
      this.histogram.sum = durations.sum;
      this.histogram.count = durations.count;
    }
  }
}
