// Runtime metrics of one `sidekick serve` instance: Prometheus text at GET /metrics on the top-level
// `metrics.listen` (off unless set). Nothing is counted here and nothing touches the request path: the sidekicks, the
// app supervisors and the agent already keep their totals for `sidekick status`, and each scrape reads that status
// once and turns it into series in prom-client collect() callbacks. Counters are set from those monotonic totals
// (never lowered: a value below the last one exported is ignored), so they survive reloads, sidekick restarts and
// HTTP worker replacements. When the agent runs inside serve its `sidekick_agent_*` series are in the same text (the
// agent's counters and gauges come in the same status read), so one scrape gets the whole instance.
import { Counter, Gauge, Registry } from 'prom-client';
import { taskDurationMetric } from './task-metrics.js';
import { listenHttp, type HttpListener } from '../common/http-listen.js';
import { answerHealth, type HealthProbes } from '../common/health.js';
import type { ListenAddress } from '../config/schema.js';
import { SidekickError, describeError } from '../errors.js';
import type { AgentStatus } from '../agent/supervisor/supervisor.js';
import type { AppStatus } from './app-supervisor.js';
import { createAgentRegistry, zeroCounters, zeroGauges } from '../agent/metrics.js';
import type { SidekickState, SidekickStatus } from '../sidekicks/instance.js';

/** What a scrape reads from ServeRuntime.status() (a subset of its shape, so a test can feed it directly). */
export interface ServeStatusView {
  reloads: number;
  log?: { dropped: number } | undefined;
  agent?: Pick<AgentStatus, 'counters' | 'gauges'> | undefined;
  apps: AppStatusView[];
}

type AppStatusView = Pick<
  AppStatus,
  | 'name'
  | 'workers'
  | 'workerRestarts'
  | 'unresponsiveKills'
  | 'recycles'
  | 'handlerErrors'
  | 'handlerTimeouts'
  | 'taskTimeouts'
  | 'logDropped'
  | 'sidekicks'
> &
  Partial<Pick<AppStatus, 'sidekickHost'>>;

const SIDEKICK_STATES: readonly SidekickState[] = ['starting', 'running', 'backoff', 'failed', 'stopping', 'stopped'];
const RESTART_REASONS = ['crash', 'boot_failure', 'clean_exit', 'reload'] as const;
const WORKER_STATES = ['starting', 'listening', 'draining'] as const;

type Labels = Record<string, string>;
type Sample = [labels: Labels, value: number];

/**
 * The serve registry (everything but the agent's series). `view()` is the status of the scrape in progress; every
 * collect() reads the same one.
 */
export function createServeRegistry(view: () => ServeStatusView): Registry {
  const registry = new Registry();
  // A counter whose value is counted elsewhere: each collect() raises it to the current total (never lowers it).
  const total = (name: string, help: string, labelNames: string[], read: (v: ServeStatusView) => Sample[]): void => {
    const seen = new Map<string, number>();
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        for (const [labels, value] of read(view())) {
          if (!Number.isFinite(value)) continue;
          const key = JSON.stringify(labels);
          const last = seen.get(key);
          if (last !== undefined && value <= last) continue;
          seen.set(key, value);
          this.inc(labels, value - (last ?? 0));
        }
      },
    });
  };
  // A gauge holds only what this scrape saw (a series whose subject is gone disappears).
  const gauge = (name: string, help: string, labelNames: string[], read: (v: ServeStatusView) => Sample[]): void => {
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        for (const [labels, value] of read(view())) if (Number.isFinite(value)) this.set(labels, value);
      },
    });
  };
  const perSidekick =
    (value: (s: SidekickStatus) => number | undefined) =>
    (v: ServeStatusView): Sample[] =>
      v.apps.flatMap((a) =>
        a.sidekicks.flatMap((s): Sample[] => {
          const x = value(s);
          return x === undefined ? [] : [[{ app: a.name, sidekick: s.name }, x]];
        }),
      );
  const perApp =
    (value: (a: AppStatusView) => number) =>
    (v: ServeStatusView): Sample[] =>
      v.apps.map((a) => [{ app: a.name }, value(a)]);
  const SK = ['app', 'sidekick'];

  // ---- sidekicks
  total(
    'sidekick_starts_total',
    'Sidekick threads started (first start, restarts, reloads).',
    SK,
    perSidekick((s) => s.starts),
  );
  total(
    'sidekick_restarts_total',
    'Sidekick threads started again, by reason: crash (after its first publish), boot_failure (before it), clean_exit, reload.',
    [...SK, 'reason'],
    (v) =>
      v.apps.flatMap((a) =>
        a.sidekicks.flatMap((s) =>
          RESTART_REASONS.map((reason): Sample => [{ app: a.name, sidekick: s.name, reason }, s.restarts[reason]]),
        ),
      ),
  );
  total(
    'sidekick_publishes_total',
    'Snapshots published with new content.',
    SK,
    perSidekick((s) => s.publishes),
  );
  gauge(
    'sidekick_ready',
    '1 once the sidekick has published a snapshot (stays 1 across restarts).',
    SK,
    perSidekick((s) => (s.ready ? 1 : 0)),
  );
  gauge(
    'sidekick_source_error',
    '1 while a built-in source reports bad data (it keeps serving its last good snapshot; status says why).',
    SK,
    perSidekick((s) => (s.sourceError ? 1 : 0)),
  );
  gauge(
    'sidekick_vars_bytes',
    'UTF-8 bytes of the latest snapshot (keys and values).',
    SK,
    perSidekick((s) => s.bytes),
  );
  gauge(
    'sidekick_last_publish_timestamp_seconds',
    'Unix time of the last publish with new content (absent until the first).',
    SK,
    perSidekick((s) => (s.publishedAt === undefined ? undefined : s.publishedAt / 1000)),
  );
  gauge(
    'sidekick_generation',
    'Current generation (0 for the first run, +1 per restart or reload).',
    SK,
    perSidekick((s) => s.generation),
  );
  gauge('sidekick_state', 'The sidekick state: 1 for the current one, 0 for the others.', [...SK, 'state'], (v) =>
    v.apps.flatMap((a) =>
      a.sidekicks.flatMap((s) =>
        SIDEKICK_STATES.map((state): Sample => [{ app: a.name, sidekick: s.name, state }, s.state === state ? 1 : 0]),
      ),
    ),
  );
  total(
    'sidekick_tasks_sent_total',
    'Tasks sent to the sidekick (sendTask and requestTask).',
    SK,
    perSidekick((s) => s.tasks.sent),
  );
  total(
    'sidekick_tasks_completed_total',
    'Tasks its handler completed.',
    SK,
    perSidekick((s) => s.tasks.completed),
  );
  total(
    'sidekick_tasks_failed_total',
    'Tasks the sidekick answered with an error (its handler threw, or it had none).',
    SK,
    perSidekick((s) => s.tasks.failed),
  );
  gauge(
    'sidekick_tasks_in_flight',
    'Tasks sent and not answered yet, queued or running.',
    SK,
    perSidekick((s) => s.tasksInFlight),
  );
  total(
    'sidekick_tasks_cancelled_total',
    "Tasks whose caller gave up before the answer (its deadline, its signal, its HTTP worker died): the handler's signal aborted, or the task was dropped before a thread took it.",
    SK,
    perSidekick((s) => s.tasks.cancelled ?? 0),
  );
  gauge(
    'sidekick_task_threads',
    'Threads of the task pool (declare.NAME.tasks.threads; 1 without a pool).',
    SK,
    perSidekick((s) => s.pool?.threads),
  );
  gauge(
    'sidekick_task_threads_busy',
    'Threads of the task pool running at least one task.',
    SK,
    perSidekick((s) => s.pool?.busy),
  );
  gauge(
    'sidekick_task_queue_depth',
    'Tasks waiting for a free thread of the task pool (at most declare.NAME.tasks.queue).',
    SK,
    perSidekick((s) => s.pool?.queued),
  );
  total(
    'sidekick_task_thread_crashes_total',
    'Deaths of the task pool threads (each failed its own tasks with SK_ERR_TASK_CRASHED and was replaced).',
    SK,
    perSidekick((s) => s.pool?.crashes),
  );
  registry.registerMetric(
    taskDurationMetric(() => view().apps.flatMap((a) => a.sidekicks.map((s) => ({ app: a.name, status: s })))),
  );

  // ---- the sidekick host process, per app
  gauge(
    'sidekick_host_rss_bytes',
    "Resident memory of the app's sidekick host process (all its sidekick threads), as it last reported it.",
    ['app'],
    (v) =>
      v.apps.flatMap((a): Sample[] =>
        a.sidekickHost?.rss === undefined ? [] : [[{ app: a.name }, a.sidekickHost.rss]],
      ),
  );
  total(
    'sidekick_host_restarts_total',
    'Sidekick host processes started again after one died (V8 fatal error, abort, OOM kill); its sidekicks count a crash each.',
    ['app'],
    (v) => v.apps.flatMap((a): Sample[] => (a.sidekickHost ? [[{ app: a.name }, a.sidekickHost.restarts]] : [])),
  );
  total(
    'sidekick_host_log_dropped_lines_total',
    "Log lines the app's sidekick host process (its sidekick threads included) dropped because stderr was not drained.",
    ['app'],
    (v) => v.apps.flatMap((a): Sample[] => (a.sidekickHost ? [[{ app: a.name }, a.sidekickHost.log.dropped]] : [])),
  );

  // ---- HTTP workers, per app
  gauge('sidekick_http_workers', 'HTTP worker processes, by state.', ['app', 'state'], (v) =>
    v.apps.flatMap((a) =>
      WORKER_STATES.map((state): Sample => [{ app: a.name, state }, a.workers.filter((w) => w.state === state).length]),
    ),
  );
  total(
    'sidekick_http_worker_restarts_total',
    'HTTP workers replaced after they died.',
    ['app'],
    perApp((a) => a.workerRestarts),
  );
  total(
    'sidekick_http_worker_unresponsive_kills_total',
    'HTTP workers killed because their event loop stopped answering (apps[].unresponsiveMs).',
    ['app'],
    perApp((a) => a.unresponsiveKills),
  );
  total(
    'sidekick_http_worker_recycles_total',
    'HTTP workers replaced gracefully on apps[].recycle limits.',
    ['app'],
    perApp((a) => a.recycles),
  );
  total(
    'sidekick_http_handler_errors_total',
    'Handler throws and rejections answered 500.',
    ['app'],
    perApp((a) => a.handlerErrors),
  );
  total(
    'sidekick_http_handler_timeouts_total',
    'Requests answered 503 because the handler had not started its response (apps[].handlerTimeoutMs).',
    ['app'],
    perApp((a) => a.handlerTimeouts),
  );
  total(
    'sidekick_task_timeouts_total',
    'requestTask calls in HTTP workers that ended SK_ERR_TIMEOUT.',
    ['app'],
    perApp((a) => a.taskTimeouts),
  );

  total(
    'sidekick_http_log_dropped_lines_total',
    "Log lines the app's HTTP workers dropped because stderr was not drained.",
    ['app'],
    perApp((a) => a.logDropped),
  );

  // ---- the instance
  total('sidekick_serve_reloads_total', 'Reloads (SIGHUP, or a file change with dev.watch).', [], (v) => [
    [{}, v.reloads],
  ]);
  total(
    'sidekick_log_dropped_lines_total',
    'Log lines the serve supervisor dropped because stderr was not drained (sidekick hosts and HTTP workers: per app).',
    [],
    (v) => [[{}, v.log?.dropped ?? 0]],
  );
  return registry;
}

/** GET /metrics on `metrics.listen`: serve's series, then the agent's when it runs inside serve; /healthz, /readyz. */
export class ServeMetrics {
  private view: ServeStatusView = { reloads: 0, apps: [] };
  private readonly serve = createServeRegistry(() => this.view);
  // Rendered only when the status has an agent (the zeros are never exported).
  private readonly agent = createAgentRegistry(
    () => this.view.agent ?? { counters: zeroCounters(), gauges: zeroGauges() },
  );
  /** Concurrent scrapes share one status read and one rendering. */
  private rendering: Promise<string> | undefined;
  private listener: HttpListener | undefined;

  /** `status` is ServeRuntime.status(), read once per scrape. */
  constructor(private readonly status: () => Promise<ServeStatusView>) {}

  /**
   * Listens on `address` (the top-level `metrics.listen`; undefined: metrics off, returns undefined). A listen error
   * rejects with SK_ERR_LISTEN naming the field.
   */
  static async start(
    address: ListenAddress | undefined,
    status: () => Promise<ServeStatusView>,
    health?: HealthProbes,
  ): Promise<ServeMetrics | undefined> {
    if (!address) return undefined;
    const metrics = new ServeMetrics(status);
    try {
      metrics.listener = await listenHttp(address, (req, res) => {
        if (answerHealth(req, res, health)) return;
        if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
          res.writeHead(404).end('not found\n');
          return;
        }
        metrics.scrape().then(
          (text) => res.writeHead(200, { 'content-type': metrics.serve.contentType }).end(text),
          (err: unknown) => res.writeHead(500).end(`${describeError(err)}\n`),
        );
      });
    } catch (err) {
      const where = address.kind === 'unix' ? `unix:${address.path}` : `${address.host}:${address.port}`;
      throw new SidekickError('SK_ERR_LISTEN', `metrics.listen ${where}: ${describeError(err)}`, {
        field: 'metrics.listen',
      });
    }
    return metrics;
  }

  /** The bound TCP port (the real one when the config said port 0). */
  port(): number | undefined {
    return this.listener?.port();
  }

  /** The Prometheus text of one scrape. */
  scrape(): Promise<string> {
    this.rendering ??= this.render().finally(() => (this.rendering = undefined));
    return this.rendering;
  }

  private async render(): Promise<string> {
    this.view = await this.status();
    const text = await this.serve.metrics();
    return this.view.agent ? text + (await this.agent.metrics()) : text;
  }

  async stop(): Promise<void> {
    await this.listener?.close();
  }
}
