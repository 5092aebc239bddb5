// AgentPipeline: receiver → spool → batcher → breaker → exporter, as one component with start/stop/reload/status.
//
//   clients ──NDJSON──▶ UnixSocketReceiver ──good lines (original bytes)──▶ Spool (WAL on disk)
//                          │ invalid: counted + rate-limited log                │ 'data'
//                          ▼                                                    ▼
//                    MemoryBudget ◀── in-flight bytes ── Dispatcher ◀── Batcher (maxRecords / maxDelayMs)
//                                                          │ ExporterBreaker (cockatiel)
//                                                          ▼
//                                                file | http exporter ──▶ central
//                                                          │ 4xx ▶ DeadLetterStore (spool.dir/dead-letter)
//
// No process-global state: no signal handlers, no process.exit, no module singletons. It runs in an agent worker
// process (worker-main.ts) under AgentSupervisor, accepting on the socket the supervisor bound. Everything accepted is in
// the spool within milliseconds, so stop/handOver only have to flush the spool's write buffer.
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { join } from 'node:path';
import { settleWithin, sleep } from '../../common/async.js';
import type { AgentConfig } from '../../config/schema.js';
import { isSidekickError } from '../../errors.js';
import { childLogger, type Logger } from '../../log/logger.js';
import { ExporterBreaker, type BreakerStateName } from '../breaker/breaker.js';
import { DeadLetterStore } from '../exporters/dead-letter.js';
import { Dispatcher } from '../exporters/dispatcher.js';
import { createExporter, exportTimeoutMs, type Exporter } from '../exporters/index.js';
import { zeroCounters, type AgentMetricsSnapshot, type InvalidReason } from '../metrics.js';
import {
  metricsOf,
  RssGauge,
  statusOf,
  type AgentPipelineStatus,
  type PipelineParts,
  type PipelineState,
} from './pipeline-status.js';
import { ClientStateFile, clientStateOf } from './client-state.js';
import { clearHandoverDir } from '../handover-partials.js';
import { batchPolicy, restartOnlyChanges, retryPolicy, sendShape, spoolOptions } from '../pipeline-config.js';
import { Batcher } from '../processors/batcher.js';
import { MemoryBudget } from './memory-budget.js';
import { Spool } from '../queue/spool.js';
import { SpillReceiver } from '../receivers/spill.js';
import type { ClientState } from '../receivers/control.js';
import {
  effectiveBacklog,
  LISTEN_BACKLOG,
  UnixSocketReceiver,
  type DetachedConnection,
} from '../receivers/unix-socket.js';

export type { AgentPipelineStatus, PipelineState } from './pipeline-status.js';

export interface AgentPipelineOptions {
  config: AgentConfig;
  log?: Logger;
  /** Accept on this inherited, already-bound socket fd (the supervisor's). */
  listenFd: number;
  /**
   * The agent's first worker: once it holds the spool (so no other agent uses the directory), it removes what a
   * previous run left in `<spool.dir>/handover/` (a worker that died between handing over and adoption).
   */
  clearHandover?: boolean;
  /**
   * This process runs nothing but the pipeline (the agent worker): reads are coalesced by pacing the event loop
   * (receivers/unix-socket.ts, PACED TURNS) rather than by napping connections.
   */
  ownsProcess?: boolean;
}

/** What the pipeline tells its owner when it changes (event 'state'): the breaker and the clients' profiling state. */
export interface PipelineStateEvent extends ClientState {
  breaker: BreakerStateName;
}

/** How long start() waits for a spool lock still held by a previous owner that is shutting down. */
export const SPOOL_LOCK_WAIT_MS = 5000;
/** At a final stop, after the socket file is gone: time for the event loop to accept what the backlog holds. */
const BACKLOG_SETTLE_MS = 20;
/** The spool's close must end this long before the stop budget, so the worker can report and exit within it. */
const STOP_EXIT_MARGIN_MS = 200;
/** A spool write or fsync waiting this long is logged SK_ERR_SPOOL_STALLED (once per stall). */
const SPOOL_STALL_LOG_MS = 2000;
/** At a final stop, a connection that sent nothing this long after `bye` is done (idle FPM children, say). */
const DRAIN_IDLE_MS = 250;

export class AgentPipeline extends EventEmitter<{ state: [PipelineStateEvent] }> {
  private readonly counters = zeroCounters();
  private cfg: AgentConfig;
  private readonly log: Logger;
  private readonly opts: AgentPipelineOptions;
  private stateName: PipelineState = 'new';
  private startedAtMs = 0;
  private spool: Spool | undefined;
  private budget: MemoryBudget;
  private receiver: UnixSocketReceiver | undefined;
  private spill: SpillReceiver | undefined;
  private readonly stateFile: ClientStateFile;
  private lastStateEvent: string | undefined;
  private server: net.Server | undefined;
  private batcher: Batcher | undefined;
  private dispatcher: Dispatcher | undefined;
  private breaker: ExporterBreaker | undefined;
  private exporter: Exporter | undefined;
  private stopping: Promise<void> | undefined;
  private readonly rss = new RssGauge();

  constructor(opts: AgentPipelineOptions) {
    super();
    this.opts = opts;
    this.cfg = opts.config;
    this.log = opts.log ?? childLogger({ component: 'agent' });
    this.budget = new MemoryBudget(opts.config.memory.maxBytes);
    this.stateFile = new ClientStateFile(this.log);
  }

  get state(): PipelineState {
    return this.stateName;
  }

  get config(): AgentConfig {
    return this.cfg;
  }

  private async openSpool(): Promise<Spool> {
    const cfg = this.cfg;
    const until = Date.now() + SPOOL_LOCK_WAIT_MS;
    for (;;) {
      try {
        return await Spool.open(spoolOptions(cfg, this.log.child({ part: 'spool' })));
      } catch (err) {
        if (!isSidekickError(err, 'SK_ERR_SPOOL_LOCKED') || Date.now() >= until) throw err;
        await sleep(100);
      }
    }
  }

  async start(): Promise<void> {
    if (this.stateName !== 'new') throw new Error(`pipeline already ${this.stateName}`);
    this.stateName = 'starting';
    const cfg = this.cfg;
    try {
      const spool = await this.openSpool();
      this.spool = spool;
      if (this.opts.clearHandover) clearHandoverDir(cfg.spool.dir);
      this.breaker = await ExporterBreaker.create({
        failures: cfg.breaker.failures,
        halfOpenAfterMs: cfg.breaker.halfOpenAfterMs,
        store: { read: () => spool.readState('breaker'), write: (v) => spool.writeState('breaker', v) },
        log: this.log.child({ part: 'breaker' }),
        onState: () => this.publishClientState(),
      });
      this.exporter = createExporter(cfg.exporter);
      this.batcher = new Batcher(spool, batchPolicy(cfg), this.counters);
      this.dispatcher = new Dispatcher({
        spool,
        batcher: this.batcher,
        breaker: this.breaker,
        exporter: () => this.exporter!,
        deadLetters: new DeadLetterStore(cfg.spool.dir),
        counters: this.counters,
        budget: this.budget,
        log: this.log.child({ part: 'exporter' }),
        retry: retryPolicy(cfg),
        shape: sendShape(cfg),
      });
      // The spool's write buffer counts against the memory bound; it shrinks as writes land ('data').
      spool.on('data', () => this.budget.set('spool', spool.bufferedBytes));
      spool.on('drain', () => this.budget.release('spool'));
      this.receiver = new UnixSocketReceiver({
        maxRecordBytes: cfg.maxRecordBytes,
        coalesceMs: cfg.ingest.coalesceMs,
        pacedTurns: this.opts.ownsProcess === true,
        budget: this.budget,
        log: this.log.child({ part: 'receiver' }),
        sink: {
          append: (lines, records) => this.append(lines, records),
          turnDone: () => this.spool!.writeSoon(),
          invalid: (reason: InvalidReason, n: number) => {
            this.counters.received += n;
            this.counters.invalid[reason] += n;
          },
          connection: () => this.counters.connections++,
          connectionRejected: () => this.counters.rejectedConnections++,
          clientDropped: (count: number) => (this.counters.clientDropped += count),
          truncated: () => this.counters.truncated++,
        },
      });
      this.publishClientState();
      const server = UnixSocketReceiver.createServer();
      this.receiver.attach(server);
      const fd = this.opts.listenFd;
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        // The backlog as its own argument: with a handle or fd, Node (20 and 24, lib/net.js) reads it only from there
        // and ignores `backlog` inside the options object, listening with its default 511 instead.
        server.listen({ fd }, LISTEN_BACKLOG, () => {
          server.off('error', reject);
          resolve();
        });
      });
      this.server = server;
      this.dispatcher.start();
      this.spill = new SpillReceiver({
        dir: cfg.spill.dir,
        stateFile: join(cfg.spool.dir, 'spill-offsets.json'),
        scanIntervalMs: cfg.spill.scanIntervalMs,
        maxRecordBytes: cfg.maxRecordBytes,
        group: cfg.socketGroup,
        sink: this.receiver.lineSink,
        flush: () => spool.flush(),
        budget: this.budget,
        log: this.log.child({ part: 'spill' }),
        onReplayed: (n) => (this.counters.spillReplayed += n),
      });
      await this.spill.start();
      this.startedAtMs = Date.now();
      this.stateName = 'running';
      const backlog = effectiveBacklog(LISTEN_BACKLOG);
      if (backlog.effective < backlog.requested)
        this.log.warn(
          { listenBacklog: backlog.effective, requested: backlog.requested, somaxconn: backlog.somaxconn },
          `net.core.somaxconn (${backlog.somaxconn}) caps the agent socket's listen backlog at ${backlog.effective} ` +
            `(${backlog.requested} asked for): while the worker is busy or between workers, connections past it are ` +
            `refused (EAGAIN) and clients spill or drop; raise it with sysctl net.core.somaxconn=${backlog.requested}`,
        );
      this.log.info(
        {
          socket: cfg.socket,
          listenBacklog: backlog.effective,
          spool: cfg.spool.dir,
          backlog: spool.stats().pendingRecords,
          exporter: cfg.exporter.type,
        },
        'agent pipeline running',
      );
    } catch (err) {
      this.stateName = 'stopped';
      await this.teardown(Date.now() + this.cfg.stopTimeoutMs);
      throw err;
    }
  }

  /** The ingest hot path: every valid line, already framed, straight into the spool. */
  private append(lines: Buffer, records: number): void {
    this.counters.received += records;
    this.counters.spooled += records;
    if (!this.spool!.append(lines, records)) this.budget.hold('spool');
    this.batcher!.noteAppended(records);
  }

  /** Adopts a client connection handed over by a previous worker. */
  adopt(handle: unknown, partial: Buffer, discarding: boolean): void {
    if (!this.receiver || this.stateName !== 'running') throw new Error('pipeline is not running');
    this.receiver.adopt(handle, partial, discarding);
  }

  /**
   * Graceful stop: stop accepting, read what connected clients already wrote (until each goes quiet for 100 ms, at
   * most 1/5 of the budget), flush the spool, give every due batch one last export attempt until `timeoutMs` is
   * nearly used up (no attempt while the breaker is open), then close the spool. Whatever was not delivered stays in
   * the spool for the next start.
   */
  stop(timeoutMs = this.cfg.stopTimeoutMs): Promise<void> {
    this.stopping ??= this.doStop(timeoutMs, true).then(() => undefined);
    return this.stopping;
  }

  /**
   * Recycle: stop accepting, stop reading every connection at once and return them (with unfinished lines) for the
   * next worker, finish only the export in flight, flush and close the spool (releasing its lock).
   */
  async handOver(onConnections: (conns: DetachedConnection[]) => void): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopping = this.doStop(this.cfg.stopTimeoutMs, false, onConnections).then(() => undefined);
    return this.stopping;
  }

  private async doStop(
    timeoutMs: number,
    final: boolean,
    onConnections?: (conns: DetachedConnection[]) => void,
  ): Promise<void> {
    if (this.stateName === 'new' || this.stateName === 'stopped') {
      this.stateName = 'stopped';
      return;
    }
    this.stateName = 'stopping';
    const t0 = Date.now();
    const closeMargin = Math.min(1000, timeoutMs / 10);
    const deadline = t0 + Math.max(0, timeoutMs - closeMargin);
    const receiver = this.receiver!;
    await this.spill?.stop(); // at a chunk boundary: what it fed is in the spool, its offset saved
    if (final) {
      // No connection may be left unaccepted in the backlog (its lines would be lost when the socket closes): the
      // supervisor removed the socket file first, so no new client can connect; one more turn of the event loop
      // accepts whatever is queued, then the listener closes.
      await sleep(BACKLOG_SETTLE_MS);
      receiver.stopAccepting();
      await receiver.drain(DRAIN_IDLE_MS, Math.min(2000, timeoutMs / 5));
      // The agent is going away (not a recycle): clients stop profiling until the next one says otherwise.
      this.publishClientState({ profiling: false, sampleRate: this.cfg.profiling.sampleRate, reason: 'stopped' });
    } else {
      receiver.stopAccepting();
      onConnections?.(receiver.detachAll());
    }
    // Every wait below is bounded by the stop budget: a spool whose filesystem does not answer (a hung disk, NFS,
    // FUSE) must not hold the stop (docs/agent.md "What happens when…"; test/agent-spool-hang.test.ts).
    const flushed = await settleWithin(
      this.spool!.flush().then(
        () => true,
        (err: unknown) => {
          this.log.error({ err }, 'spool flush at stop failed');
          return true;
        },
      ),
      deadline - Date.now(),
    );
    if (flushed === undefined) {
      this.log.error(
        { code: 'SK_ERR_SPOOL_STALLED', dir: this.spool!.dir, stalledMs: this.spool!.stalledMs },
        "SK_ERR_SPOOL_STALLED: the spool flush at stop did not finish: the spool's filesystem is not answering",
      );
    }
    // Hand-over: finish the export in flight only (bounded by the exporter's timeout), no new batch.
    const exportDeadline = final ? deadline : Math.min(deadline, Date.now() + exportTimeoutMs(this.cfg.exporter));
    await this.dispatcher!.stop(exportDeadline, final);
    await this.teardown(t0 + timeoutMs - STOP_EXIT_MARGIN_MS);
    this.stateName = 'stopped';
    const st = this.spool?.stats();
    this.log.info(
      { ms: Date.now() - t0, pendingRecords: st?.pendingRecords, final },
      final ? 'agent pipeline stopped' : 'agent pipeline handed over',
    );
  }

  /** The spool could not be closed by the stop deadline (its filesystem does not answer): see Spool.abandon. */
  spoolAbandoned = false;

  private async teardown(deadline: number): Promise<void> {
    this.receiver?.destroyAll();
    this.server?.close();
    await settleWithin(this.breaker?.settle() ?? Promise.resolve(), deadline - Date.now());
    const spool = this.spool;
    if (spool) {
      const closed = await settleWithin(
        spool.close().then(
          () => true,
          (err: unknown) => {
            this.log.error({ err }, 'spool close failed');
            return true;
          },
        ),
        deadline - Date.now(),
      );
      if (closed === undefined) {
        spool.abandon();
        this.spoolAbandoned = true;
      }
    }
    await settleWithin(this.exporter?.close().catch(() => undefined) ?? Promise.resolve(), 1000);
  }

  /** Logged once per stall: the spool's write or fsync has waited SPOOL_STALL_LOG_MS or more (stats timer). */
  private stallLogged = false;

  /** Called about once a second (the worker's stats timer): says so when the spool's filesystem stops answering. */
  watchSpool(): void {
    const ms = this.spool?.stalledMs ?? 0;
    if (ms >= SPOOL_STALL_LOG_MS && !this.stallLogged) {
      this.stallLogged = true;
      this.log.error(
        { code: 'SK_ERR_SPOOL_STALLED', dir: this.spool!.dir, stalledMs: ms, bufferedBytes: this.spool!.bufferedBytes },
        "SK_ERR_SPOOL_STALLED: the spool's filesystem is not answering; records wait in the bounded write buffer, then clients are held back",
      );
    } else if (ms === 0 && this.stallLogged) {
      this.stallLogged = false;
      this.log.info({ dir: this.spool?.dir }, "the spool's filesystem answers again");
    }
  }

  /**
   * Applies a new config to the running pipeline: batch, exporter, breaker, retry, limits, replay rate. Returns the
   * fields that need a new worker (the socket, the spool layout): the supervisor recycles for those.
   */
  reload(next: AgentConfig): { restartRequired: string[] } {
    const prev = this.cfg;
    const restartRequired = restartOnlyChanges(prev, next);
    this.cfg = next;
    this.budget.setMaxBytes(next.memory.maxBytes);
    this.receiver?.setMaxRecordBytes(next.maxRecordBytes);
    if (this.receiver) this.receiver.coalesceMs = next.ingest.coalesceMs;
    this.batcher?.setPolicy(batchPolicy(next));
    this.dispatcher?.setRetryPolicy(retryPolicy(next));
    this.dispatcher?.setShape(sendShape(next));
    this.breaker?.reconfigure(next.breaker.failures, next.breaker.halfOpenAfterMs);
    this.publishClientState();
    if (JSON.stringify(prev.exporter) !== JSON.stringify(next.exporter) && this.exporter) {
      const old = this.exporter;
      this.exporter = createExporter(next.exporter);
      // Let an export in flight on the old one finish (bounded by its timeout) before closing it.
      const grace = prev.exporter.type === 'file' ? 1000 : exportTimeoutMs(prev.exporter) + 1000;
      setTimeout(() => void old.close().catch(() => undefined), grace).unref();
    }
    this.log.info({ restartRequired }, 'agent config reloaded');
    return { restartRequired };
  }

  /** What clients should do about profiling now (see client-state.ts). */
  clientState(): ClientState {
    return clientStateOf(this.cfg.profiling, this.breaker?.state ?? 'closed');
  }

  /** Publishes the clients' state file and, when anything changed, the 'state' event. */
  private publishClientState(state: ClientState = this.clientState()): void {
    const event: PipelineStateEvent = { ...state, breaker: this.breaker?.state ?? 'closed' };
    const key = JSON.stringify(event);
    if (key !== this.lastStateEvent) {
      this.lastStateEvent = key;
      this.emit('state', event);
    }
    this.stateFile.publish(this.cfg.socket, state);
  }

  /** Counters and gauges now (pipeline-status.ts). */
  metrics(): AgentMetricsSnapshot {
    return metricsOf(this.parts(), this.rss.read());
  }

  status(): AgentPipelineStatus {
    return statusOf(this.parts());
  }

  /** What the read-outs look at (pipeline-status.ts). */
  private parts(): PipelineParts {
    return {
      state: this.stateName,
      startedAt: this.startedAtMs,
      cfg: this.cfg,
      counters: this.counters,
      budget: this.budget,
      spool: this.spool,
      receiver: this.receiver,
      spill: this.spill,
      breaker: this.breaker,
      dispatcher: this.dispatcher,
      clients: () => this.clientState(),
    };
  }
}
