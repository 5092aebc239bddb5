// `sidekick serve` as a component: every app of a config, the admin socket, reload (SIGHUP, dev file watching)
// and graceful shutdown. The CLI wraps it and owns process signals and exit codes.
import { watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { SidekickError, describeError } from '../errors.js';
import { childLogger, logCounts, type LogCounts } from '../log/logger.js';
import { agentConfigOf, loadConfig, type LoadedConfig } from '../config/load.js';
import { AdminServer } from '../admin/server.js';
import { StatusPageServer } from '../admin/page/server.js';
import { AppSupervisor, type AppStatus } from './app-supervisor.js';
import type { AgentStatus } from '../agent/supervisor/supervisor.js';
import { AGENT_SIDEKICK, AgentVarsSource } from './agent-source.js';
import { LifecycleLog } from '../common/lifecycle.js';
import { maskVars } from '../vars/mask.js';
import { ServeMetrics } from './metrics.js';
import { Coalesced } from '../common/coalesce.js';
import type { HealthProbes, HealthVerdict } from '../common/health.js';

/** `sidekick status` of a `sidekick serve` instance (GET /status on the admin socket). */
export interface ServeStatus {
  agent: AgentStatus | undefined;
  pid: number;
  uptimeMs: number;
  config: string | undefined;
  reloads: number;
  /** The supervisor's own log lines and drops; each app's sidekick host and HTTP workers report theirs per app. */
  log: LogCounts;
  apps: AppStatus[];
}

export class ServeRuntime {
  private readonly apps = new Map<string, AppSupervisor>();
  private agent: AgentVarsSource | undefined;
  private admin: AdminServer | undefined;
  private page: StatusPageServer | undefined;
  private metrics: ServeMetrics | undefined;
  private watchers: FSWatcher[] = [];
  private readonly log = childLogger({ component: 'serve' });
  /** One reload at a time; SIGHUPs (or file changes) during one become exactly one more after it. */
  private readonly reloadRuns = new Coalesced(
    () => this.doReload(),
    (first) =>
      this.log.info(
        first
          ? 'reload requested while one runs; queued: one more reload follows it, reading the config then'
          : 'reload requested while one runs; joins the reload already queued',
      ),
  );
  private readonly startedAt = Date.now();
  private reloads = 0;
  /** Readiness: false until start() has every HTTP worker listening; `stopping` from the first line of stop(). */
  private started = false;
  private stopping = false;
  /** /healthz and /readyz on the admin socket and `metrics.listen`. */
  private readonly health: HealthProbes = { ready: () => this.readiness() };
  /** Crashes, restarts, reloads, breaker changes: the timeline `GET /events` and the status page show. */
  readonly lifecycle = new LifecycleLog();

  constructor(private loaded: LoadedConfig) {}

  async start(): Promise<void> {
    const { config } = this.loaded;
    this.admin = new AdminServer(config.admin.socket!, this.health);
    this.admin.route('status', () => this.status());
    this.admin.route('vars', ([app, name]) => {
      const cur =
        name === AGENT_SIDEKICK && this.agent
          ? this.agent.current()
          : app && name
            ? this.apps.get(app)?.registry.current(name)
            : undefined;
      if (!cur) throw new SidekickError('SK_ERR_NOT_READY', `no snapshot for ${app}/${name}`, { app, name });
      if (this.loaded.config.admin.showValues) return { app, name, generation: cur.generation, vars: cur.vars };
      // Vars can hold secrets: by default only what tells two snapshots apart (src/vars/mask.ts).
      const masked = maskVars(cur.vars);
      return { app, name, generation: cur.generation, masked: true, vars: masked };
    });
    this.admin.route('events', () => this.lifecycle.recent());
    await this.admin.start();
    try {
      // /metrics first: a taken address fails the start before anything else is spawned.
      this.metrics = await ServeMetrics.start(config.metrics.listen, () => this.status(), this.health);
      if (config.agent) {
        // The agent first, so the apps' first requests already have somewhere to send their records.
        this.agent = new AgentVarsSource(agentConfigOf(config), this.loaded.file, this.lifecycle);
        await this.agent.start();
      }
      const shared = this.agent ? [this.agent] : [];
      for (const app of config.apps) this.apps.set(app.name, new AppSupervisor(app, shared, this.lifecycle));
      await Promise.all([...this.apps.values()].map((a) => a.start()));
      if (config.admin.http) {
        this.page = new StatusPageServer({
          listen: config.admin.http.listen,
          token: config.admin.http.token,
          showValues: () => this.loaded.config.admin.showValues,
          status: () => this.status(),
          lifecycle: this.lifecycle,
          vars: (app, name) =>
            name === AGENT_SIDEKICK && this.agent ? this.agent.current() : this.apps.get(app)?.registry.current(name),
        });
        await this.page.start();
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.started = true;
    if (config.dev.watch) this.watchFiles();
    this.log.info({ apps: config.apps.map((a) => ({ name: a.name, workers: a.workers })) }, 'sidekick serve ready');
  }

  /**
   * Reload: re-read the config (invalid → keep running on the old one and say why), then roll every app.
   * Apps added or removed, or a changed listen address, need a restart; that is logged, not applied.
   * Asked for while a reload runs, it is coalesced: one more reload runs after the current one (never dropped, since
   * the config may have been edited after the running reload read it), however many requests came meanwhile.
   */
  reload(): Promise<void> {
    return this.reloadRuns.request();
  }

  private async doReload(): Promise<void> {
    this.reloads++;
    const n = this.reloads;
    this.lifecycle.record({ kind: 'reload', detail: `reload ${n}` });
    this.log.info({ reload: n }, 'reload started');
    await this.reloadOnce();
    this.log.info({ reload: n }, 'reload finished');
  }

  private async reloadOnce(): Promise<void> {
    let next: LoadedConfig | undefined;
    if (this.loaded.file) {
      try {
        next = await loadConfig(this.loaded.file);
      } catch (err) {
        this.log.error({ err: describeError(err) }, 'reload: config invalid; keeping the running config');
      }
    }
    const tasks: Promise<void>[] = [];
    for (const [name, sup] of this.apps) {
      const appCfg = next?.config.apps.find((a) => a.name === name);
      if (next && !appCfg) this.log.warn({ app: name }, 'reload: app removed from config; restart to apply');
      tasks.push(sup.reload(appCfg));
    }
    if (next) {
      const cur = this.loaded.config;
      const changed = (a: unknown, b: unknown): boolean => JSON.stringify(a) !== JSON.stringify(b);
      if (changed(cur.metrics, next.config.metrics))
        this.log.warn({ field: 'metrics' }, 'reload: metrics.listen changed; restart to apply');
      // admin.showValues is read at each request (`sidekick vars`, the status page): it applies with this reload.
      if (changed({ ...cur.admin, showValues: 0 }, { ...next.config.admin, showValues: 0 }))
        this.log.warn({ field: 'admin' }, 'reload: admin.socket or admin.http changed; restart to apply');
      if (cur.admin.showValues !== next.config.admin.showValues)
        this.log.info({ showValues: next.config.admin.showValues }, 'reload: admin.showValues applied');
      for (const a of next.config.apps)
        if (!this.apps.has(a.name)) this.log.warn({ app: a.name }, 'reload: new app in config; restart to apply');
      this.loaded = next;
    }
    // The agent takes the config read here (one view of the file); an invalid file left it untouched above.
    if (this.agent && next?.config.agent) tasks.push(this.agent.reload(agentConfigOf(next.config)));
    else if (this.agent && next) this.log.warn('reload: agent section removed from config; restart to apply');
    await Promise.all(tasks);
  }

  private watchFiles(): void {
    const dirs = new Set<string>();
    if (this.loaded.file) dirs.add(dirname(this.loaded.file));
    for (const app of this.loaded.config.apps) {
      dirs.add(dirname(app.handler));
      if (app.sidekicks.entrypoint) dirs.add(dirname(app.sidekicks.entrypoint));
    }
    let timer: NodeJS.Timeout | undefined;
    for (const dir of dirs) {
      const w = watch(dir, { recursive: true }, (_event, file) => {
        if (!file || /(^|\/)(node_modules|var|\.git)(\/|$)/.test(file) || !/\.(m?js|cjs|json|ts)$/.test(file)) return;
        clearTimeout(timer);
        timer = setTimeout(() => {
          this.log.info({ file }, 'file changed; reloading');
          void this.reload();
        }, 200);
      });
      this.watchers.push(w);
    }
  }

  async stop(): Promise<void> {
    // Not ready from here on: a load balancer takes the instance out while in-flight requests drain, before the
    // workers stop accepting (the admin socket and metrics.listen close last, so they answer 503 meanwhile).
    this.stopping = true;
    for (const w of this.watchers) w.close();
    this.watchers = [];
    await this.reloadRuns.close(); // a reload under way finishes; a queued one is skipped
    // The status page first: its event streams end, so browsers do not hold the stop up.
    await this.page?.stop();
    // Apps drain first: their last requests may still send records to the agent.
    await Promise.all([...this.apps.values()].map((a) => a.stop()));
    await this.agent?.stop();
    await this.metrics?.stop();
    await this.admin?.stop();
  }

  /**
   * Can this instance take traffic (/readyz)? Not while starting or stopping; then the first app that cannot
   * (app-supervisor.ts readiness()), then the agent's (agent/supervisor/readiness.ts: its breaker open is a warning,
   * not a failure). Reads only what the supervisor holds: no round trip to a child, so a slow child cannot time it out.
   */
  readiness(): HealthVerdict {
    if (this.stopping) return { ok: false, reason: 'stopping: draining HTTP workers' };
    if (!this.started) return { ok: false, reason: 'starting: HTTP workers not listening yet' };
    for (const [name, app] of this.apps) {
      const why = app.readiness();
      if (why) return { ok: false, reason: `app ${name}: ${why}` };
    }
    const agent = this.agent?.readiness();
    if (agent && !agent.ok) return { ok: false, reason: `agent: ${agent.reason ?? 'not ready'}` };
    return { ok: true, warning: agent?.warning && `agent: ${agent.warning}` };
  }

  async status(): Promise<ServeStatus> {
    return {
      agent: this.agent ? await this.agent.status() : undefined,
      pid: process.pid,
      uptimeMs: Date.now() - this.startedAt,
      config: this.loaded.file,
      reloads: this.reloads,
      log: logCounts(),
      apps: await Promise.all([...this.apps.values()].map((a) => a.status())),
    };
  }
}
