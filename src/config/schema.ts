// The config schema (zod): one place that says what every field means, its default and its limits.
// Types below are the *resolved* config (defaults applied, durations in ms, sizes in bytes, paths absolute).
import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { duration, size } from './fields.js';
import { sourceSchema } from './sources.js';

export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

const name = z
  .string()
  .regex(
    NAME_PATTERN,
    'expected 1-128 characters: letters, digits, ".", "_", ":", "-", starting with a letter or digit',
  );

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

const listen = z.union([z.number(), z.string()]).transform((v, ctx): ListenAddress => {
  const parsed = parseListen(v);
  if (!parsed) {
    ctx.addIssue({ code: 'custom', message: `expected 'host:port', a port number (0-65535) or 'unix:/path.sock'` });
    return z.NEVER;
  }
  return parsed;
});

export function parseListen(v: string | number): ListenAddress | undefined {
  const port = (s: string): number | undefined => {
    if (!/^\d{1,5}$/.test(s)) return undefined;
    const n = Number(s);
    return n <= 65535 ? n : undefined;
  };
  if (typeof v === 'number')
    return Number.isInteger(v) && v >= 0 && v <= 65535 ? { kind: 'tcp', host: '127.0.0.1', port: v } : undefined;
  if (v.startsWith('unix:')) return v.length > 5 ? { kind: 'unix', path: v.slice(5) } : undefined;
  const only = port(v);
  if (only !== undefined) return { kind: 'tcp', host: '127.0.0.1', port: only };
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(v);
  if (!m || !m[1]) return undefined;
  const p = port(m[2]!);
  return p === undefined ? undefined : { kind: 'tcp', host: m[1], port: p };
}

// A task pool. Without it a sidekick is one thread that runs every task it is sent at once (async handlers overlap);
// with it, each of `threads` threads runs `concurrency` tasks at a time, and tasks that find every thread busy wait
// in one FIFO queue of at most `queue` (past it: SK_ERR_TASK_QUEUE_FULL). Thread 0 publishes the vars.
const taskPool = z
  .object({
    threads: z
      .number()
      .int()
      .min(1)
      .max(256)
      .default(() => availableParallelism()),
    // Tasks waiting for a free thread (the ones running are not counted).
    queue: z.number().int().min(0).max(1_000_000).default(1000),
    // Tasks a thread runs at once: 1 for CPU-bound work; more for handlers that mostly await I/O.
    concurrency: z.number().int().min(1).max(10_000).default(1),
  })
  .strict();

const declaredSidekick = z
  .object({
    start: z.enum(['boot', 'lazy']).default('lazy'),
    every: duration.optional(),
    /** This sidekick's own module, instead of the app's shared entrypoint. */
    entrypoint: z.string().min(1).optional(),
    /** A built-in source instead of code: a file, Redis Sentinel, an HTTP/SSE URL or an etcd prefix. */
    source: sourceSchema.optional(),
    /** A task pool: `threads` threads of this sidekick's entrypoint share its tasks (src/sidekicks/pool.ts). */
    tasks: taskPool.optional(),
  })
  .strict()
  .refine((d) => !(d.source && d.entrypoint), {
    message: 'a sidekick has either a source or an entrypoint, not both',
    path: ['source'],
  })
  .refine((d) => !(d.source && d.tasks), {
    message: 'a built-in source takes no tasks: a task pool needs code (an entrypoint)',
    path: ['tasks'],
  });

export const sidekicksSchema = z
  .object({
    entrypoint: z.string().min(1).optional(),
    declare: z.record(name, declaredSidekick).default({}),
    maxLazy: z.number().int().min(0).max(10_000).default(16),
    stopGraceMs: duration.default(30_000),
    maxBootFailures: z.number().int().min(1).max(1000).default(6),
    maxVarsBytes: size.default(1024 * 1024),
    taskQueue: z.number().int().min(1).max(1_000_000).default(1000),
    // V8 heap cap of each sidekick thread (its old generation), so a leaking sidekick dies alone
    // (ERR_WORKER_OUT_OF_MEMORY → a crash, restarted with backoff) instead of taking the supervisor's memory.
    maxHeapMb: z.number().int().min(16).max(65_536).default(512),
  })
  .strict();

const app = z
  .object({
    name,
    listen,
    handler: z.string().min(1),
    workers: z
      .number()
      .int()
      .min(1)
      .max(1024)
      .default(() => availableParallelism()),
    drainTimeoutMs: duration.default(10_000),
    // A request whose handler has not started its response after this long is answered 503 (and counted), so a
    // handler that forgets a code path does not hold a client forever. Responses already started are left alone
    // (streams, long polls). 0 = off.
    handlerTimeoutMs: duration.default(60_000),
    // An HTTP worker whose event loop does not answer the supervisor's once-a-second ping for this long (a handler in
    // a busy loop) is killed and replaced, so the connections node:cluster would keep handing it go elsewhere. 0 = off.
    unresponsiveMs: duration.default(10_000),
    recycle: z
      .object({
        // Replace a worker gracefully (a new one listens first, the old one drains) once its RSS passes this: a
        // leaking handler is recycled before V8 kills it mid-request. 0 = off.
        maxRssBytes: size.default(1024 * 1024 * 1024),
        // Replace each worker after this long. 0 = off.
        maxUptimeMs: duration.default(0),
      })
      .strict()
      .prefault({}),
    sidekicks: sidekicksSchema.prefault({}),
  })
  .strict();

const exporterFile = z.object({ type: z.literal('file'), dir: z.string().min(1).default('./var/out') }).strict();
const exporterHttp = z
  .object({
    type: z.literal('http'),
    url: z.url({ protocol: /^https?$/ }),
    timeoutMs: duration.default(5000),
    gzip: z.boolean().default(true),
    headers: z.record(z.string(), z.string()).default({}),
  })
  .strict();

// OTLP/HTTP to an OpenTelemetry Collector (or anything that speaks it): docs/agent.md "Send to an OpenTelemetry
// Collector". Records become LogRecords; request records also SERVER spans.
const httpUrl = z.url({ protocol: /^https?$/ });
const exporterOtlp = z
  .object({
    type: z.literal('otlp'),
    // The base URL (http://collector:4318): logs go to <endpoint>/v1/logs, spans to <endpoint>/v1/traces.
    endpoint: httpUrl.optional(),
    // Per-signal URLs, used as they are (as OTEL_EXPORTER_OTLP_{LOGS,TRACES}_ENDPOINT are).
    logsEndpoint: httpUrl.optional(),
    tracesEndpoint: httpUrl.optional(),
    protocol: z.enum(['http/protobuf', 'http/json']).default('http/protobuf'),
    compression: z.enum(['gzip', 'none']).default('gzip'),
    headers: z.record(z.string(), z.string()).default({}),
    // Header name → environment variable holding its value (API keys stay out of the config file); a variable that
    // is not set is a config error.
    headersFromEnv: z.record(z.string(), z.string().min(1)).default({}),
    timeoutMs: duration.default(10_000),
    // Resource attributes of every export; service.name and host.name get defaults (docs/agent.md), these win.
    resource: z.record(z.string().min(1), z.string()).default({}),
    // What a request record (a string `method` and a numeric `duration_ms`) becomes: a LogRecord, a SERVER span, or both.
    requestSignal: z.enum(['logs', 'traces', 'both']).default('both'),
    limits: z
      .object({
        // String values longer than this many characters are cut (counted).
        maxValueLength: z.number().int().min(16).max(1_048_576).default(4096),
        // Objects and arrays nested deeper than this are sent as their JSON text (counted). At most 30: each level is
        // three protobuf messages deep, and protobuf readers refuse past 100 (protoc's and protobufjs's default).
        maxDepth: z.number().int().min(1).max(30).default(8),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((e, ctx) => {
    if (!e.endpoint && !e.logsEndpoint)
      ctx.addIssue({ code: 'custom', path: ['endpoint'], message: 'required (or logsEndpoint and tracesEndpoint)' });
    if (!e.endpoint && !e.tracesEndpoint && e.requestSignal !== 'logs')
      ctx.addIssue({
        code: 'custom',
        path: ['tracesEndpoint'],
        message: "required without endpoint, unless requestSignal is 'logs'",
      });
  });

export const agentSchema = z
  .object({
    socket: z.string().min(1).optional(),
    socketMode: z.number().int().min(0).max(0o777).default(0o660),
    socketGroup: z.union([z.string().min(1), z.number().int().min(0)]).optional(),
    maxRecordBytes: size.default(1024 * 1024),
    batch: z
      .object({
        maxRecords: z.number().int().min(1).max(1_000_000).default(100),
        maxDelayMs: duration.default(5000),
        // POSTs (or files) in flight at once: a spool batch of up to maxRecords × maxInFlight records goes out as
        // parts of ≤ maxRecords, concurrently (1 = strictly one batch at a time, strict arrival order).
        maxInFlight: z.number().int().min(1).max(64).default(4),
      })
      .strict()
      .prefault({}),
    memory: z
      .object({ maxBytes: size.default(64 * 1024 * 1024) })
      .strict()
      .prefault({}),
    spool: z
      .object({
        dir: z.string().min(1).default('./var/spool'),
        maxBytes: size.default(1024 * 1024 * 1024),
        syncIntervalMs: duration.default(100),
        segmentBytes: size.default(8 * 1024 * 1024),
        replayBatchesPerSecond: z.number().min(0).default(0),
      })
      .strict()
      .prefault({}),
    // Read coalescing: while records trickle in, connections are read at most once per this long (0 = off), so a busy
    // host's one-record writes reach the agent many per read (less CPU on both sides, at the cost of at most this much
    // latency; the agent worker shortens the window when a connection's unread bytes grow: receivers/unix-socket.ts).
    ingest: z
      .object({ coalesceMs: duration.default(20) })
      .strict()
      .prefault({}),
    // What clients are told about profiling (state line on every connection): off by an operator, or sampled.
    profiling: z
      .object({
        enabled: z.boolean().default(true),
        sampleRate: z.number().min(0).max(1).default(1),
      })
      .strict()
      .prefault({}),
    // Client spill files (records written to disk while the agent was unreachable), replayed into the pipeline.
    spill: z
      .object({
        dir: z.string().min(1).optional(),
        scanIntervalMs: duration.default(1000),
      })
      .strict()
      .prefault({}),
    exporter: z.discriminatedUnion('type', [exporterFile, exporterHttp, exporterOtlp]).prefault({ type: 'file' }),
    breaker: z
      .object({
        failures: z.number().int().min(1).max(1000).default(5),
        halfOpenAfterMs: duration.default(60_000),
      })
      .strict()
      .prefault({}),
    retry: z
      .object({
        initialDelayMs: duration.default(500),
        maxDelayMs: duration.default(30_000),
      })
      .strict()
      .prefault({}),
    recycle: z
      .object({
        maxRssBytes: size.default(256 * 1024 * 1024),
        maxRecords: z.number().int().min(0).default(0),
        maxUptimeMs: duration.default(86_400_000),
      })
      .strict()
      .prefault({}),
    stopTimeoutMs: duration.default(25_000),
    metrics: z
      .object({ listen: z.string().min(1).optional() })
      .strict()
      .prefault({}),
  })
  .strict();

export const configSchema = z
  .object({
    apps: z.array(app).default([]),
    agent: agentSchema.optional(),
    admin: z
      .object({
        socket: z.string().min(1).optional(),
        // Vars can hold secrets: `sidekick vars` and the status page show keys, sizes and a short hash unless this
        // is true.
        showValues: z.boolean().default(false),
        // The live status page (off unless set): an address like '127.0.0.1:9470' (a bare port binds loopback), and an
        // optional bearer token the page and its event stream require.
        http: z
          .object({ listen, token: z.string().min(16).optional() })
          .strict()
          .optional(),
      })
      .strict()
      .prefault({}),
    // Prometheus text at /metrics for the whole instance (apps, sidekicks, HTTP workers, and the agent when it runs
    // inside `sidekick serve`). Off unless set; keep it on loopback.
    metrics: z.object({ listen: listen.optional() }).strict().prefault({}),
    dev: z
      .object({ watch: z.boolean().default(false) })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    const seen = new Map<string, number>();
    cfg.apps.forEach((a, i) => {
      const first = seen.get(a.name);
      if (first !== undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['apps', i, 'name'],
          message: `duplicate app name (also apps[${first}])`,
        });
      seen.set(a.name, i);
      const needsShared = Object.values(a.sidekicks.declare).some((d) => !d.entrypoint && !d.source);
      if (needsShared && !a.sidekicks.entrypoint)
        ctx.addIssue({
          code: 'custom',
          path: ['apps', i, 'sidekicks', 'entrypoint'],
          message: 'required when sidekicks are declared',
        });
    });
  });

/** A `declare` entry as a user writes it (durations as strings, defaults not applied). */
export type DeclaredSidekickInput = z.input<typeof declaredSidekick>;
export type TaskPoolConfig = z.output<typeof taskPool>;
export type Config = z.output<typeof configSchema>;
export type AppConfig = Config['apps'][number];
export type SidekicksConfig = AppConfig['sidekicks'];
export type AgentConfig = z.output<typeof agentSchema> & {
  socket: string;
  spill: z.output<typeof agentSchema>['spill'] & { dir: string };
};
export type ExporterConfig = AgentConfig['exporter'];
