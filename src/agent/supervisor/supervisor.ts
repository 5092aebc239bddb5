// AgentSupervisor: the `sidekick agent` process. It owns the listening socket and runs the pipeline in a worker
// process, which it restarts on a crash and replaces (recycles) on RSS / record-count / uptime limits.
//
// Why this shape (see docs/agent.md, "Recycling"):
// - The socket must outlive every worker, so the supervisor binds it and *never accepts on it*: it holds a bound
//   handle (node:cluster's primary primitive) and passes the fd to each worker, which listens and accepts directly —
//   no per-connection IPC hop on the hot path (PHP clients connect once per request). Between two workers, new
//   connections wait in the kernel backlog of that one socket; the path and inode never change, so clients never
//   write into an orphaned inode (the DogStatsD failure) and no close() ever unlinks a newer socket (node#19729).
// - The spool allows one owner (its lock), so a recycle is a strict hand-over, not an overlap: the replacement is
//   forked and loaded first (standby); the old worker stops accepting, stops reading every open connection at once
//   and sends them here as raw handles with their unfinished line, finishes the export in flight, flushes and closes
//   the spool; then the new worker opens the spool, listens on the same fd and adopts the held connections. Bytes
//   clients write meanwhile wait in the kernel socket buffers. Nothing accepted is lost and nothing is read twice.
// - node:cluster was not used: its primary closes a shared handle when its last worker exits (a crash would drop the
//   socket), it cannot move established connections between workers, and its settings are process-global, which
//   would collide with `sidekick serve`'s own cluster of HTTP workers.
//
// The host talks to it one way: it passes a validated config (start, reload(config)) and listens to 'state'.
// Files (this folder: the supervisor's side): worker-pool.ts (start, crash restarts, recycling), worker-handle.ts (one
// worker process), listener.ts (the socket, held connections), agent-status.ts (state, status, counter totals). The
// worker process's side is ../worker/ (its entry is worker-main.ts); ../worker-protocol.ts is what passes between.
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { AdminServer } from '../../admin/server.js';
import { parseListen, type AgentConfig } from '../../config/schema.js';
import { SidekickError, describeError } from '../../errors.js';
import { childLogger, logCounts } from '../../log/logger.js';
import { replayProgress, type AgentState, type AgentStatus } from './agent-status.js';
import { bindListener, type Listener } from './listener.js';
import { MetricsServer, createAgentRegistry, zeroCounters, zeroGauges, type AgentMetricsSnapshot } from '../metrics.js';
import type { AgentPipelineStatus, PipelineStateEvent } from '../worker/pipeline.js';
import { restartOnlyChanges } from '../pipeline-config.js';
import { WorkerPool } from './worker-pool.js';
import { agentReadiness } from './readiness.js';
import type { HealthProbes, HealthVerdict } from '../../common/health.js';

export type { AgentState, AgentStatus } from './agent-status.js';

export interface AgentSupervisorOptions {
  /** The validated `agent` section (the caller loads the file; reload(config) passes the next one). */
  config: AgentConfig;
  /** Serve `sidekick status` on this admin socket (standalone `sidekick agent`); inside `sidekick serve`, omit it. */
  adminSocket?: string | undefined;
  /** The config file, for status only. */
  configFile?: string | undefined;
  log?: Logger;
  /** Worker entry module (default: ../worker/worker-main.js from this file, or .ts under tsx). */
  workerPath?: string;
}

const SNAPSHOT_TIMEOUT_MS = 1000;

export class AgentSupervisor extends EventEmitter<{ state: [AgentState] }> {
  private cfg: AgentConfig;
  private readonly configFile: string | undefined;
  private readonly adminSocket: string | undefined;
  private readonly log: Logger;
  private readonly workerPath: string;
  private pool: WorkerPool | undefined;
  /** Set as stop() is called (before its first await), so state() says 'stopping' at once. */
  private stopRequested = false;
  private stopping: Promise<void> | undefined;
  private admin: AdminServer | undefined;
  private metricsServer: MetricsServer | undefined;
  private readonly registry = createAgentRegistry(() => this.snapshot().then((s) => s.metrics));
  private pipelineState: PipelineStateEvent | undefined;
  private lastState: string | undefined;
  /** The first worker accepted and the socket was published (readiness). */
  private started = false;
  /** /healthz and /readyz on the admin socket and agent.metrics.listen. */
  private readonly health: HealthProbes = { ready: () => this.readiness() };
  private readonly startedAt = Date.now();
  private markStopped!: () => void;
  /** Resolves once the supervisor has fully stopped. */
  readonly done = new Promise<void>((resolve) => (this.markStopped = resolve));

  constructor(opts: AgentSupervisorOptions) {
    super();
    this.cfg = opts.config;
    this.configFile = opts.configFile;
    this.adminSocket = opts.adminSocket;
    this.log = opts.log ?? childLogger({ component: 'agent' });
    const here = fileURLToPath(import.meta.url);
    this.workerPath = opts.workerPath ?? here.replace(/supervisor\/supervisor\.(ts|js)$/, 'worker/worker-main.$1');
  }

  get config(): AgentConfig {
    return this.cfg;
  }

  // ------------------------------------------------------------------------------------------------ lifecycle

  /** Binds the socket, starts admin + metrics, starts the first worker and waits until it accepts. */
  async start(): Promise<void> {
    const cfg = this.cfg;
    const pool = new WorkerPool(await bindListener(cfg), {
      workerPath: this.workerPath,
      log: this.log,
      config: () => this.cfg,
      onChange: () => this.publishState(),
      onPipelineState: (state) => {
        this.pipelineState = state;
        this.publishState();
      },
    });
    this.pool = pool;
    try {
      await this.startAdmin();
      await this.startMetrics();
      await pool.start();
      this.started = true;
    } catch (err) {
      await this.closeResources();
      throw err;
    }
    this.log.info(
      {
        socket: cfg.socket,
        worker: pool.current?.pid,
        exporter: cfg.exporter.type,
        spool: cfg.spool.dir,
        metrics: this.metricsServer ? cfg.metrics.listen : undefined,
      },
      'sidekick agent running',
    );
  }

  private async startAdmin(): Promise<void> {
    const socket = this.adminSocket;
    if (!socket) return;
    const admin = new AdminServer(socket, this.health);
    admin.route('status', async () => ({ agent: await this.status() }));
    try {
      await admin.start();
      this.admin = admin;
    } catch (err) {
      // `sidekick serve` on the same config owns the admin socket: the agent still runs, `status` goes to serve.
      this.log.warn(
        { err: describeError(err), socket },
        'admin socket unavailable; `sidekick status` will not see this agent',
      );
    }
  }

  private async startMetrics(): Promise<void> {
    const listen = this.cfg.metrics.listen;
    if (!listen) return;
    const address = parseListen(listen);
    if (!address)
      throw new SidekickError('SK_ERR_CONFIG_INVALID', `agent.metrics.listen: cannot parse "${listen}"`, {
        field: 'agent.metrics.listen',
      });
    const server = new MetricsServer(address, this.registry, this.health);
    try {
      await server.start();
    } catch (err) {
      throw new SidekickError('SK_ERR_LISTEN', `agent.metrics.listen ${listen}: ${describeError(err)}`, {
        field: 'agent.metrics.listen',
      });
    }
    this.metricsServer = server;
  }

  /** Graceful stop (SIGTERM/SIGINT): the worker drains, flushes, makes a last export attempt; then we close up. */
  stop(): Promise<void> {
    this.stopRequested = true;
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.publishState();
    await this.pool?.stop(this.cfg.stopTimeoutMs);
    // The final totals (every worker's last counters, incl. what the spool could not save at stop): the one place a
    // run's end-to-end count is still visible once the process is gone.
    const final = await this.pool?.snapshot(0);
    await this.closeResources();
    this.log.info({ counters: final?.metrics.counters }, 'sidekick agent stopped');
    this.markStopped();
  }

  private async closeResources(): Promise<void> {
    this.pool?.close();
    await this.admin?.stop().catch(() => undefined);
    this.admin = undefined;
    await this.metricsServer?.stop().catch(() => undefined);
    this.metricsServer = undefined;
  }

  // ------------------------------------------------------------------------------------------------ reload

  /**
   * Applies a new, validated config (the caller loaded it; an invalid file never gets here, so the backlog is
   * untouched). Live settings go to the worker; socket and spool layout changes are applied by a recycle (the socket
   * is re-bound first; if the new path is in use, the old one is kept). spool.dir cannot change on a running agent.
   */
  async reload(config: AgentConfig): Promise<void> {
    const pool = this.pool;
    if (this.stopRequested || !pool) return;
    let next = config;
    await pool.settled();
    const prev = this.cfg;
    if (next.spool.dir !== prev.spool.dir) {
      this.log.error(
        { old: prev.spool.dir, new: next.spool.dir },
        'agent.spool.dir cannot change on reload (the backlog lives there); keeping the old one until a restart',
      );
      next = { ...next, spool: { ...next.spool, dir: prev.spool.dir } };
    }
    let newListener: Listener | undefined;
    if (next.socket !== prev.socket) {
      try {
        newListener = await bindListener(next);
      } catch (err) {
        this.log.error(
          { err: describeError(err) },
          `cannot move to agent.socket ${next.socket}; keeping ${prev.socket}`,
        );
        next = { ...next, socket: prev.socket };
      }
    }
    if (!newListener && (next.socketMode !== prev.socketMode || next.socketGroup !== prev.socketGroup)) {
      try {
        pool.listener.file?.applyPermissions(next.socketMode, next.socketGroup);
      } catch (err) {
        this.log.error({ err: describeError(err) }, 'could not apply socketMode/socketGroup');
      }
    }
    this.cfg = next;
    this.publishState();
    if (next.metrics.listen !== prev.metrics.listen) {
      await this.metricsServer?.stop();
      this.metricsServer = undefined;
      await this.startMetrics().catch((err: unknown) =>
        this.log.error({ err: describeError(err) }, 'metrics listener not restarted'),
      );
    }
    const needsWorker = restartOnlyChanges(prev, next);
    if (newListener || needsWorker.length > 0) {
      await pool.recycle(`reload (${needsWorker.join(', ')})`, newListener);
    } else pool.reloadLive(next);
    this.log.info({ file: this.configFile }, 'agent config reloaded');
  }

  // ------------------------------------------------------------------------------------------------ state, status

  /** The state as the host sees it (also emitted as 'state' whenever it changes). */
  state(): AgentState {
    const p = this.pipelineState;
    const profiling = this.cfg.profiling;
    return {
      state: this.stopRequested ? 'stopping' : this.pool?.current?.state === 'ready' ? 'running' : 'starting',
      breaker: p?.breaker ?? 'unknown',
      profiling: p ? p.profiling : profiling.enabled,
      sampleRate: p ? p.sampleRate : profiling.sampleRate,
      reason: p ? p.reason : profiling.enabled ? 'ok' : 'disabled',
      socket: this.cfg.socket,
    };
  }

  /** Can the agent take records now (/readyz)? See readiness.ts; reads only what this process holds. */
  readiness(): HealthVerdict {
    const pool = this.pool;
    const file = pool?.listener.file;
    const spool = pool?.current?.last?.status.spool;
    return agentReadiness({
      stopping: this.stopRequested,
      started: this.started,
      socket: this.cfg.socket,
      socketInPlace: file ? file.isInPlace() : true,
      worker: pool?.current?.state,
      workerSilentMs: pool?.current?.reportedAt ? Date.now() - pool.current.reportedAt : 0,
      breaker: this.state().breaker,
      spool: spool && {
        dir: spool.dir,
        diskFull: spool.diskFull,
        writeError: spool.writeError,
        stalledMs: spool.stalledMs,
      },
    });
  }

  private publishState(): void {
    const state = this.state();
    const key = JSON.stringify(state);
    if (key === this.lastState) return;
    this.lastState = key;
    this.emit('state', state);
  }

  /** Fresh counters and status from the current worker (≤ 1 s old if it does not answer), plus retired totals. */
  async snapshot(): Promise<{ metrics: AgentMetricsSnapshot; status: AgentPipelineStatus | undefined }> {
    const snap = await this.pool?.snapshot(SNAPSHOT_TIMEOUT_MS);
    const metrics = snap?.metrics ?? { counters: zeroCounters(), gauges: zeroGauges() };
    // Alone, this process's log lines are the agent's too; inside serve, serve reports them as its own.
    if (this.adminSocket) {
      const own = logCounts();
      const c = metrics.counters;
      metrics.counters = { ...c, logLines: c.logLines + own.lines, logDropped: c.logDropped + own.dropped };
    }
    return { metrics, status: snap?.live?.status };
  }

  async status(): Promise<AgentStatus> {
    const snap = await this.snapshot();
    const pool = this.pool;
    const w = pool?.current;
    const rates = pool?.rates.rates() ?? { receivedPerSec: 0, exportedPerSec: 0, windowMs: 0 };
    return {
      state: this.state().state,
      pid: process.pid,
      startedAt: this.startedAt,
      config: this.configFile,
      socket: this.cfg.socket,
      metrics: this.metricsServer ? { listen: this.cfg.metrics.listen, port: this.metricsServer.port() } : undefined,
      worker: w
        ? {
            pid: w.pid,
            generation: w.generation,
            state: w.state,
            spawnedAt: w.spawnedAt,
            readyAt: w.readyAt,
            reportedAt: w.reportedAt,
          }
        : undefined,
      recycles: pool?.recycles ?? 0,
      restarts: pool?.restarts ?? 0,
      lastRecycle: pool?.lastRecycle,
      lastCrash: pool?.lastCrash,
      counters: snap.metrics.counters,
      gauges: snap.metrics.gauges,
      rates,
      replay: replayProgress(snap.metrics.gauges.spoolRecords, rates.exportedPerSec),
      pipeline: snap.status,
      log: logCounts(),
    };
  }
}
