// The agent's workers on its one socket: the first start, crash restarts with backoff, recycling (a strict hand-over
// from the old worker to a pre-forked replacement, see supervisor.ts), moving to a new socket, and the stop.
import type { Logger } from 'pino';
import { settleWithin } from '../../common/async.js';
import { RestartBackoff } from '../../common/backoff.js';
import type { AgentConfig } from '../../config/schema.js';
import { ERROR_CODES, SidekickError, type ErrorCode } from '../../errors.js';
import { CounterTotals, RateWindow, replayProgress, type AgentStatus } from './agent-status.js';
import { WorkerHandle, type WorkerExit, type WorkerReport } from './worker-handle.js';
import { HeldConnections, closeListener, publishListener, type Listener } from './listener.js';
import type { AgentMetricsSnapshot } from '../metrics.js';
import { SPOOL_LOCK_WAIT_MS, type PipelineStateEvent } from '../worker/pipeline.js';
import type { FromWorker } from '../worker-protocol.js';

const START_TIMEOUT_MS = 30_000 + SPOOL_LOCK_WAIT_MS;
const STANDBY_TIMEOUT_MS = 15_000;
/** RSS recycling waits until a worker has run this long, so a limit set below the baseline cannot loop. */
const MIN_RSS_RECYCLE_UPTIME_MS = 10_000;

/** How often a backlog replay logs its progress. */
const REPLAY_LOG_INTERVAL_MS = 10_000;

export interface WorkerPoolOptions {
  workerPath: string;
  log: Logger;
  /** The config a new worker gets, and the recycle limits and stop budget in force. */
  config(): AgentConfig;
  /** Something the host's state is made of changed (current worker, its readiness). */
  onChange(): void;
  /** A worker reported its pipeline state. */
  onPipelineState(state: PipelineStateEvent): void;
}

export class WorkerPool {
  private readonly opts: WorkerPoolOptions;
  private readonly log: Logger;
  private listenerRef: Listener;
  private currentRef: WorkerHandle | undefined;
  private readonly workers = new Set<WorkerHandle>();
  private readonly totals = new CounterTotals();
  /** Received/exported per second, sampled at each worker report (about once a second). */
  readonly rates = new RateWindow();
  private lastProgressLog = 0;
  private readonly held = new HeldConnections(() => this.opts.config().spool.dir);
  private readonly backoff = new RestartBackoff({ baseMs: 100, maxMs: 5000, stableAfterMs: 30_000 });
  private restartTimer: NodeJS.Timeout | undefined;
  private recycling: Promise<void> | undefined;
  private stopping = false;
  private generation = 0;
  recycles = 0;
  restarts = 0;
  lastRecycle: AgentStatus['lastRecycle'];
  lastCrash: AgentStatus['lastCrash'];

  constructor(listener: Listener, opts: WorkerPoolOptions) {
    this.listenerRef = listener;
    this.opts = opts;
    this.log = opts.log;
  }

  get listener(): Listener {
    return this.listenerRef;
  }

  get current(): WorkerHandle | undefined {
    return this.currentRef;
  }

  /** Starts the first worker and waits until it accepts; then publishes the socket file. Throws why it could not. */
  async start(): Promise<void> {
    const w = this.spawn(true, this.listenerRef, true);
    this.currentRef = w;
    const ok = await settleWithin(Promise.race([w.ready, w.exited.then(() => false)]), START_TIMEOUT_MS);
    if (!ok) {
      const exited = w.state === 'exited';
      const how = await w.kill(2000);
      const fatal = w.fatal;
      if (fatal?.code && fatal.code in ERROR_CODES)
        throw new SidekickError(fatal.code as ErrorCode, fatal.message.replace(/^SK_ERR_[A-Z_]+: /, ''));
      if (fatal) throw new Error(fatal.message);
      if (exited)
        throw new Error(`the agent worker exited during start (${how?.signal ?? `code ${how?.code ?? '?'}`})`);
      throw new SidekickError('SK_ERR_TIMEOUT', 'the agent worker did not become ready in time');
    }
    publishListener(this.listenerRef);
  }

  /** Every worker stops (drain, flush, last export within `budgetMs`) or is killed; waits for a recycle first. */
  async stop(budgetMs: number): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    if (this.recycling) await settleWithin(this.recycling, budgetMs);
    // The socket file goes first: from now on clients fail to connect (and count a drop) instead of queueing in a
    // backlog that nobody will accept; the worker accepts what is already queued before it closes the listener.
    this.listenerRef.file?.unlinkIfOurs();
    const live = [...this.workers].filter((w) => w.state !== 'exited');
    await Promise.all(
      live.map(async (w) => {
        w.expectedExit = true;
        if (w.state === 'ready' || w.state === 'starting') {
          w.send({ t: 'stop', timeoutMs: budgetMs });
          await w.exitWithin(budgetMs + 3000, this.log, 'agent worker did not stop in time; killing it');
        } else await w.kill();
      }),
    );
  }

  /** Closes the held connections and the socket (after stop(), or after a failed start). */
  close(): void {
    // After a failed start the first worker's exit went down the crash path and scheduled a restart: without this the
    // process never exited (a spool locked by another agent → a new worker every few seconds, no exit 1).
    this.stopping = true;
    clearTimeout(this.restartTimer);
    for (const w of this.workers) if (w.state !== 'exited') void w.kill();
    this.held.closeAll();
    closeListener(this.listenerRef);
  }

  /** Live settings for the running worker (no new worker needed). */
  reloadLive(config: AgentConfig): void {
    if (this.currentRef?.state === 'ready') this.currentRef.send({ t: 'reload', config });
  }

  /** Counters across every worker of this run (the current one asked afresh, waiting at most `ms`). */
  async snapshot(ms: number): Promise<{ metrics: AgentMetricsSnapshot; live: WorkerReport | undefined }> {
    const w = this.currentRef;
    const live = await w?.snapshot(ms);
    return { metrics: this.totals.sum(this.workers, w, live), live };
  }

  /** Feeds the rate window; while a large backlog is replayed, logs its progress every REPLAY_LOG_INTERVAL_MS. */
  private sampleRates(w: WorkerHandle): void {
    const now = Date.now();
    const { counters } = this.totals.sum(this.workers, w, undefined);
    this.rates.add(now, counters.received, counters.exported);
    const progress = replayProgress(w.last?.metrics.gauges.spoolRecords ?? 0, this.rates.rates().exportedPerSec);
    if (progress && now - this.lastProgressLog >= REPLAY_LOG_INTERVAL_MS) {
      this.lastProgressLog = now;
      this.log.info(progress, 'replaying the spool backlog to central');
    }
  }

  private spawn(start: boolean, listener = this.listenerRef, first = false): WorkerHandle {
    const w = new WorkerHandle({
      workerPath: this.opts.workerPath,
      listenFd: listener.handle.fd,
      generation: ++this.generation,
      config: this.opts.config(),
      start,
      first,
      log: this.log,
      onMessage: (worker, msg, handle) => this.onMessage(worker, msg, handle),
      onExit: (worker, exit) => this.onExit(worker, exit),
    });
    this.workers.add(w);
    return w;
  }

  private onMessage(w: WorkerHandle, msg: FromWorker, handle: unknown): void {
    switch (msg.t) {
      case 'ready':
        if (w === this.currentRef) this.backoff.started();
        this.held.forwardTo(this.currentRef, this.log);
        this.opts.onChange();
        break;
      case 'stats':
        this.checkRecycle(w);
        if (w === this.currentRef) this.sampleRates(w);
        break;
      case 'conn':
        if (handle) this.held.add(handle, msg);
        this.held.forwardTo(this.currentRef, this.log);
        break;
      case 'reloaded':
        if (msg.restartRequired.length) this.log.info({ fields: msg.restartRequired }, 'worker asks for a recycle');
        break;
      case 'state':
        this.opts.onPipelineState(msg.state);
        break;
    }
  }

  private onExit(w: WorkerHandle, { code, signal }: WorkerExit): void {
    this.workers.delete(w);
    this.totals.retire(w);
    if (w.expectedExit || this.stopping) return;
    const message = w.fatal?.message;
    this.lastCrash = { at: Date.now(), code, signal, ...(message ? { message } : {}) };
    if (w !== this.currentRef) {
      this.log.warn({ workerPid: w.pid, code, signal }, 'a standby agent worker exited');
      return;
    }
    this.currentRef = undefined;
    this.opts.onChange();
    const { delayMs, consecutive } = this.backoff.failed();
    this.restarts++;
    this.log.error(
      { pid: w.pid, code, signal, restartInMs: delayMs, consecutive, reason: message },
      `agent worker exited unexpectedly (${signal ?? `code ${code}`}); restarting in ${delayMs} ms`,
    );
    this.restartTimer = setTimeout(() => {
      if (this.stopping || this.currentRef) return;
      this.currentRef = this.spawn(true);
      this.opts.onChange();
    }, delayMs);
  }

  private checkRecycle(w: WorkerHandle): void {
    if (w !== this.currentRef || w.state !== 'ready' || this.recycling || this.stopping || !w.last) return;
    const r = this.opts.config().recycle;
    const uptime = Date.now() - w.readyAt;
    const received = w.last.metrics.counters.received;
    const rss = w.last.metrics.gauges.rssBytes;
    let reason: string | undefined;
    if (r.maxRecords > 0 && received >= r.maxRecords) reason = `maxRecords (${received} >= ${r.maxRecords})`;
    else if (r.maxRssBytes > 0 && rss > r.maxRssBytes && uptime >= MIN_RSS_RECYCLE_UPTIME_MS)
      reason = `maxRssBytes (${rss} > ${r.maxRssBytes})`;
    else if (r.maxUptimeMs > 0 && uptime >= r.maxUptimeMs) reason = `maxUptimeMs (${uptime} >= ${r.maxUptimeMs})`;
    if (reason) void this.recycle(reason);
  }

  /**
   * Replaces the current worker without closing the socket and without losing a record (see supervisor.ts).
   * `listener`: a new socket to move to (a reload changed agent.socket); the old one is closed afterwards.
   */
  recycle(reason: string, listener?: Listener): Promise<void> {
    if (this.stopping) return Promise.resolve();
    if (this.recycling) return this.recycling.then(() => this.recycle(reason, listener));
    this.recycling = this.doRecycle(reason, listener).finally(() => {
      this.recycling = undefined;
    });
    return this.recycling;
  }

  /** Resolves once no recycle is under way. */
  async settled(): Promise<void> {
    while (this.recycling) await this.recycling;
  }

  private async doRecycle(reason: string, listener: Listener | undefined): Promise<void> {
    const old = this.currentRef;
    if (!old || old.state !== 'ready') {
      if (listener) {
        this.swapListener(listener);
        publishListener(listener);
      }
      return;
    }
    const t0 = Date.now();
    this.log.info({ reason, pid: old.pid }, `recycling the agent worker: ${reason}`);
    const next = this.spawn(false, listener ?? this.listenerRef);
    if (!(await settleWithin(next.standby, STANDBY_TIMEOUT_MS))) {
      this.log.error({ reason }, 'recycle aborted: the replacement worker did not load');
      void next.kill();
      if (listener) closeListener(listener);
      return;
    }
    old.expectedExit = true;
    old.state = 'leaving';
    this.currentRef = next;
    this.opts.onChange();
    old.send({ t: 'handover' });
    const budget = this.opts.config().stopTimeoutMs + 3000;
    await old.exitWithin(budget, this.log, 'the old agent worker did not hand over in time; killing it');
    if (listener) this.swapListener(listener);
    if (next.state === 'exited') {
      if (listener) publishListener(listener); // crashed while waiting: the crash path restarts it
      return;
    }
    next.start();
    const ok = await settleWithin(next.ready, START_TIMEOUT_MS);
    if (listener) publishListener(listener);
    this.recycles++;
    this.lastRecycle = { reason, at: Date.now() };
    this.log.info(
      { reason, oldPid: old.pid, newPid: next.pid, ms: Date.now() - t0, ok: !!ok },
      'agent worker recycled',
    );
  }

  private swapListener(listener: Listener): void {
    const old = this.listenerRef;
    this.listenerRef = listener;
    if (old !== listener) closeListener(old);
  }
}
