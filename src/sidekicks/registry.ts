// All sidekicks of one app: starts each name at most once, enforces the lazy-start cap, runs declared ones at boot,
// routes tasks, and restarts or stops them together. Used in-process (library mode) and, under `sidekick serve`, in
// each app's sidekick host process (serve/host-main.ts), whose supervisor relays its events to the HTTP workers.
import { EventEmitter } from 'node:events';
import { SidekickError, describeError } from '../errors.js';
import { childLogger } from '../log/logger.js';
import type { SidekicksConfig } from '../config/schema.js';
import type { Vars } from '../vars/snapshot.js';
import type { InstanceEvents, SidekickResume, SidekickStatus } from './instance.js';
import { SidekickPool } from './pool.js';
import type { TaskCall, TaskHandle } from './task-handle.js';
import { assertName } from './names.js';

export interface RegistryEvents {
  vars: [name: string, vars: Vars, generation: number];
  failed: [name: string, error: SidekickError];
  lifecycle: [name: string, event: InstanceEvents['lifecycle'][0]];
}

export class SidekickRegistry extends EventEmitter<RegistryEvents> {
  private readonly instances = new Map<string, SidekickPool>();
  private lazyCount = 0;
  private stopped = false;
  private readonly log;

  constructor(
    readonly app: string,
    readonly config: SidekicksConfig,
    /** Library mode: threads must not keep the host process alive. */
    private readonly unrefThreads = false,
  ) {
    super();
    this.log = childLogger({ component: 'sidekicks', app });
  }

  /** Starts `name` unless it is already running (or starting). Throws for bad names, caps, or a stopped registry. */
  ensure(name: string): void {
    assertName(name);
    if (this.stopped) throw new SidekickError('SK_ERR_STOPPED', `app "${this.app}" is stopping`, { app: this.app });
    const existing = this.instances.get(name);
    if (existing) {
      if (existing.isFailed) existing.start(); // a new request after giving up = fresh attempts
      return;
    }
    this.create(name).start();
  }

  /**
   * Takes over sidekicks that ran in a sidekick host process that died (`sidekick serve`): each carries on from its
   * last status and snapshot, restarting with generation + 1 (SidekickInstance.resume).
   */
  resume(previous: SidekickResume[], reason: string): void {
    for (const { status, vars } of previous) {
      if (this.instances.has(status.name)) continue;
      try {
        this.create(status.name).resume(status, vars, reason);
      } catch (err) {
        // The config changed under it (a reload removed its entrypoint): it is not started again; say why.
        this.log.warn({ sidekick: status.name, err: describeError(err) }, 'sidekick not resumed after host restart');
      }
    }
  }

  private create(name: string): SidekickPool {
    if (!this.config.entrypoint && !this.config.declare[name]?.entrypoint && !this.config.declare[name]?.source) {
      throw new SidekickError(
        'SK_ERR_NO_ENTRYPOINT',
        `app "${this.app}" has no sidekicks.entrypoint; cannot start "${name}"`,
        {
          app: this.app,
          name,
        },
      );
    }
    const declared = this.config.declare[name];
    if (!declared) {
      if (this.lazyCount >= this.config.maxLazy) {
        throw new SidekickError(
          'SK_ERR_LAZY_CAP',
          `app "${this.app}" already started ${this.lazyCount} sidekicks lazily (cap sidekicks.maxLazy = ${this.config.maxLazy}); refusing "${name}"`,
          { app: this.app, name, cap: this.config.maxLazy },
        );
      }
      this.lazyCount++;
    }
    const instance = new SidekickPool(
      this.app,
      name,
      this.config,
      this.log.child({ sidekick: name }),
      this.unrefThreads,
    );
    instance.on('vars', (vars, generation) => this.emit('vars', name, vars, generation));
    instance.on('failed', (error) => this.emit('failed', name, error));
    instance.on('lifecycle', (event) => this.emit('lifecycle', name, event));
    this.instances.set(name, instance);
    return instance;
  }

  /** True if `name` is declared in this registry's config. */
  declares(name: string): boolean {
    return Object.hasOwn(this.config.declare, name);
  }

  /** Reload: new limits, entrypoint and schedules apply from each sidekick's next generation. */
  reconfigure(config: SidekicksConfig): void {
    Object.assign(this.config, config);
  }

  /** Starts the sidekicks declared with `start: 'boot'`. */
  startDeclared(): void {
    for (const [name, decl] of Object.entries(this.config.declare)) if (decl.start === 'boot') this.ensure(name);
  }

  current(name: string): { vars: Vars; generation: number } | undefined {
    return this.instances.get(name)?.current;
  }

  /** Every published snapshot, e.g. to initialise a freshly started HTTP worker. */
  snapshots(): { name: string; vars: Vars; generation: number }[] {
    const out: { name: string; vars: Vars; generation: number }[] = [];
    for (const [name, inst] of this.instances) {
      const cur = inst.current;
      if (cur) out.push({ name, ...cur });
    }
    return out;
  }

  /** Sends a task, starting the sidekick lazily if needed; throws (synchronously) what ensure() throws. */
  task(name: string, payload: unknown, call: TaskCall): TaskHandle {
    this.ensure(name);
    return this.instances.get(name)!.task(payload, call);
  }

  /** Reload: every running sidekick moves to its next generation; snapshots stay served meanwhile. */
  async restartAll(): Promise<void> {
    await Promise.all([...this.instances.values()].map((i) => i.restart()));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.instances.values()].map((i) => i.stop()));
  }

  status(): SidekickStatus[] {
    return [...this.instances.values()].map((i) => i.status());
  }
}
