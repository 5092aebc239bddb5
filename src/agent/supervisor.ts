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
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { AdminServer } from '../admin/server.js';
import { parseListen, type AgentConfig } from '../config/schema.js';
import { ERROR_CODES, SidekickError, describeError, type ErrorCode } from '../errors.js';
import { childLogger } from '../log/logger.js';
import { settleWithin } from '../common/async.js';
import { RestartBackoff } from '../common/backoff.js';
import {
  MetricsServer,
  addCounters,
  createAgentRegistry,
  zeroCounters,
  zeroGauges,
  type AgentCounterValues,
  type AgentMetricsSnapshot,
} from './metrics.js';
import {
  SPOOL_LOCK_WAIT_MS,
  restartOnlyChanges,
  type AgentPipelineStatus,
  type PipelineStateEvent,
} from './pipeline.js';
import {
  bindSharedSocket,
  type BoundHandle,
  type OwnedSocketFile,
  type SharedSocket,
} from './receivers/socket-file.js';
import type { FromWorker, ToWorker } from './worker-protocol.js';

export interface AgentSupervisorOptions {
  /** The validated `agent` section (the caller loads the file; reload(config) passes the next one). */
  config: AgentConfig;
  /** Serve `sidekick status` on this admin socket (standalone `sidekick agent`); inside `sidekick serve`, omit it. */
  adminSocket?: string | undefined;
  /** The config file, for status only. */
  configFile?: string | undefined;
  log?: Logger;
  /** Worker entry module (default: worker.js next to this file, or worker.ts under tsx). */
  workerPath?: string;
}

/**
 * What the agent tells its host when it changes (event 'state'): `sidekick serve` turns it into the `agent` vars.
 * `state`: 'running' while a worker accepts, 'starting' while none does (first start, a crash restart, the moment of
 * a recycle), 'stopping' from stop() on. `breaker`, `profiling`, `sampleRate`, `reason`: the last the pipeline
 * reported (the breaker is 'unknown' until then; profiling and sample rate then follow the config).
 */
export interface AgentState {
  state: 'starting' | 'running' | 'stopping';
  breaker: PipelineStateEvent['breaker'] | 'unknown';
  profiling: boolean;
  sampleRate: number;
  reason: PipelineStateEvent['reason'];
  socket: string;
}

type WorkerState = 'booting' | 'standby' | 'starting' | 'ready' | 'leaving' | 'exited';

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

interface WorkerRec {
  generation: number;
  child: ChildProcess;
  pid: number | undefined;
  state: WorkerState;
  spawnedAt: number;
  readyAt: number;
  expectedExit: boolean;
  last: { metrics: AgentMetricsSnapshot; status: AgentPipelineStatus } | undefined;
  finalMetrics: AgentMetricsSnapshot | undefined;
  fatal: { code: string | undefined; message: string } | undefined;
  standby: Deferred<boolean>;
  ready: Deferred<boolean>;
  exited: Deferred<{ code: number | null; signal: NodeJS.Signals | null }>;
}

interface Listener {
  handle: BoundHandle;
  path: string;
  /** Set once published under `path` (after a worker listens on it). */
  file: OwnedSocketFile | undefined;
  shared: SharedSocket;
}

function publishListener(l: Listener): void {
  l.file ??= l.shared.publish();
}

function closeListener(l: Listener): void {
  if (l.file) {
    l.handle.close();
    l.file.unlinkIfOurs();
  } else l.shared.discard();
}

const STANDBY_TIMEOUT_MS = 15_000;
const SNAPSHOT_TIMEOUT_MS = 1000;
/** RSS recycling waits until a worker has run this long, so a limit set below the baseline cannot loop. */
const MIN_RSS_RECYCLE_UPTIME_MS = 10_000;

export class AgentSupervisor extends EventEmitter<{ state: [AgentState] }> {
  private cfg: AgentConfig;
  private readonly configFile: string | undefined;
  private readonly adminSocket: string | undefined;
  private readonly log: Logger;
  private readonly workerPath: string;
  private listener: Listener | undefined;
  private current: WorkerRec | undefined;
  private readonly workers = new Set<WorkerRec>();
  private retired: AgentCounterValues = zeroCounters();
  private held: { handle: unknown; msg: Extract<FromWorker, { t: 'conn' }> }[] = [];
  private readonly backoff = new RestartBackoff({ baseMs: 100, maxMs: 5000, stableAfterMs: 30_000 });
  private restartTimer: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;
  private recycling: Promise<void> | undefined;
  private admin: AdminServer | undefined;
  private metricsServer: MetricsServer | undefined;
  private readonly registry = createAgentRegistry(() => this.snapshot().then((s) => s.metrics));
  private generation = 0;
  private recycles = 0;
  private restarts = 0;
  private lastRecycle: { reason: string; at: number } | undefined;
  private lastCrash: { at: number; code: number | null; signal: string | null; message?: string } | undefined;
  private pipelineState: PipelineStateEvent | undefined;
  private lastState: string | undefined;
  private snapshotSeq = 0;
  private readonly snapshotWaiters = new Map<
    number,
    (v: { metrics: AgentMetricsSnapshot; status: AgentPipelineStatus }) => void
  >();
  private readonly startedAt = Date.now();
  private readonly stopped = deferred<void>();
  /** Resolves once the supervisor has fully stopped. */
  readonly done = this.stopped.promise;

  constructor(opts: AgentSupervisorOptions) {
    super();
    this.cfg = opts.config;
    this.configFile = opts.configFile;
    this.adminSocket = opts.adminSocket;
    this.log = opts.log ?? childLogger({ component: 'agent' });
    const here = fileURLToPath(import.meta.url);
    this.workerPath = opts.workerPath ?? here.replace(/supervisor\.(ts|js)$/, 'worker.$1');
  }

  get config(): AgentConfig {
    return this.cfg;
  }

  // ------------------------------------------------------------------------------------------------ lifecycle

  /** Binds the socket, starts admin + metrics, starts the first worker and waits until it accepts. */
  async start(): Promise<void> {
    const cfg = this.cfg;
    const shared = await bindSharedSocket({ path: cfg.socket, mode: cfg.socketMode, group: cfg.socketGroup });
    this.listener = { handle: shared.handle, path: cfg.socket, file: undefined, shared };
    try {
      await this.startAdmin();
      await this.startMetrics();
      const w = this.spawn(true);
      this.current = w;
      const ok = await settleWithin(
        Promise.race([w.ready.promise, w.exited.promise.then(() => false)]),
        30_000 + SPOOL_LOCK_WAIT_MS,
      );
      if (!ok) {
        w.expectedExit = true;
        const exited = w.state === 'exited';
        w.child.kill('SIGKILL');
        const how = await settleWithin(w.exited.promise, 2000);
        const fatal = w.fatal;
        if (fatal?.code && fatal.code in ERROR_CODES)
          throw new SidekickError(fatal.code as ErrorCode, fatal.message.replace(/^SK_ERR_[A-Z_]+: /, ''));
        if (fatal) throw new Error(fatal.message);
        if (exited)
          throw new Error(`the agent worker exited during start (${how?.signal ?? `code ${how?.code ?? '?'}`})`);
        throw new SidekickError('SK_ERR_TIMEOUT', 'the agent worker did not become ready in time');
      }
      publishListener(this.listener);
    } catch (err) {
      await this.closeResources();
      throw err;
    }
    this.log.info(
      {
        socket: cfg.socket,
        worker: this.current?.pid,
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
    const admin = new AdminServer(socket);
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
    const server = new MetricsServer(address, this.registry);
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
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    clearTimeout(this.restartTimer);
    this.publishState();
    const budget = this.cfg.stopTimeoutMs;
    if (this.recycling) await settleWithin(this.recycling, budget);
    // The socket file goes first: from now on clients fail to connect (and count a drop) instead of queueing in a
    // backlog that nobody will accept; the worker accepts what is already queued before it closes the listener.
    this.listener?.file?.unlinkIfOurs();
    const live = [...this.workers].filter((w) => w.state !== 'exited');
    await Promise.all(
      live.map(async (w) => {
        w.expectedExit = true;
        if (w.state === 'ready' || w.state === 'starting') {
          this.sendTo(w, { t: 'stop', timeoutMs: budget });
          if (await settleWithin(w.exited.promise, budget + 3000)) return;
          this.log.error({ pid: w.pid, timeoutMs: budget }, 'agent worker did not stop in time; killing it');
        }
        w.child.kill('SIGKILL');
        await settleWithin(w.exited.promise, 5000);
      }),
    );
    await this.closeResources();
    this.log.info('sidekick agent stopped');
    this.stopped.resolve();
  }

  private async closeResources(): Promise<void> {
    for (const h of this.held.splice(0)) closeHandle(h.handle);
    if (this.listener) {
      closeListener(this.listener);
      this.listener = undefined;
    }
    await this.admin?.stop().catch(() => undefined);
    this.admin = undefined;
    await this.metricsServer?.stop().catch(() => undefined);
    this.metricsServer = undefined;
  }

  // ------------------------------------------------------------------------------------------------ workers

  private spawn(start: boolean, listener = this.listener!): WorkerRec {
    const child = fork(this.workerPath, [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc', listener.handle.fd],
      serialization: 'json',
    });
    const w: WorkerRec = {
      generation: ++this.generation,
      child,
      pid: child.pid,
      state: 'booting',
      spawnedAt: Date.now(),
      readyAt: 0,
      expectedExit: false,
      last: undefined,
      finalMetrics: undefined,
      fatal: undefined,
      standby: deferred(),
      ready: deferred(),
      exited: deferred(),
    };
    this.workers.add(w);
    child.on('message', (msg: FromWorker, handle: unknown) => this.onMessage(w, msg, handle));
    child.on('exit', (code, signal) => this.onExit(w, code, signal));
    child.on('error', (err) => this.log.error({ err, pid: w.pid }, 'agent worker process error'));
    this.sendTo(w, { t: 'init', config: this.cfg, start });
    if (start) w.state = 'starting';
    return w;
  }

  private sendTo(w: WorkerRec, msg: ToWorker, handle?: unknown, cb?: (err: Error | null) => void): void {
    if (!w.child.connected) {
      cb?.(new Error('worker not connected'));
      return;
    }
    try {
      w.child.send(msg, handle as never, {}, (err) => cb?.(err));
    } catch (err) {
      cb?.(err as Error);
    }
  }

  private onMessage(w: WorkerRec, msg: FromWorker, handle: unknown): void {
    switch (msg.t) {
      case 'standby':
        w.state = 'standby';
        w.standby.resolve(true);
        break;
      case 'ready':
        w.state = 'ready';
        w.readyAt = Date.now();
        if (w === this.current) this.backoff.started();
        w.ready.resolve(true);
        this.forwardHeld();
        this.publishState();
        break;
      case 'stats':
        w.last = { metrics: msg.metrics, status: msg.status };
        this.checkRecycle(w);
        break;
      case 'snapshot': {
        w.last = { metrics: msg.metrics, status: msg.status };
        const waiter = this.snapshotWaiters.get(msg.id);
        this.snapshotWaiters.delete(msg.id);
        waiter?.({ metrics: msg.metrics, status: msg.status });
        break;
      }
      case 'conn':
        if (handle) this.held.push({ handle, msg });
        this.forwardHeld();
        break;
      case 'released':
      case 'stopped':
        w.finalMetrics = msg.metrics;
        break;
      case 'fatal':
        w.fatal = { code: msg.code, message: msg.message };
        break;
      case 'reloaded':
        if (msg.restartRequired.length) this.log.info({ fields: msg.restartRequired }, 'worker asks for a recycle');
        break;
      case 'state':
        this.pipelineState = msg.state;
        this.publishState();
        break;
    }
  }

  /** Connections handed over by a leaving worker go to the current worker once it accepts. */
  private forwardHeld(): void {
    const target = this.current;
    if (!target || target.state !== 'ready' || this.held.length === 0) return;
    for (const { handle, msg } of this.held.splice(0)) {
      this.sendTo(target, { t: 'conn', partial: msg.partial, discarding: msg.discarding }, handle, (err) => {
        if (err) this.log.warn({ err: describeError(err) }, 'could not pass a connection to the new worker');
        closeHandle(handle); // the worker has its own copy now
      });
    }
  }

  private onExit(w: WorkerRec, code: number | null, signal: NodeJS.Signals | null): void {
    w.state = 'exited';
    this.workers.delete(w);
    this.retired = addCounters(this.retired, w.finalMetrics?.counters ?? w.last?.metrics.counters ?? zeroCounters());
    w.standby.resolve(false);
    w.ready.resolve(false);
    w.exited.resolve({ code, signal });
    if (w.expectedExit || this.stopping) return;
    const message = w.fatal?.message;
    this.lastCrash = { at: Date.now(), code, signal, ...(message ? { message } : {}) };
    if (w !== this.current) {
      this.log.warn({ pid: w.pid, code, signal }, 'a standby agent worker exited');
      return;
    }
    this.current = undefined;
    this.publishState();
    const { delayMs, consecutive } = this.backoff.failed();
    this.restarts++;
    this.log.error(
      { pid: w.pid, code, signal, restartInMs: delayMs, consecutive, reason: message },
      `agent worker exited unexpectedly (${signal ?? `code ${code}`}); restarting in ${delayMs} ms`,
    );
    this.restartTimer = setTimeout(() => {
      if (this.stopping || this.current) return;
      this.current = this.spawn(true);
      this.publishState();
    }, delayMs);
  }

  private checkRecycle(w: WorkerRec): void {
    if (w !== this.current || w.state !== 'ready' || this.recycling || this.stopping || !w.last) return;
    const r = this.cfg.recycle;
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
   * Replaces the current worker without closing the socket and without losing a record (see the top of this file).
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

  private async doRecycle(reason: string, listener: Listener | undefined): Promise<void> {
    const old = this.current;
    if (!old || old.state !== 'ready') {
      if (listener) {
        this.swapListener(listener);
        publishListener(listener);
      }
      return;
    }
    const t0 = Date.now();
    this.log.info({ reason, pid: old.pid }, `recycling the agent worker: ${reason}`);
    const next = this.spawn(false, listener ?? this.listener!);
    if (!(await settleWithin(next.standby.promise, STANDBY_TIMEOUT_MS))) {
      this.log.error({ reason }, 'recycle aborted: the replacement worker did not load');
      next.expectedExit = true;
      next.child.kill('SIGKILL');
      if (listener) closeListener(listener);
      return;
    }
    old.expectedExit = true;
    old.state = 'leaving';
    this.current = next;
    this.publishState();
    this.sendTo(old, { t: 'handover' });
    const budget = this.cfg.stopTimeoutMs;
    if (!(await settleWithin(old.exited.promise, budget + 3000))) {
      this.log.error({ pid: old.pid }, 'the old agent worker did not hand over in time; killing it');
      old.child.kill('SIGKILL');
      await settleWithin(old.exited.promise, 5000);
    }
    if (listener) this.swapListener(listener);
    if (next.state === 'exited') {
      if (listener) publishListener(listener); // crashed while waiting: the crash path restarts it
      return;
    }
    next.state = 'starting';
    this.sendTo(next, { t: 'start' });
    const ok = await settleWithin(next.ready.promise, 30_000 + SPOOL_LOCK_WAIT_MS);
    if (listener) publishListener(listener);
    this.recycles++;
    this.lastRecycle = { reason, at: Date.now() };
    this.log.info(
      { reason, oldPid: old.pid, newPid: next.pid, ms: Date.now() - t0, ok: !!ok },
      'agent worker recycled',
    );
  }

  private swapListener(listener: Listener): void {
    const old = this.listener;
    this.listener = listener;
    if (old && old !== listener) closeListener(old);
  }

  // ------------------------------------------------------------------------------------------------ reload

  /**
   * Applies a new, validated config (the caller loaded it; an invalid file never gets here, so the backlog is
   * untouched). Live settings go to the worker; socket and spool layout changes are applied by a recycle (the socket
   * is re-bound first; if the new path is in use, the old one is kept). spool.dir cannot change on a running agent.
   */
  async reload(config: AgentConfig): Promise<void> {
    if (this.stopping) return;
    let next = config;
    if (this.recycling) await this.recycling;
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
        const shared = await bindSharedSocket({ path: next.socket, mode: next.socketMode, group: next.socketGroup });
        newListener = { handle: shared.handle, path: next.socket, file: undefined, shared };
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
        this.listener?.file?.applyPermissions(next.socketMode, next.socketGroup);
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
      await this.recycle(`reload (${needsWorker.join(', ')})`, newListener);
    } else if (this.current?.state === 'ready') {
      this.sendTo(this.current, { t: 'reload', config: next });
    }
    this.log.info({ file: this.configFile }, 'agent config reloaded');
  }

  // ------------------------------------------------------------------------------------------------ status

  /** The state as the host sees it (also emitted as 'state' whenever it changes). */
  state(): AgentState {
    const w = this.current;
    const p = this.pipelineState;
    const profiling = this.cfg.profiling;
    return {
      state: this.stopping ? 'stopping' : w?.state === 'ready' ? 'running' : 'starting',
      breaker: p?.breaker ?? 'unknown',
      profiling: p ? p.profiling : profiling.enabled,
      sampleRate: p ? p.sampleRate : profiling.sampleRate,
      reason: p ? p.reason : profiling.enabled ? 'ok' : 'disabled',
      socket: this.cfg.socket,
    };
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
    const w = this.current;
    let live: { metrics: AgentMetricsSnapshot; status: AgentPipelineStatus } | undefined;
    if (w && w.state === 'ready' && w.child.connected) {
      const id = ++this.snapshotSeq;
      const got = new Promise<{ metrics: AgentMetricsSnapshot; status: AgentPipelineStatus }>((resolve) =>
        this.snapshotWaiters.set(id, resolve),
      );
      this.sendTo(w, { t: 'snapshot', id });
      live = await settleWithin(got, SNAPSHOT_TIMEOUT_MS);
      this.snapshotWaiters.delete(id);
    }
    live ??= w?.last;
    let counters = this.retired;
    for (const x of this.workers) {
      const m = x === w && live ? live.metrics : (x.finalMetrics ?? x.last?.metrics);
      if (m) counters = addCounters(counters, m.counters);
    }
    return { metrics: { counters, gauges: live?.metrics.gauges ?? zeroGauges() }, status: live?.status };
  }

  async status(): Promise<Record<string, unknown>> {
    const snap = await this.snapshot();
    const w = this.current;
    return {
      state: this.state().state,
      pid: process.pid,
      startedAt: this.startedAt,
      config: this.configFile,
      socket: this.cfg.socket,
      metrics: this.metricsServer ? { listen: this.cfg.metrics.listen, port: this.metricsServer.port() } : undefined,
      worker: w
        ? { pid: w.pid, generation: w.generation, state: w.state, spawnedAt: w.spawnedAt, readyAt: w.readyAt }
        : undefined,
      recycles: this.recycles,
      restarts: this.restarts,
      lastRecycle: this.lastRecycle,
      lastCrash: this.lastCrash,
      counters: snap.metrics.counters,
      gauges: snap.metrics.gauges,
      pipeline: snap.status,
    };
  }
}

function closeHandle(handle: unknown): void {
  try {
    (handle as { close(): void }).close();
  } catch {
    // already closed
  }
}
