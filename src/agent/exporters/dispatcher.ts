// Delivery: one batch at a time from the spool, through the breaker, to the exporter; then ack, or release and retry.
//
//   delivered            → counted exported; when every part of the batch is settled, ack (the spool frees it)
//   413                  → split in halves (ids <id>.0 / <id>.1) and send each; one record still 413 → dead-letter
//   other 4xx            → dead-letter (kept on disk + sidecar, counted, SK_ERR_DEAD_LETTER)
//   retryable / open     → release; wait (decorrelated-jitter exponential backoff from cockatiel, at least the
//                          Retry-After central asked for, capped; at least until the breaker half-opens); the spool
//                          hands out the same batch again. Retries go on for as long as it takes: the spool cap is
//                          the only thing that drops data (OTel's max_elapsed_time lost users hours of data: PEERS).
// One spool batch is in flight at a time (the spool's rule); it goes out as parts of ≤ batch.maxRecords, up to
// batch.maxInFlight of them concurrently (ids <id>~k), so a high-latency central still gets records at a useful rate.
// Progress inside a batch (parts sent, 413 halves) is kept in memory across retries, so parts already delivered are
// not sent again (after a crash they are, with the same ids: central dedupes).
import { ExponentialBackoff, decorrelatedJitterGenerator, type IBackoff } from 'cockatiel';
import type { Logger } from 'pino';
import { settleWithin, sleep } from '../../common/async.js';
import { RateLimitedLog } from '../../log/logger.js';
import { BreakerOpenError, type ExporterBreaker } from '../breaker/breaker.js';
import type { AgentCounterValues } from '../metrics.js';
import type { Batcher, SpoolBatchLike } from '../processors/batcher.js';
import type { MemoryBudget } from '../worker/memory-budget.js';
import type { DeadLetterStore } from './dead-letter.js';
import {
  RetryableExportError,
  chunkParts,
  splitPart,
  type ExportOutcome,
  type ExportPart,
  type Exporter,
  type PartialRejection,
} from './types.js';
import { exporterTarget } from './target.js';

/** After the stop deadline aborted the export in flight, how long the loop may take to end. */
const STOP_GRACE_MS = 500;

export interface RetryPolicy {
  initialDelayMs: number;
  maxDelayMs: number;
  /** Upper bound on a wait central asked for with Retry-After. */
  retryAfterCapMs: number;
}

/** How batches go out: parts of ≤ maxRecords, at most maxInFlight at once, optionally paced. */
export interface SendShape {
  maxRecords: number;
  maxInFlight: number;
  /** spool.replayBatchesPerSecond: cap on part starts per second (0 = none). */
  partsPerSecond: number;
}

export interface DispatcherDeps {
  spool: { ack(id: string): Promise<void>; release(id: string): void };
  batcher: Batcher;
  breaker: ExporterBreaker;
  exporter: () => Exporter;
  deadLetters: DeadLetterStore;
  counters: AgentCounterValues;
  budget: MemoryBudget;
  log: Logger;
  retry: RetryPolicy;
  shape: SendShape;
}

type Attempt = { kind: 'acked' } | { kind: 'retry'; delayMs: number } | { kind: 'aborted' };

export class Dispatcher {
  private readonly deps: DispatcherDeps;
  private retry: RetryPolicy;
  private shape: SendShape;
  private nextPartAt = 0;
  private backoffFactory: ExponentialBackoff<unknown>;
  private backoff: IBackoff<unknown> | undefined;
  private progress: { batchId: string; parts: ExportPart[] } | undefined;
  private readonly loopAbort = new AbortController();
  private readonly exportAbort = new AbortController();
  private finalDeadline: number | undefined;
  private running: Promise<void> | undefined;
  private readonly failLog: RateLimitedLog;
  private inflightBytes = 0;
  /** Last failure, for status. */
  lastError: { message: string; at: number } | undefined;
  nextAttemptAt = 0;

  constructor(deps: DispatcherDeps) {
    this.deps = deps;
    this.retry = deps.retry;
    this.shape = deps.shape;
    this.backoffFactory = this.makeBackoff();
    this.failLog = new RateLimitedLog(deps.log, 5, 10_000);
  }

  private makeBackoff(): ExponentialBackoff<unknown> {
    return new ExponentialBackoff({
      initialDelay: this.retry.initialDelayMs,
      maxDelay: this.retry.maxDelayMs,
      generator: decorrelatedJitterGenerator,
    }) as ExponentialBackoff<unknown>;
  }

  setRetryPolicy(retry: RetryPolicy): void {
    this.retry = retry;
    this.backoffFactory = this.makeBackoff();
    this.backoff = undefined;
  }

  setShape(shape: SendShape): void {
    this.shape = shape;
  }

  start(): void {
    this.running ??= this.loop();
  }

  /**
   * Stops: from now on batches are cut at once and each gets one last attempt (none while the breaker is open);
   * at `deadline` the in-flight export is aborted and its batch released. Resolves when the loop has ended.
   * `final = false` (a hand-over to the next worker): only the in-flight attempt is finished, no new batch starts.
   */
  async stop(deadline: number, final = true): Promise<void> {
    this.finalDeadline = final ? deadline : 0;
    this.loopAbort.abort();
    this.deps.batcher.wake();
    const ended = this.running ?? this.finalRound();
    if (
      (await settleWithin(
        ended.then(() => true),
        deadline - Date.now(),
      )) === undefined
    ) {
      this.exportAbort.abort(); // the deadline: abort the export in flight (its batch is released)
      // Bounded too: a loop waiting on the spool (a read or ledger write the filesystem does not answer) never ends.
      if (
        (await settleWithin(
          ended.then(() => true),
          STOP_GRACE_MS,
        )) === undefined
      )
        this.deps.log.error(
          { code: 'SK_ERR_SPOOL_STALLED' },
          'SK_ERR_SPOOL_STALLED: the delivery loop is still waiting on the spool at the stop deadline; left behind',
        );
    }
  }

  private async loop(): Promise<void> {
    while (!this.loopAbort.signal.aborted) {
      let batch: SpoolBatchLike | undefined;
      try {
        batch = await this.deps.batcher.next(this.loopAbort.signal, false);
        if (!batch) break;
        const r = await this.deliver(batch);
        if (r.kind === 'retry') {
          this.nextAttemptAt = Date.now() + r.delayMs;
          await sleep(r.delayMs, this.loopAbort.signal);
        }
      } catch (err) {
        // A bug or a disk error (ack, dead-letter write): never a crash loop; log and look again in a second.
        this.recover(batch);
        this.deps.log.error({ err }, 'delivery loop error; retrying in 1 s');
        await sleep(1000, this.loopAbort.signal);
      }
    }
    await this.finalRound();
  }

  /** The stop path: every due batch gets one attempt until the spool is empty, a failure, or the deadline. */
  private async finalRound(): Promise<void> {
    const deadline = this.finalDeadline ?? 0;
    const signal = this.exportAbort.signal;
    while (!signal.aborted && Date.now() < deadline) {
      if (this.deps.breaker.retryInMs() > 0) {
        this.deps.log.info('breaker open at stop: the backlog stays in the spool for the next start');
        return;
      }
      let batch: SpoolBatchLike | undefined;
      try {
        batch = await this.deps.batcher.next(signal, true);
      } catch (err) {
        this.deps.log.error({ err }, 'could not read the spool at stop');
        return;
      }
      if (!batch) return;
      const b = batch;
      const r = await this.deliver(b).catch((err: unknown) => {
        this.recover(b);
        this.deps.log.error({ err }, 'delivery error at stop');
        return { kind: 'aborted' } as const;
      });
      if (r.kind !== 'acked') return;
    }
  }

  /** After an unexpected error mid-batch: hand the batch back so the spool can give it out again. */
  private recover(batch: SpoolBatchLike | undefined): void {
    this.setInflight(0);
    if (!batch) return;
    try {
      this.deps.spool.release(batch.id);
    } catch {
      // already released or acked
    }
  }

  private setInflight(bytes: number): void {
    this.deps.budget.add('inflight', bytes - this.inflightBytes);
    this.inflightBytes = bytes;
  }

  /** Waits so that part starts are at least 1/replayBatchesPerSecond apart (0 = no cap). */
  private async pace(signal: AbortSignal): Promise<void> {
    if (this.shape.partsPerSecond <= 0) return;
    const gap = 1000 / this.shape.partsPerSecond;
    const at = Math.max(Date.now(), this.nextPartAt);
    this.nextPartAt = at + gap;
    await sleep(at - Date.now(), signal);
  }

  private async sendPart(
    exporter: Exporter,
    part: ExportPart,
    signal: AbortSignal,
  ): Promise<{ ok: true; outcome: ExportOutcome } | { ok: false; err: unknown }> {
    try {
      await this.pace(signal);
      if (signal.aborted) return { ok: false, err: signal.reason };
      return { ok: true, outcome: await this.deps.breaker.execute(() => exporter.export(part, signal)) };
    } catch (err) {
      return { ok: false, err };
    }
  }

  private async deliver(batch: SpoolBatchLike): Promise<Attempt> {
    const { spool } = this.deps;
    if (this.progress?.batchId !== batch.id)
      this.progress = { batchId: batch.id, parts: chunkParts(batch, this.shape.maxRecords) };
    const progress = this.progress;
    const exporter = this.deps.exporter();
    const signal = this.exportAbort.signal;
    let overhead = 0;
    for (const p of progress.parts.slice(0, this.shape.maxInFlight)) overhead += exporter.overheadBytes(p);
    this.setInflight(batch.bytes + overhead);
    // A sliding window: up to maxInFlight parts in flight, the next one starts as soon as one settles. After a
    // failure no new part starts; the ones in flight finish, then the batch goes back to the spool.
    const queue = progress.parts.slice();
    const order = new Map(queue.map((p, i) => [p, i]));
    const failed: ExportPart[] = [];
    let failure: unknown;
    let active = 0;
    await new Promise<void>((settled) => {
      const launch = (): void => {
        while (failure === undefined && active < this.shape.maxInFlight && queue.length > 0) {
          const part = queue.shift()!;
          active++;
          void this.sendPart(exporter, part, signal)
            .then((r) => this.settlePart(exporter, part, r, queue, signal))
            .catch((err: unknown) => ({ failed: err }))
            .then((res) => {
              if (res && 'failed' in res) {
                failed.push(part);
                failure ??= res.failed;
              }
              active--;
              if (active === 0 && (failure !== undefined || queue.length === 0)) settled();
              else launch();
            });
        }
        if (active === 0) settled();
      };
      launch();
    });
    failed.sort((a, b) => (order.get(a) ?? Infinity) - (order.get(b) ?? Infinity));
    progress.parts = [...failed, ...queue];
    if (failure !== undefined) {
      // The batch goes back to the spool (same id and payload next time); the parts still to send stay in memory,
      // so delivered ones are not sent again by this process.
      spool.release(batch.id);
      this.setInflight(0);
      if (failure instanceof BreakerOpenError) return { kind: 'retry', delayMs: failure.retryInMs };
      if (signal.aborted) return { kind: 'aborted' };
      const retryable = failure instanceof RetryableExportError ? failure : undefined;
      const delayMs = this.nextDelay(retryable?.retryAfterMs);
      const message = failure instanceof Error ? failure.message : String(failure);
      this.lastError = { message, at: Date.now() };
      this.failLog.warn(
        {
          code: 'SK_ERR_EXPORT_FAILED',
          batchId: batch.id,
          reason: retryable?.reason ?? 'network',
          partsLeft: progress.parts.length,
          retryInMs: delayMs,
        },
        `SK_ERR_EXPORT_FAILED: ${message}; retrying in ${delayMs} ms`,
      );
      if (!retryable) this.deps.log.error({ err: failure }, 'unexpected exporter error (treated as retryable)');
      return { kind: 'retry', delayMs };
    }
    await spool.ack(batch.id);
    this.progress = undefined;
    this.backoff = undefined;
    this.lastError = undefined;
    this.setInflight(0);
    return { kind: 'acked' };
  }

  /** Applies one part's outcome; returns { failed } when it must be retried. 413 halves go to the front of `queue`. */
  private async settlePart(
    exporter: Exporter,
    part: ExportPart,
    r: { ok: true; outcome: ExportOutcome } | { ok: false; err: unknown },
    queue: ExportPart[],
    signal: AbortSignal,
  ): Promise<{ failed: unknown } | undefined> {
    const { counters } = this.deps;
    if (!r.ok) {
      if (r.err instanceof RetryableExportError) counters.retried[r.err.reason]++;
      else if (!(r.err instanceof BreakerOpenError) && !signal.aborted) counters.retried.network++;
      return { failed: r.err };
    }
    const outcome = r.outcome;
    if (outcome.kind === 'delivered') {
      for (const rej of outcome.rejections ?? []) await this.deadLetter(exporter, part, rej);
      const lost = outcome.rejections?.reduce((n, x) => n + x.records, 0) ?? 0;
      counters.exported += part.records - lost;
      counters.exportedBatches++;
      if (outcome.stats) {
        const o = counters.otlp;
        o.spans += outcome.stats.spans;
        o.truncated += outcome.stats.truncated;
        o.flattened += outcome.stats.flattened;
        o.rejectedLogs += outcome.stats.rejectedLogs;
        o.rejectedSpans += outcome.stats.rejectedSpans;
      }
    } else if (outcome.kind === 'too_large' && part.records > 1) {
      queue.unshift(...splitPart(part)!);
      this.deps.log.info(
        { batchId: part.id, records: part.records, bytes: part.payload.length },
        'central answered 413: splitting the batch in halves',
      );
    } else {
      await this.deadLetter(exporter, part, {
        records: part.records,
        reason: 'rejected',
        status: outcome.status,
        body: outcome.body,
        payload: part.payload,
        payloadRecords: part.records,
      });
    }
    return undefined;
  }

  /** Keeps records refused for good in the dead-letter directory (with the reason), counts and logs them. */
  private async deadLetter(exporter: Exporter, part: ExportPart, rej: PartialRejection): Promise<void> {
    const { counters } = this.deps;
    const target = exporterTarget(exporter.config);
    const kept: ExportPart = { ...part, payload: rej.payload, records: rej.payloadRecords };
    const file = await this.deps.deadLetters.write(kept, {
      status: rej.status,
      body: rej.body,
      target,
      reason: rej.reason,
      rejected: rej.records,
    });
    counters.deadLettered += rej.records;
    counters.deadLetteredBy[rej.reason] += rej.records;
    counters.deadLetteredBatches++;
    const why =
      rej.reason === 'unmappable'
        ? `${rej.records} record(s) are not JSON objects (cannot be mapped)`
        : rej.reason === 'otlp_partial'
          ? `the collector rejected ${rej.records} record(s) (partial success: ${rej.body})`
          : `central rejected ${rej.records} record(s) with ${rej.status}`;
    this.deps.log.error(
      {
        code: 'SK_ERR_DEAD_LETTER',
        batchId: part.id,
        records: rej.records,
        status: rej.status,
        reason: rej.reason,
        file,
      },
      `SK_ERR_DEAD_LETTER: ${why}; kept in ${file}`,
    );
  }

  private nextDelay(retryAfterMs: number | undefined): number {
    this.backoff = (this.backoff ?? this.backoffFactory).next(undefined);
    let delay = this.backoff.duration;
    if (retryAfterMs !== undefined) delay = Math.max(delay, Math.min(retryAfterMs, this.retry.retryAfterCapMs));
    return Math.max(delay, this.deps.breaker.retryInMs());
  }
}
