// Agent counters and their Prometheus form.
//
// Counters are plain numbers inside the pipeline (cheap on the ingest hot path); `snapshot()` copies them into a
// JSON-safe object that crosses the worker → supervisor IPC boundary, and `createAgentRegistry` turns snapshots into a
// prom-client registry. The supervisor adds the totals of retired workers to the live worker's, so the counters stay
// monotonic across recycles and crash restarts of the worker (they reset only when the whole agent restarts).
import { Counter, Gauge, Registry } from 'prom-client';
import { listenHttp, type HttpListener } from '../common/http-listen.js';
import type { ListenAddress } from '../config/schema.js';
import { answerHealth, type HealthProbes } from '../common/health.js';

export const INVALID_REASONS = ['too_large', 'not_json', 'not_object', 'bad_control', 'stalled'] as const;
export type InvalidReason = (typeof INVALID_REASONS)[number];
export const DROP_REASONS = ['spool_full', 'spool_corrupt', 'disk_full', 'spool_removed'] as const;
export type DropReason = (typeof DROP_REASONS)[number];
export const RETRY_REASONS = ['network', 'timeout', 'http_408', 'http_429', 'http_5xx', 'http_other'] as const;
export type RetryReason = (typeof RETRY_REASONS)[number];

/** Why records were dead-lettered: refused for good (4xx, a single record still 413), an OTLP partial success, lines
 * that are not a JSON object (cannot become an OTLP LogRecord). */
export const DEAD_LETTER_REASONS = ['rejected', 'otlp_partial', 'unmappable'] as const;
export type DeadLetterReason = (typeof DEAD_LETTER_REASONS)[number];

/** Monotonic counts (records unless the name says batches). See docs/agent.md "Counters". */
export interface AgentCounterValues {
  received: number;
  invalid: Record<InvalidReason, number>;
  spooled: number;
  batched: number;
  batchedBatches: number;
  exported: number;
  exportedBatches: number;
  retried: Record<RetryReason, number>;
  deadLettered: number;
  deadLetteredBatches: number;
  /** deadLettered by reason (they add up to it). */
  deadLetteredBy: Record<DeadLetterReason, number>;
  /** The otlp exporter: spans delivered, values cut or flattened by its limits, refusals (partial success). */
  otlp: { spans: number; truncated: number; flattened: number; rejectedLogs: number; rejectedSpans: number };
  dropped: Record<DropReason, number>;
  spoolCorruptFrames: number;
  connections: number;
  /** Client connections closed at once because the worker held as many as its file-descriptor limit allows. */
  rejectedConnections: number;
  /** Records clients reported dropping before they reached the agent (control lines). */
  clientDropped: number;
  /** Unterminated last lines discarded at end of a connection (the client counted each in clientDropped). */
  truncated: number;
  /** Records read from client spill files (written while the agent was unreachable) into the spool. */
  spillReplayed: number;
  /**
   * Log lines of the agent's worker processes (and of its supervisor when it runs alone), and those of them dropped
   * because stderr was not drained (src/log/stderr-writer.ts). Set by the worker process, not the pipeline.
   */
  logLines: number;
  logDropped: number;
}

/** Point-in-time values (gauges). */
export interface AgentGaugeValues {
  breakerState: 0 | 1 | 2;
  spoolBytes: number;
  spoolRecords: number;
  spoolSegments: number;
  openConnections: number;
  spillPendingBytes: number;
  spillOldestSeconds: number;
  memoryBufferedBytes: number;
  rssBytes: number;
}

export interface AgentMetricsSnapshot {
  counters: AgentCounterValues;
  gauges: AgentGaugeValues;
}

export function zeroCounters(): AgentCounterValues {
  return {
    received: 0,
    invalid: { too_large: 0, not_json: 0, not_object: 0, bad_control: 0, stalled: 0 },
    spooled: 0,
    batched: 0,
    batchedBatches: 0,
    exported: 0,
    exportedBatches: 0,
    retried: { network: 0, timeout: 0, http_408: 0, http_429: 0, http_5xx: 0, http_other: 0 },
    deadLettered: 0,
    deadLetteredBatches: 0,
    deadLetteredBy: { rejected: 0, otlp_partial: 0, unmappable: 0 },
    otlp: { spans: 0, truncated: 0, flattened: 0, rejectedLogs: 0, rejectedSpans: 0 },
    dropped: { spool_full: 0, spool_corrupt: 0, disk_full: 0, spool_removed: 0 },
    spoolCorruptFrames: 0,
    connections: 0,
    rejectedConnections: 0,
    clientDropped: 0,
    truncated: 0,
    spillReplayed: 0,
    logLines: 0,
    logDropped: 0,
  };
}

export function zeroGauges(): AgentGaugeValues {
  return {
    breakerState: 0,
    spoolBytes: 0,
    spoolRecords: 0,
    spoolSegments: 0,
    openConnections: 0,
    spillPendingBytes: 0,
    spillOldestSeconds: 0,
    memoryBufferedBytes: 0,
    rssBytes: 0,
  };
}

/** a + b, field by field (used to carry a retired worker's totals into the next one). */
export function addCounters(a: AgentCounterValues, b: AgentCounterValues): AgentCounterValues {
  const out = zeroCounters();
  for (const key of Object.keys(out) as (keyof AgentCounterValues)[]) {
    const x = a[key];
    const y = b[key];
    if (typeof x === 'number' && typeof y === 'number') (out[key] as number) = x + y;
    else {
      const target = out[key] as Record<string, number>;
      const xa = x as Record<string, number>;
      const ya = y as Record<string, number>;
      for (const k of Object.keys(target)) target[k] = (xa[k] ?? 0) + (ya[k] ?? 0);
    }
  }
  return out;
}

const PREFIX = 'sidekick_agent_';

/**
 * A prom-client registry whose values come from `snapshot()` at scrape time. Counters never go backwards: a snapshot
 * lower than the last one seen (should not happen; the supervisor keeps totals) is ignored rather than exported.
 */
export function createAgentRegistry(snapshot: () => Promise<AgentMetricsSnapshot> | AgentMetricsSnapshot): Registry {
  const registry = new Registry();
  let pending: Promise<AgentMetricsSnapshot> | undefined;
  // All metrics of one scrape read the same snapshot: the first collect() fetches it, the others share it.
  const current = (): Promise<AgentMetricsSnapshot> => {
    pending ??= Promise.resolve(snapshot()).finally(() => setImmediate(() => (pending = undefined)));
    return pending;
  };
  const counter = (
    name: string,
    help: string,
    read: (c: AgentCounterValues) => number | Record<string, number>,
    label?: string,
  ): void => {
    const seen = new Map<string, number>();
    new Counter({
      name: PREFIX + name,
      help,
      labelNames: label ? [label] : [],
      registers: [registry],
      async collect() {
        const values = read((await current()).counters);
        const entries: [string, number][] = typeof values === 'number' ? [['', values]] : Object.entries(values);
        for (const [key, value] of entries) {
          const delta = value - (seen.get(key) ?? 0);
          if (delta <= 0) {
            if (!seen.has(key)) this.inc(label ? { [label]: key } : {}, 0);
            seen.set(key, Math.max(seen.get(key) ?? 0, value));
            continue;
          }
          seen.set(key, value);
          if (label) this.inc({ [label]: key }, delta);
          else this.inc(delta);
        }
      },
    });
  };
  const gauge = (name: string, help: string, read: (g: AgentGaugeValues) => number): void => {
    new Gauge({
      name: PREFIX + name,
      help,
      registers: [registry],
      async collect() {
        this.set(read((await current()).gauges));
      },
    });
  };
  counter(
    'received_records_total',
    'Lines read from clients (valid and invalid; blank lines are ignored).',
    (c) => c.received,
  );
  counter('invalid_records_total', 'Lines rejected at ingest, by reason.', (c) => c.invalid, 'reason');
  counter('spooled_records_total', 'Valid records appended to the spool.', (c) => c.spooled);
  counter(
    'batched_records_total',
    'Records cut into batches from the spool (each batch counted once).',
    (c) => c.batched,
  );
  counter('batches_total', 'Batches cut from the spool (each counted once).', (c) => c.batchedBatches);
  counter('exported_records_total', 'Records delivered to the exporter (2xx or written).', (c) => c.exported);
  counter('exported_batches_total', 'Batches (or 413 halves) delivered.', (c) => c.exportedBatches);
  counter(
    'retried_batches_total',
    'Export attempts that failed and will be retried, by reason.',
    (c) => c.retried,
    'reason',
  );
  counter(
    'dead_lettered_records_total',
    'Records rejected for good and kept on disk, by reason (rejected: a 4xx; otlp_partial: an OTLP partial success; unmappable: not a JSON object).',
    (c) => c.deadLetteredBy,
    'reason',
  );
  counter(
    'dead_lettered_batches_total',
    'Batches (or parts) written to the dead-letter directory.',
    (c) => c.deadLetteredBatches,
  );
  counter('otlp_spans_total', 'Request spans the otlp exporter delivered.', (c) => c.otlp.spans);
  counter(
    'otlp_limited_values_total',
    'Attribute values the otlp exporter cut to maxValueLength (truncated) or sent as JSON text past maxDepth (flattened).',
    (c) => ({ truncated: c.otlp.truncated, flattened: c.otlp.flattened }),
    'action',
  );
  counter(
    'otlp_rejected_total',
    'Log records and spans the collector refused (partial success, or a refused span whose record rode on its log record).',
    (c) => ({ logs: c.otlp.rejectedLogs, traces: c.otlp.rejectedSpans }),
    'signal',
  );
  counter('dropped_records_total', 'Records dropped by a documented cap, by reason.', (c) => c.dropped, 'reason');
  counter(
    'spool_corrupt_frames_total',
    'Spool frames skipped because of a bad checksum or torn tail.',
    (c) => c.spoolCorruptFrames,
  );
  counter('connections_total', 'Client connections accepted.', (c) => c.connections);
  counter(
    'rejected_connections_total',
    'Client connections closed at once: the worker held as many as its file-descriptor limit allows.',
    (c) => c.rejectedConnections,
  );
  counter(
    'client_dropped_records_total',
    'Records clients reported dropping before they reached the agent (agent unreachable, buffer full, too large).',
    (c) => c.clientDropped,
  );
  counter(
    'spill_replayed_records_total',
    'Records read from client spill files into the spool (clients wrote them to disk while the agent was unreachable).',
    (c) => c.spillReplayed,
  );
  counter(
    'truncated_lines_total',
    'Unterminated last lines discarded at the end of a connection (already counted by the client as dropped).',
    (c) => c.truncated,
  );
  counter(
    'log_dropped_lines_total',
    "Log lines the agent's processes dropped because stderr was not drained (inside serve: its worker processes).",
    (c) => c.logDropped,
  );
  gauge('breaker_state', 'Exporter circuit breaker: 0 closed, 1 open, 2 half-open.', (g) => g.breakerState);
  gauge('spool_bytes', 'Bytes pending in the spool.', (g) => g.spoolBytes);
  gauge('spool_records', 'Records pending in the spool (not yet delivered or dead-lettered).', (g) => g.spoolRecords);
  gauge('spool_segments', 'Spool segment files on disk.', (g) => g.spoolSegments);
  gauge('open_connections', 'Client connections open now.', (g) => g.openConnections);
  gauge(
    'spill_pending_bytes',
    'Bytes clients spilled to disk that the agent has not replayed yet.',
    (g) => g.spillPendingBytes,
  );
  gauge(
    'spill_oldest_seconds',
    'Age of the oldest spilled data not replayed yet (0 when none).',
    (g) => g.spillOldestSeconds,
  );
  gauge('memory_buffered_bytes', 'Bytes held in memory.maxBytes-bounded buffers.', (g) => g.memoryBufferedBytes);
  gauge('worker_rss_bytes', 'Resident set size of the agent worker process.', (g) => g.rssBytes);
  return registry;
}

/**
 * A tiny HTTP server: GET /metrics → Prometheus text, and the agent's /healthz and /readyz (`health`). Loopback (or a
 * Unix socket) only, by configuration.
 */
export class MetricsServer {
  private listener: HttpListener | undefined;

  constructor(
    private readonly address: ListenAddress,
    private readonly registry: Registry,
    private readonly health?: HealthProbes,
  ) {}

  async start(): Promise<void> {
    this.listener = await listenHttp(this.address, (req, res) => {
      if (answerHealth(req, res, this.health)) return;
      if ((req.url ?? '/').split('?')[0] !== '/metrics') {
        res.writeHead(404).end('not found\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (err: unknown) => res.writeHead(500).end(`${String(err)}\n`),
      );
    });
  }

  /** The bound port (useful when the config said port 0). */
  port(): number | undefined {
    return this.listener?.port();
  }

  async stop(): Promise<void> {
    const listener = this.listener;
    this.listener = undefined;
    await listener?.close();
  }
}
