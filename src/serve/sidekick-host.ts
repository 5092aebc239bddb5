// The supervisor's side of one app's sidekick host process (host-main.ts): forks it, relays ensure/task requests to
// it, and keeps what must outlive it — every sidekick's latest snapshot (served to HTTP workers exactly as before),
// readiness, generations and counters. When the host dies (V8 fatal error, abort, OOM kill, a native crash) the
// supervisor logs the cause and starts a new host with backoff; the sidekicks carry on there with generation + 1
// (SidekickInstance.resume), while the HTTP workers keep reading the last snapshots.
//
// What callers see while a host is down: getVars waiters keep waiting (their own deadline applies; a sidekick that
// never published counts the host's death as a boot failure, so after maxBootFailures they get SK_ERR_BOOT_FAILED
// naming the host's exit); tasks in flight in the dead host fail with SK_ERR_HOST_DIED (a task may have run in part,
// so it is not sent again); tasks and ensures that arrive meanwhile wait for the next host.
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { SidekickError, describeError, errorFromData, errorToData } from '../errors.js';
import { childLogger, type LogCounts } from '../log/logger.js';
import type { SidekicksConfig } from '../config/schema.js';
import { RestartBackoff } from '../common/backoff.js';
import { settleWithin, withDeadline } from '../common/async.js';
import { adoptSnapshot, type Vars } from '../vars/snapshot.js';
import type { RegistryEvents } from '../sidekicks/registry.js';
import type { SidekickStatus } from '../sidekicks/instance.js';
import type { FromHost, ToHost } from './host-protocol.js';
import type { TaskCall, TaskHandle } from '../sidekicks/task-handle.js';

const HOST_MAIN = new URL('./host-main.js', import.meta.url);
/** How long `status()` waits for the host's fresh answer before it reports the last one it had. */
const STATUS_DEADLINE_MS = 1000;

export type HostState = 'starting' | 'running' | 'backoff' | 'stopping' | 'stopped';

/** The host process in `sidekick status` (and /metrics). */
export interface SidekickHostStatus {
  pid: number | undefined;
  state: HostState;
  /** Resident memory of the host process (its sidekick threads included), bytes, as it last reported it. */
  rss: number | undefined;
  startedAt: string | undefined;
  /** Hosts started again after one died. */
  restarts: number;
  /** How the last host that died ended, e.g. `signal SIGKILL` or `exit code 134`. */
  lastExit: string | undefined;
  /** Log lines of the hosts (their sidekick threads' included) and those dropped because stderr was not drained. */
  log: LogCounts;
}

interface Pending<T> {
  resolve(v: T): void;
  reject(e: Error): void;
}

interface PendingTask extends Pending<unknown> {
  onProgress: TaskCall['onProgress'];
}

export type SidekickHostEvents = RegistryEvents & {
  /** A host died; `how` is e.g. `signal SIGKILL`. Its sidekicks' own events (crash, restart) follow from the next. */
  'host-died': [how: string, pid: number | undefined];
};

export class SidekickHost extends EventEmitter<SidekickHostEvents> {
  private child: ChildProcess | undefined;
  private state: HostState = 'stopped';
  private helloed = false;
  /** Messages for a host that is not listening yet (starting, or between two hosts). */
  private outbox: ToHost[] = [];
  private readonly latest = new Map<string, { vars: Vars; generation: number }>();
  /** Each sidekick's last status as the host reported it (pushed on lifecycle events, each second, on request). */
  private readonly statuses = new Map<string, SidekickStatus>();
  /** Every name started (asked for, declared, or reported by the host): each is resumed or started by a new host. */
  private readonly asked = new Set<string>();
  /** ensure() calls that came while no host listened: sent to the next one. */
  private readonly ensures = new Set<string>();
  private rss: number | undefined;
  /** Log counts of the current host as it last reported them, and the totals of the hosts before it. */
  private logCounts: LogCounts = { lines: 0, dropped: 0 };
  private retiredLog: LogCounts = { lines: 0, dropped: 0 };
  private startedAt: number | undefined;
  private restarts = 0;
  private lastExit: string | undefined;
  private readonly backoff = new RestartBackoff({ baseMs: 100, maxMs: 5000, stableAfterMs: 10_000 });
  private restartTimer: NodeJS.Timeout | undefined;
  private nextId = 1;
  private readonly tasks = new Map<number, PendingTask>();
  private readonly requests = new Map<number, Pending<FromHost>>();
  private exited: Promise<void> = Promise.resolve();
  private readonly log;

  constructor(
    readonly app: string,
    private config: SidekicksConfig,
  ) {
    super();
    this.log = childLogger({ component: 'sidekick-host', app });
  }

  /** Forks the host; declared `boot` sidekicks start there. */
  start(): void {
    if (this.state !== 'stopped') return;
    this.spawn(undefined);
  }

  private spawn(previousExit: string | undefined): void {
    this.restartTimer = undefined;
    this.state = 'starting';
    this.helloed = false;
    // The host's own heap (its registry, the snapshots in flight) follows the app's sidekick settings; each thread
    // keeps its own maxHeapMb limit.
    const child = fork(HOST_MAIN.pathname, [], {
      execArgv: [...process.execArgv, `--max-old-space-size=${this.config.maxHeapMb}`],
      serialization: 'advanced',
      env: { ...process.env, SIDEKICK_HOST_APP: this.app },
    });
    this.child = child;
    this.startedAt = Date.now();
    this.rss = undefined;
    this.backoff.started();
    let onExit!: () => void;
    this.exited = new Promise((resolve) => (onExit = resolve));
    child.on('message', (msg: FromHost) => this.onMessage(child, msg, previousExit));
    // A write to a host that just died fails with EPIPE as an 'error' event: never a supervisor crash.
    child.on('error', (err) => this.log.debug({ err: describeError(err) }, 'sidekick host IPC error'));
    child.on('exit', (code, signal) => {
      if (this.child === child) this.child = undefined;
      this.onExit(child, code, signal);
      onExit();
    });
    this.log.debug({ hostPid: child.pid }, 'sidekick host started');
  }

  private onMessage(child: ChildProcess, msg: FromHost, previousExit: string | undefined): void {
    if (child !== this.child) return;
    switch (msg.sk) {
      case 'hello': {
        this.helloed = true;
        if (this.state === 'stopping') {
          this.post({ sk: 'stop' }); // stopped before it could start anything
          break;
        }
        if (this.state === 'starting') this.state = 'running';
        const resume = [...this.statuses.values()]
          .filter((s) => this.asked.has(s.name))
          .map((status) => ({ status, vars: this.latest.get(status.name)?.vars }));
        this.post({
          sk: 'host-init',
          init: { app: this.app, config: this.config, resume, previousHostExit: previousExit },
        });
        // Names asked for before they could report a status start afresh, as do the ones asked for meanwhile.
        for (const name of this.asked) if (!this.statuses.has(name)) this.ensures.add(name);
        for (const name of this.ensures) this.post({ sk: 'ensure', name });
        this.ensures.clear();
        for (const m of this.outbox.splice(0)) this.post(m);
        break;
      }
      case 'vars': {
        const vars = adoptSnapshot(msg.vars);
        this.latest.set(msg.name, { vars, generation: msg.generation });
        this.emit('vars', msg.name, vars, msg.generation); // on to the HTTP workers first: the ack can wait
        this.post({ sk: 'vars-ack', name: msg.name });
        break;
      }
      case 'failed':
        this.emit('failed', msg.name, errorFromData(msg.error) as SidekickError);
        break;
      case 'lifecycle':
        this.asked.add(msg.name);
        this.emit('lifecycle', msg.name, { kind: msg.kind, generation: msg.generation, detail: msg.detail });
        break;
      case 'task-progress':
        this.tasks.get(msg.id)?.onProgress?.(msg.value);
        break;
      case 'task-done': {
        const pending = this.tasks.get(msg.id);
        if (!pending) return;
        this.tasks.delete(msg.id);
        if (msg.ok) pending.resolve(msg.value);
        else pending.reject(errorFromData(msg.error));
        break;
      }
      case 'status':
        this.rss = msg.rss;
        this.logCounts = msg.log;
        for (const s of msg.sidekicks) {
          this.statuses.set(s.name, s);
          this.asked.add(s.name);
        }
        this.settle(msg.id, msg);
        break;
      case 'done':
        this.settle(msg.id, msg);
        break;
      default:
        break;
    }
  }

  private settle(id: number, msg: FromHost): void {
    const pending = this.requests.get(id);
    if (!pending) return;
    this.requests.delete(id);
    pending.resolve(msg);
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    const how = signal ? `signal ${signal}` : `exit code ${code}`;
    const dead = new SidekickError('SK_ERR_HOST_DIED', `the sidekick host of app "${this.app}" died (${how})`, {
      app: this.app,
      pid: child.pid,
    });
    // Tasks this host had: they may have run in part, so they fail rather than run twice. Tasks still waiting in
    // the outbox never reached it and go to the next host.
    const unsent = new Set(this.outbox.map((m) => (m.sk === 'task' ? m.id : 0)));
    for (const [id, p] of this.tasks) {
      if (unsent.has(id)) continue;
      this.tasks.delete(id);
      p.reject(dead);
    }
    for (const p of this.requests.values()) p.reject(dead);
    this.requests.clear();
    if (this.state === 'stopping' || this.state === 'stopped') {
      this.state = 'stopped';
      return;
    }
    this.restarts++;
    this.lastExit = how;
    this.retiredLog = {
      lines: this.retiredLog.lines + this.logCounts.lines,
      dropped: this.retiredLog.dropped + this.logCounts.dropped,
    };
    this.logCounts = { lines: 0, dropped: 0 };
    const { delayMs, consecutive } = this.backoff.failed();
    this.log.error(
      { hostPid: child.pid, code, signal, delayMs, consecutive, sidekicks: [...this.asked] },
      `sidekick host died (${how}); its sidekicks restart in a new host, the last snapshots are still served`,
    );
    this.emit('host-died', how, child.pid);
    this.state = 'backoff';
    this.restartTimer = setTimeout(
      () => this.spawn(`sidekick host process died (${how}${hint(code, signal)})`),
      delayMs,
    );
  }

  private post(msg: ToHost): void {
    const child = this.child;
    if (!child || !this.helloed || !child.connected) {
      // Only tasks wait for the next host: it gets the current config and every asked name with its host-init.
      if (msg.sk === 'task') this.outbox.push(msg);
      return;
    }
    try {
      child.send(msg, undefined, undefined, (err: Error | null) => {
        if (err) this.log.debug({ err: describeError(err) }, 'send to the sidekick host failed');
      });
    } catch (err) {
      this.log.debug({ err: describeError(err) }, 'send to the sidekick host failed');
    }
  }

  private request(msg: { sk: 'status' | 'restart-all' }): Promise<FromHost> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (!this.child || !this.helloed) return reject(new Error('no sidekick host running'));
      this.requests.set(id, { resolve, reject });
      this.post({ sk: msg.sk, id });
    });
  }

  // ---- the registry's interface, as AppSupervisor and ServeRuntime use it

  declares(name: string): boolean {
    return Object.hasOwn(this.config.declare, name);
  }

  /** Starts `name` in the host (problems come back as a `failed` event). */
  ensure(name: string): void {
    if (this.state === 'stopping' || this.state === 'stopped') {
      throw new SidekickError('SK_ERR_STOPPED', `app "${this.app}" is stopping`, { app: this.app });
    }
    this.asked.add(name);
    if (this.helloed && this.child?.connected) this.post({ sk: 'ensure', name });
    else this.ensures.add(name);
  }

  task(name: string, payload: unknown, { reply, onProgress }: TaskCall): TaskHandle {
    if (this.state === 'stopping' || this.state === 'stopped') {
      const result = Promise.reject(
        new SidekickError('SK_ERR_STOPPED', `app "${this.app}" is stopping`, { app: this.app }),
      );
      return { result, cancel: () => {} };
    }
    this.asked.add(name);
    const id = this.nextId++;
    const result = new Promise<unknown>((resolve, reject) => {
      this.tasks.set(id, { resolve, reject, onProgress });
      this.post({ sk: 'task', id, name, payload, reply, progress: onProgress !== undefined });
    });
    return { result, cancel: (reason) => this.cancelTask(id, reason) };
  }

  /** A task still waiting for a host never goes; one in the host gets its handler's signal aborted. */
  private cancelTask(id: number, reason: Error): void {
    const pending = this.tasks.get(id);
    if (!pending) return;
    const i = this.outbox.findIndex((m) => m.sk === 'task' && m.id === id);
    if (i >= 0) {
      this.outbox.splice(i, 1);
      this.tasks.delete(id);
      pending.reject(reason);
      return;
    }
    this.post({ sk: 'task-cancel', id, reason: errorToData(reason) });
  }

  current(name: string): { vars: Vars; generation: number } | undefined {
    return this.latest.get(name);
  }

  snapshots(): { name: string; vars: Vars; generation: number }[] {
    return [...this.latest].map(([name, cur]) => ({ name, ...cur }));
  }

  /** Reload: new settings apply from each sidekick's next generation. */
  reconfigure(config: SidekicksConfig): void {
    this.config = config;
    this.post({ sk: 'reconfigure', config });
  }

  /** Reload: every running sidekick moves to its next generation; snapshots stay served meanwhile. */
  async restartAll(): Promise<void> {
    await this.request({ sk: 'restart-all' }).catch((err: unknown) =>
      this.log.warn({ err: describeError(err) }, 'reload: the sidekick host did not restart its sidekicks'),
    );
  }

  /** Stops every sidekick (each with its grace period) and the host; kills the host if it does not exit in time. */
  async stop(): Promise<void> {
    if (this.state === 'stopped') return;
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    this.state = 'stopping';
    const child = this.child;
    if (!child) {
      this.state = 'stopped';
      return;
    }
    // A host that has not said hello yet gets `stop` in answer to it.
    if (this.helloed) this.post({ sk: 'stop' });
    const backstopMs = this.config.stopGraceMs + 5000;
    const done = await settleWithin(
      this.exited.then(() => true),
      backstopMs,
    );
    if (done === undefined) {
      this.log.warn({ hostPid: child.pid, backstopMs }, 'sidekick host did not stop in time; killing it');
      child.kill('SIGKILL');
      await this.exited;
    }
    this.state = 'stopped';
  }

  /** Each sidekick's status, fresh from the host when it answers in time, else as it last reported it. */
  /** The last status the host reported for `name` (no round trip: readiness reads it on every probe). */
  lastStatus(name: string): SidekickStatus | undefined {
    return this.statuses.get(name);
  }

  async status(): Promise<SidekickStatus[]> {
    if (this.child && this.helloed) {
      await withDeadline(this.request({ sk: 'status' }), STATUS_DEADLINE_MS, 'sidekick host status').catch(
        () => undefined,
      );
    }
    return [...this.statuses.values()];
  }

  hostStatus(): SidekickHostStatus {
    return {
      pid: this.child?.pid,
      state: this.state,
      rss: this.child ? this.rss : undefined,
      startedAt: this.startedAt === undefined ? undefined : new Date(this.startedAt).toISOString(),
      restarts: this.restarts,
      lastExit: this.lastExit,
      log: {
        lines: this.retiredLog.lines + this.logCounts.lines,
        dropped: this.retiredLog.dropped + this.logCounts.dropped,
      },
    };
  }
}

/** What an exit usually means, for the log line and the sidekicks' lastError. */
function hint(code: number | null, signal: NodeJS.Signals | null): string {
  if (signal === 'SIGKILL') return '; killed, e.g. by the OOM killer';
  if (signal === 'SIGABRT' || code === 134) return '; aborted, e.g. V8 "Reached heap limit" in a sidekick thread';
  return '';
}
