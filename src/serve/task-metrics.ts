// sidekick_task_duration_seconds: the task pools' run-time histograms on /metrics. The pools count them where tasks
// run (src/sidekicks/task-stats.ts, in the sidekick host); a scrape only reads their status, so this is a read-only
// prom-client metric that renders those buckets (prom-client's own Histogram can only observe, not be set).
import type { Metric, MetricValueWithName } from 'prom-client';
import type { SidekickStatus } from '../sidekicks/instance.js';

const NAME = 'sidekick_task_duration_seconds';
const HELP =
  'Run time of answered tasks, from the moment a thread of the task pool took one to its answer (queue wait excluded).';

export function taskDurationMetric(read: () => { app: string; status: SidekickStatus }[]): Metric {
  const get = (): Promise<unknown> => {
    const values: MetricValueWithName<string>[] = [];
    for (const { app, status } of read()) {
      const h = status.pool?.durations;
      if (!h || h.count === 0) continue;
      const labels = { app, sidekick: status.name };
      let cumulative = 0;
      h.bounds.forEach((bound, i) => {
        cumulative += h.counts[i] ?? 0;
        const le = bound === Infinity ? '+Inf' : String(bound);
        values.push({ metricName: `${NAME}_bucket`, labels: { ...labels, le }, value: cumulative });
      });
      values.push({ metricName: `${NAME}_sum`, labels, value: h.sum });
      values.push({ metricName: `${NAME}_count`, labels, value: h.count });
    }
    return Promise.resolve({ name: NAME, help: HELP, type: 'histogram', aggregator: 'sum', values });
  };
  return { name: NAME, help: HELP, type: 'histogram', aggregator: 'sum', get, reset: () => {} } as unknown as Metric;
}
