// One agent worker process as the supervisor sees it: the forked child, where it is in its life, and the last
// counters and status it reported. It answers the protocol messages that concern only itself (standby, ready, stats,
// snapshot replies, final counters, fatal) and passes every message on to the supervisor.
import { fork, type ChildProcess } from 'node:child_process';
import type { Logger } from 'pino';
import { settleWithin } from '../../common/async.js';
import type { AgentConfig } from '../../config/schema.js';
import type { AgentMetricsSnapshot } from '../metrics.js';
import type { AgentPipelineStatus } from '../worker/pipeline.js';
import type { FromWorker, ToWorker } from '../worker-protocol.js';

export type WorkerState = 'booting' | 'standby' | 'starting' | 'ready' | 'leaving' | 'exited';

export interface WorkerReport {
  metrics: AgentMetricsSnapshot;
  status: AgentPipelineStatus;
}

export interface WorkerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

export interface WorkerHandleOptions {
  workerPath: string;
  /** The supervisor's bound socket; the worker inherits it as WORKER_LISTEN_FD. */
  listenFd: number;
  generation: number;
  config: AgentConfig;
  /** Start at once, or load and wait for start() (a pre-forked replacement). */
  start: boolean;
  /** The agent's first worker (see ToWorker 'init'). */
  first?: boolean;
  log: Logger;
  onMessage(w: WorkerHandle, msg: FromWorker, handle: unknown): void;
  onExit(w: WorkerHandle, exit: WorkerExit): void;
}

export class WorkerHandle {
  readonly generation: number;
  readonly child: ChildProcess;
  readonly pid: number | undefined;
  readonly spawnedAt = Date.now();
  state: WorkerState = 'booting';
  readyAt = 0;
  /** Set before the supervisor stops or replaces it: its exit is not a crash. */
  expectedExit = false;
  last: WorkerReport | undefined;
  finalMetrics: AgentMetricsSnapshot | undefined;
  fatal: { code: string | undefined; message: string } | undefined;
  private readonly standbyD = deferred<boolean>();
  private readonly readyD = deferred<boolean>();
  private readonly exitedD = deferred<WorkerExit>();
  /** Resolves true once loaded and waiting (false if it exited first). */
  readonly standby = this.standbyD.promise;
  /** Resolves true once it accepts (false if it exited first). */
  readonly ready = this.readyD.promise;
  readonly exited = this.exitedD.promise;
  /** Date.now() of its last report (stats, about once a second, or a snapshot); 0 before the first. */
  reportedAt = 0;
  private snapshotSeq = 0;
  private readonly snapshotWaiters = new Map<number, (v: WorkerReport) => void>();

  constructor(opts: WorkerHandleOptions) {
    this.generation = opts.generation;
    this.child = fork(opts.workerPath, [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc', opts.listenFd],
      serialization: 'json',
      env: workerEnv(process.env),
    });
    this.pid = this.child.pid;
    this.child.on('message', (msg: FromWorker, handle: unknown) => {
      this.onMessage(msg);
      opts.onMessage(this, msg, handle);
    });
    this.child.on('exit', (code, signal) => {
      this.state = 'exited';
      this.standbyD.resolve(false);
      this.readyD.resolve(false);
      this.exitedD.resolve({ code, signal });
      opts.onExit(this, { code, signal });
    });
    this.child.on('error', (err) => opts.log.error({ err, pid: this.pid }, 'agent worker process error'));
    this.send({ t: 'init', config: opts.config, start: opts.start, ...(opts.first ? { first: true } : {}) });
    if (opts.start) this.state = 'starting';
  }

  private onMessage(msg: FromWorker): void {
    switch (msg.t) {
      case 'standby':
        this.state = 'standby';
        this.standbyD.resolve(true);
        break;
      case 'ready':
        this.state = 'ready';
        this.readyAt = Date.now();
        this.readyD.resolve(true);
        break;
      case 'stats':
        this.last = { metrics: msg.metrics, status: msg.status };
        this.reportedAt = Date.now();
        break;
      case 'snapshot': {
        this.last = { metrics: msg.metrics, status: msg.status };
        this.reportedAt = Date.now();
        const waiter = this.snapshotWaiters.get(msg.id);
        this.snapshotWaiters.delete(msg.id);
        waiter?.(this.last);
        break;
      }
      case 'released':
      case 'stopped':
        this.finalMetrics = msg.metrics;
        break;
      case 'fatal':
        this.fatal = { code: msg.code, message: msg.message };
        break;
    }
  }

  send(msg: ToWorker, handle?: unknown, cb?: (err: Error | null) => void): void {
    if (!this.child.connected) {
      cb?.(new Error('worker not connected'));
      return;
    }
    try {
      this.child.send(msg, handle as never, {}, (err) => cb?.(err));
    } catch (err) {
      cb?.(err as Error);
    }
  }

  /** A pre-forked replacement (standby) starts: opens the spool, listens, accepts. */
  start(): void {
    this.state = 'starting';
    this.send({ t: 'start' });
  }

  /** Fresh counters and status (asked over IPC), or the last reported ones if it does not answer within `ms`. */
  async snapshot(ms: number): Promise<WorkerReport | undefined> {
    if (this.state !== 'ready' || !this.child.connected) return this.last;
    const id = ++this.snapshotSeq;
    const got = new Promise<WorkerReport>((resolve) => this.snapshotWaiters.set(id, resolve));
    this.send({ t: 'snapshot', id });
    const live = await settleWithin(got, ms);
    this.snapshotWaiters.delete(id);
    return live ?? this.last;
  }

  /** The counters to carry over once it is gone: its final ones, else the last it reported. */
  get lastCounters(): AgentMetricsSnapshot['counters'] | undefined {
    return (this.finalMetrics ?? this.last?.metrics)?.counters;
  }

  /** SIGKILL (not a crash: expectedExit) and wait at most `ms` for the exit. */
  async kill(ms = 5000): Promise<WorkerExit | undefined> {
    this.expectedExit = true;
    this.child.kill('SIGKILL');
    return settleWithin(this.exited, ms);
  }

  /** Waits for the exit at most `ms`; if it does not come, kills (logging `why`). */
  async exitWithin(ms: number, log: Logger, why: string): Promise<void> {
    if (await settleWithin(this.exited, ms)) return;
    log.error({ workerPid: this.pid, timeoutMs: ms }, why);
    await this.kill();
  }
}

/**
 * The worker's thread pool: 16 threads unless UV_THREADPOOL_SIZE is set. Every spool call goes through the pool (never
 * a synchronous call on the event loop), and a spool whose filesystem stops answering holds one thread per part that
 * waits on it, each part doing one thing at a time: the writer, the group commit's fsync, the directory check, the
 * reader (a read, a ledger write, a statfs or an unlink), a roll's ledger write, the breaker's state file, a dead
 * letter: at most 7. With libuv's default of 4 they would take every thread, and dns.lookup (the exporter resolving
 * `localhost`), gzip of large batches and every other fs call in the process would wait for the filesystem too.
 */
export const WORKER_THREADPOOL_SIZE = 16;

export function workerEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  if (env.UV_THREADPOOL_SIZE) return env;
  return { ...env, UV_THREADPOOL_SIZE: String(WORKER_THREADPOOL_SIZE) };
}
