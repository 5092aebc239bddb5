// One app under `sidekick serve`: its HTTP worker processes (node:cluster) and its sidekick host process.
// Relays snapshots to every worker, answers their ensure/task requests, restarts crashed workers with backoff,
// and rolls workers one at a time on reload (the new one listens before the old one drains).
import cluster, { type Worker } from 'node:cluster';
import { SidekickError, describeError, errorFromData, errorToData } from '../errors.js';
import { childLogger, type LogCounts } from '../log/logger.js';
import type { AppConfig } from '../config/schema.js';
import { RestartBackoff } from '../common/backoff.js';
import { settleWithin, withDeadline } from '../common/async.js';
import { PING_INTERVAL_MS, WorkerHealth } from './worker-health.js';
import { WorkerChannel } from './worker-channel.js';
import { LifecycleLog } from '../common/lifecycle.js';
import { Coalesced } from '../common/coalesce.js';
import { SidekickHost, type SidekickHostStatus } from './sidekick-host.js';
import type { SidekickStatus } from '../sidekicks/instance.js';
import {
  isSidekickMessage,
  type PrimaryToWorker,
  type WorkerSettings,
  type WorkerToPrimary,
} from '../sidekicks/messages.js';
import type { Vars } from '../vars/snapshot.js';
import { failedTask, type TaskCall, type TaskHandle } from '../sidekicks/task-handle.js';

/** Vars published by something other than this app's registry (the built-in agent), relayed to every app. */
export interface VarsSource {
  on(event: 'vars', fn: (name: string, vars: Vars, generation: number) => void): unknown;
  on(event: 'failed', fn: (name: string, error: SidekickError) => void): unknown;
  declares(name: string): boolean;
  ensure(name: string): void;
  task(name: string, payload: unknown, call: TaskCall): TaskHandle;
  snapshots(): { name: string; vars: Vars; generation: number }[];
}

const WORKER_MAIN = new URL('./worker-main.js', import.meta.url);
const LISTEN_TIMEOUT_MS = 30_000;

type WorkerState = 'starting' | 'listening' | 'draining';

interface WorkerInfo {
  /** Taken at fork: a reload that changes the config meanwhile does not change what this worker was started with. */
  settings: WorkerSettings;
  worker: Worker;
  state: WorkerState;
  startedAt: number;
  health: WorkerHealth;
  /** Set when the supervisor decided this worker's end (unresponsive kill, recycle): the exit is not a crash. */
  ending?: 'unresponsive' | 'recycle';
  listenError?: string;
  channel: WorkerChannel;
  /** Its requestTasks in flight, by its own ids: cancelled when it asks, or when it dies (the asker is gone). */
  tasks: Map<number, TaskHandle>;
}

/** One app in `sidekick status` (and what /metrics and the status page read). */
export interface AppStatus {
  name: string;
  listen: AppConfig['listen'];
  workers: {
    pid: number | undefined;
    state: WorkerState;
    startedAt: string;
    rss: number | undefined;
    /** Its log lines and drops, as of its last pong. */
    log: LogCounts | undefined;
  }[];
  workerRestarts: number;
  unresponsiveKills: number;
  recycles: number;
  handlerErrors: number;
  handlerTimeouts: number;
  taskTimeouts: number;
  /** Log lines the app's HTTP workers dropped because stderr was not drained (gone workers included). */
  logDropped: number;
  sidekicks: SidekickStatus[];
  /** The process the app's sidekick threads run in. */
  sidekickHost: SidekickHostStatus;
}

export class AppSupervisor {
  /** The app's sidekicks, in their own host process; it keeps every last snapshot here in the supervisor. */
  readonly registry: SidekickHost;
  private readonly workers = new Map<number, WorkerInfo>();
  private readonly backoff = new RestartBackoff({ baseMs: 100, maxMs: 5000, stableAfterMs: 10_000 });
  private stopping = false;
  /** One roll at a time; a reload asked for during one becomes one more roll after it (with the newest config). */
  private readonly rolls = new Coalesced(() => this.roll());
  private readonly log;
  private restarts = 0;
  private unresponsiveKills = 0;
  private recycles = 0;
  /** Handler counters of workers that are gone (live workers report theirs in each pong). */
  private retired = { handlerErrors: 0, handlerTimeouts: 0, taskTimeouts: 0, logDropped: 0 };
  private healthTimer: NodeJS.Timeout | undefined;
  /** A crashed HTTP worker's replacement waiting out its backoff: cancelled by stop(). */
  private replaceTimer: NodeJS.Timeout | undefined;

  /**
   * @param shared registries whose sidekicks every app sees as its own (the built-in agent sidekick): their snapshots
   * are relayed to this app's workers, and a worker's getVars for one of their names goes to them.
   */
  constructor(
    private config: AppConfig,
    private readonly shared: VarsSource[] = [],
    private readonly lifecycle = new LifecycleLog(),
  ) {
    this.log = childLogger({ component: 'app', app: config.name });
    this.registry = new SidekickHost(config.name, config.sidekicks);
    this.registry.on('host-died', (how, pid) =>
      this.lifecycle.record({ kind: 'sidekick_host_died', app: config.name, pid, detail: how }),
    );
    this.registry.on('lifecycle', (name, e) =>
      this.lifecycle.record({
        kind: e.kind,
        app: config.name,
        sidekick: name,
        generation: e.generation,
        detail: e.detail,
      }),
    );
    for (const source of [this.registry as VarsSource, ...shared]) {
      source.on('vars', (name, vars, generation) => {
        for (const info of this.workers.values()) info.channel.sendVars({ sk: 'vars', name, vars, generation });
      });
      source.on('failed', (name, error) => this.broadcast({ sk: 'failed', name, error: errorToData(error) }));
    }
  }

  private registryFor(name: string): VarsSource {
    return this.shared.find((r) => r.declares(name)) ?? this.registry;
  }

  get name(): string {
    return this.config.name;
  }

  /** Starts declared sidekicks and all HTTP workers; resolves when every worker listens. */
  async start(): Promise<void> {
    this.registry.start(); // the host starts the declared sidekicks
    await Promise.all(Array.from({ length: this.config.workers }, () => this.fork()));
    this.healthTimer = setInterval(() => this.checkHealth(), PING_INTERVAL_MS);
    this.healthTimer.unref();
  }

  /** Acts on last round's answers, then pings every listening worker for the next round. */
  private checkHealth(): void {
    if (this.stopping) return;
    const now = Date.now();
    for (const info of this.workers.values()) {
      if (info.state !== 'listening' || info.ending) continue;
      const verdict = info.health.verdict(this.config, now);
      if (verdict.action === 'kill') {
        info.ending = 'unresponsive';
        this.unresponsiveKills++;
        this.log.error(
          { pid: info.worker.process.pid, silentMs: verdict.silentMs, unresponsiveMs: this.config.unresponsiveMs },
          'HTTP worker unresponsive (its event loop did not answer); killing and replacing it',
        );
        info.worker.process.kill('SIGKILL');
        this.lifecycle.record({
          kind: 'worker_unresponsive',
          app: this.config.name,
          pid: info.worker.process.pid,
          detail: `no answer for ${verdict.silentMs} ms; killed`,
        });
        continue;
      }
      if (verdict.action === 'recycle' && !this.rolls.busy) {
        info.ending = 'recycle';
        this.recycles++;
        this.log.warn(
          { pid: info.worker.process.pid, reason: verdict.reason, rss: verdict.rss, uptimeMs: verdict.uptimeMs },
          'recycling HTTP worker: a replacement listens first, then it drains',
        );
        this.lifecycle.record({
          kind: 'worker_recycled',
          app: this.config.name,
          pid: info.worker.process.pid,
          detail: verdict.reason === 'rss' ? `RSS ${Math.round(verdict.rss / 1048576)} MiB` : 'max uptime',
        });
        void this.recycle(info);
        continue;
      }
      info.channel.send({ sk: 'ping', id: info.health.ping(now) });
    }
  }

  private async recycle(info: WorkerInfo): Promise<void> {
    try {
      await this.fork();
    } catch (err) {
      this.log.error(
        { err: describeError(err) },
        'recycle: the replacement failed to start; the old worker keeps serving',
      );
      info.ending = undefined;
      return;
    }
    await this.drainWorker(info);
  }

  private fork(): Promise<WorkerInfo> {
    const settings: WorkerSettings = {
      app: this.config.name,
      handler: this.config.handler,
      listen: this.config.listen,
      drainTimeoutMs: this.config.drainTimeoutMs,
      handlerTimeoutMs: this.config.handlerTimeoutMs,
      taskQueue: this.config.sidekicks.taskQueue,
    };
    cluster.setupPrimary({ exec: WORKER_MAIN.pathname, serialization: 'advanced', args: [] });
    // The env var only marks the process as a serve worker (api.ts); everything else comes with `init`.
    const worker = cluster.fork({ SIDEKICK_SERVE_APP: this.config.name });
    const info: WorkerInfo = {
      worker,
      settings,
      state: 'starting',
      startedAt: Date.now(),
      health: new WorkerHealth(Date.now()),
      channel: new WorkerChannel(worker, this.log),
      tasks: new Map(),
    };
    this.workers.set(worker.id, info);
    worker.on('message', (msg: unknown) => {
      if (isSidekickMessage(msg)) this.onWorkerMessage(info, msg as WorkerToPrimary);
    });
    worker.on('exit', (code, signal) => this.onWorkerExit(info, code, signal));
    let listened = false;
    const listening = new Promise<WorkerInfo>((resolve, reject) => {
      worker.once('listening', () => {
        listened = true;
        if (info.state === 'starting') info.state = 'listening'; // not a worker a stop already drains
        this.backoff.started();
        resolve(info);
      });
      worker.once('exit', (code) => {
        // Also when a stop drained it before it listened: a promise left pending would keep its 30 s deadline timer,
        // and the process, alive after "stopped".
        if (listened) return;
        const where =
          this.config.listen.kind === 'unix'
            ? this.config.listen.path
            : `${this.config.listen.host}:${this.config.listen.port}`;
        reject(
          new SidekickError(
            'SK_ERR_LISTEN',
            `HTTP worker of app "${this.config.name}" exited (code ${code}) before listening on ${where}${info.listenError ? `: ${info.listenError}` : ''}`,
            { app: this.config.name },
          ),
        );
      });
    });
    return withDeadline(listening, LISTEN_TIMEOUT_MS, `HTTP worker of app "${this.config.name}" listening`, {
      timeoutError: () =>
        new SidekickError(
          'SK_ERR_TIMEOUT',
          `HTTP worker of app "${this.config.name}" did not listen within ${LISTEN_TIMEOUT_MS} ms`,
          { app: this.config.name, timeoutMs: LISTEN_TIMEOUT_MS },
        ),
    }).catch((err: unknown) => {
      if (info.state === 'starting') worker.kill();
      throw err;
    });
  }

  private onWorkerMessage(info: WorkerInfo, msg: WorkerToPrimary): void {
    switch (msg.sk) {
      case 'hello':
        info.channel.send({
          sk: 'init',
          settings: info.settings,
          snapshots: [this.registry, ...this.shared].flatMap((r) => r.snapshots()),
        });
        break;
      case 'ensure':
        try {
          this.registryFor(msg.name).ensure(msg.name);
        } catch (err) {
          info.channel.send({ sk: 'failed', name: msg.name, error: errorToData(err) });
        }
        break;
      case 'task': {
        const { id } = msg;
        const onProgress = msg.progress ? (value: unknown) => info.channel.sendProgress(id, value) : undefined;
        let handle: TaskHandle;
        try {
          handle = this.registryFor(msg.name).task(msg.name, msg.payload, { reply: msg.reply, onProgress });
        } catch (err) {
          handle = failedTask(err as Error);
        }
        // Fire-and-forget tasks outlive their sender; a requestTask is cancelled if its HTTP worker dies.
        if (msg.reply) info.tasks.set(id, handle);
        handle.result.then(
          (value) => {
            info.tasks.delete(id);
            info.channel.sendTaskDone({ sk: 'task-done', id, ok: true, value });
          },
          (err: unknown) => {
            info.tasks.delete(id);
            info.channel.sendTaskDone({ sk: 'task-done', id, ok: false, error: errorToData(err) });
          },
        );
        break;
      }
      case 'task-cancel':
        info.tasks.get(msg.id)?.cancel(errorFromData(msg.reason));
        break;
      case 'listen-error':
        info.listenError = msg.message;
        break;
      case 'pong':
        info.health.pong(msg.id, msg);
        break;
      default:
        break;
    }
  }

  private onWorkerExit(info: WorkerInfo, code: number | null, signal: string | null): void {
    this.workers.delete(info.worker.id);
    // Nobody waits for the answers of its requestTasks any more: their handlers' signals abort.
    if (info.tasks.size > 0) {
      const how = signal ? `signal ${signal}` : `exit code ${code}`;
      const gone = new SidekickError(
        'SK_ERR_ABORTED',
        `the HTTP worker that asked for this task (pid ${info.worker.process.pid}) exited (${how})`,
        { app: this.config.name, pid: info.worker.process.pid },
      );
      for (const handle of info.tasks.values()) handle.cancel(gone);
      info.tasks.clear();
    }
    const last = info.health.latest;
    if (last) {
      this.retired.handlerErrors += last.handlerErrors;
      this.retired.handlerTimeouts += last.handlerTimeouts;
      this.retired.taskTimeouts += last.taskTimeouts;
      this.retired.logDropped += last.log.dropped;
    }
    if (this.stopping || info.state === 'draining' || info.state === 'starting') return;
    // An unplanned exit (or an unresponsive one we killed): the others keep serving; replace it after a backoff.
    this.restarts++;
    if (info.ending !== 'unresponsive') {
      this.log.warn({ workerPid: info.worker.process.pid, code, signal }, 'HTTP worker died; restarting');
      this.lifecycle.record({
        kind: 'worker_died',
        app: this.config.name,
        pid: info.worker.process.pid,
        detail: signal ? `signal ${signal}` : `exit code ${code}`,
      });
    }
    this.replaceLater();
  }

  private replaceLater(): void {
    if (this.stopping) return;
    const { delayMs, consecutive } = this.backoff.failed();
    clearTimeout(this.replaceTimer);
    this.replaceTimer = setTimeout(() => {
      this.replaceTimer = undefined;
      if (this.stopping) return;
      this.fork().catch((err: unknown) => {
        if (this.stopping) return;
        this.log.error({ err: describeError(err), consecutive }, 'HTTP worker restart failed; retrying');
        this.replaceLater();
      });
    }, delayMs);
  }

  private broadcast(msg: PrimaryToWorker): void {
    for (const { channel } of this.workers.values()) channel.send(msg);
  }

  /** Reload: restart sidekicks (generation + 1) and roll HTTP workers one at a time with zero failed requests. */
  reload(config?: AppConfig): Promise<void> {
    if (config) {
      this.config = config;
      this.registry.reconfigure(config.sidekicks);
    }
    return this.rolls.request();
  }

  private async roll(): Promise<void> {
    const sidekicks = this.registry.restartAll();
    const old = [...this.workers.values()].filter((w) => w.state !== 'draining');
    const target = this.config.workers;
    for (let i = 0; i < Math.max(old.length, target); i++) {
      if (this.stopping) break;
      if (i < target) {
        try {
          await this.fork(); // the replacement listens before its predecessor drains
        } catch (err) {
          this.log.error(
            { err: describeError(err) },
            'reload aborted: a new HTTP worker failed to start; old workers keep serving',
          );
          break;
        }
      }
      const previous = old[i];
      if (previous) this.drainWorker(previous);
    }
    await sidekicks;
    this.log.info({ workers: target }, 'reload complete');
  }

  private async drainWorker(info: WorkerInfo): Promise<void> {
    const wasStarting = info.state === 'starting';
    info.state = 'draining';
    const exited = new Promise<void>((resolve) => {
      if (info.worker.isDead()) return resolve();
      info.worker.once('exit', () => resolve());
    });
    info.channel.send({ sk: 'drain' });
    // A worker still loading (a crash replacement forked just before a stop) may not listen to messages yet and would
    // lose the drain message: SIGTERM drains it too once it is loaded, and ends it before that (nothing to lose then).
    if (wasStarting) info.worker.process.kill('SIGTERM');
    // Bounded: the worker enforces drainTimeoutMs itself; this is the backstop if it is wedged.
    const backstopMs = this.config.drainTimeoutMs + 5000;
    if (
      (await settleWithin(
        exited.then(() => true),
        backstopMs,
      )) === undefined
    ) {
      this.log.warn(
        { workerPid: info.worker.process.pid, backstopMs },
        'HTTP worker did not drain in time; killing it',
      );
      info.worker.process.kill('SIGKILL');
      await exited;
    }
  }

  /** Graceful stop: drain every HTTP worker (in-flight requests finish, bounded), then stop the sidekicks. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.healthTimer);
    clearTimeout(this.replaceTimer); // a crashed worker's pending restart: nothing is forked after a stop
    await this.rolls.close();
    await Promise.all([...this.workers.values()].map((w) => this.drainWorker(w)));
    await this.registry.stop();
  }

  /**
   * Why this app cannot take traffic now (undefined: it can). Read on every /readyz, so it only looks at what the
   * supervisor holds (no round trip to a child):
   * - at least one HTTP worker listening (not every one: while one is replaced after a crash or rolled in a reload,
   *   the others serve; the app's port is refused only when none listens);
   * - every `start: 'boot'` sidekick has published at least once (the supervisor holds its last snapshot; a later
   *   crash or a dead sidekick host does not undo it, the snapshot keeps being served).
   */
  readiness(): string | undefined {
    const workers = [...this.workers.values()];
    if (!workers.some((w) => w.state === 'listening')) {
      const starting = workers.filter((w) => w.state === 'starting').length;
      return `no HTTP worker listening (${starting} starting, ${this.restarts} restarts)`;
    }
    for (const [name, decl] of Object.entries(this.config.sidekicks.declare)) {
      if (decl.start !== 'boot' || this.registry.current(name)) continue;
      const st = this.registry.lastStatus(name);
      const why = st?.lastError ? `${st.state}: ${st.lastError}` : (st?.state ?? 'starting');
      return `sidekick ${name} has not published (${why})`;
    }
    return undefined;
  }

  async status(): Promise<AppStatus> {
    const live = { ...this.retired };
    for (const w of this.workers.values()) {
      live.handlerErrors += w.health.latest?.handlerErrors ?? 0;
      live.handlerTimeouts += w.health.latest?.handlerTimeouts ?? 0;
      live.taskTimeouts += w.health.latest?.taskTimeouts ?? 0;
      live.logDropped += w.health.latest?.log.dropped ?? 0;
    }
    return {
      name: this.config.name,
      listen: this.config.listen,
      workers: [...this.workers.values()].map((w) => ({
        pid: w.worker.process.pid,
        state: w.state,
        startedAt: new Date(w.startedAt).toISOString(),
        rss: w.health.latest?.rss,
        log: w.health.latest?.log,
      })),
      workerRestarts: this.restarts,
      unresponsiveKills: this.unresponsiveKills,
      recycles: this.recycles,
      handlerErrors: live.handlerErrors,
      handlerTimeouts: live.handlerTimeouts,
      taskTimeouts: live.taskTimeouts,
      logDropped: live.logDropped,
      sidekicks: await this.registry.status(),
      sidekickHost: this.registry.hostStatus(),
    };
  }
}
