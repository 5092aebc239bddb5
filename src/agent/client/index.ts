// Sidekick agent client for Node (`import { createAgentClient } from 'sidekick/client'`).
//
// Fire-and-forget NDJSON records over the agent's Unix stream socket:
// - `send()` never throws and never blocks: it serialises the record, appends it to a bounded in-memory buffer and
//   returns. Lines are written in order, batched once per event-loop turn (setImmediate), on one persistent connection.
// - Bounded: the bytes waiting in the client (not yet handed to the kernel) never exceed `maxBufferBytes` (1 MiB);
//   past it `send()` drops the record, counts it and returns false. Lines over `maxRecordBytes` are dropped too.
// - Reconnects with backoff (100 ms × n², capped at 1 s, reset after 10 s of stable connection) after an error or a
//   close, and also when the socket file is replaced (its inode is checked every `inodeCheckMs`): a connection to an
//   orphaned inode keeps "working" while the new agent never sees the data — DogStatsD's lesson.
// - Never keeps the process alive: timers are unref'ed and so is the connected socket. Only a connect attempt with
//   records waiting is ref'ed, bounded by `connectTimeoutMs`, so a short script's records still go out. When the last
//   records matter (agent slow or restarting), `await client.flush()` holds the process for at most its timeout.
// - Quiet: no logging, no dependencies beyond Node's standard library.

import { stat, statSync, type Stats } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createConnection, type Socket } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { RestartBackoff } from '../../supervisor/backoff.js';

export interface AgentClientOptions {
  /** Socket path. Default: env SIDEKICK_AGENT_SOCKET, else the agent's default (see `defaultAgentSocketPath`). */
  socket?: string;
  /** Cap on bytes buffered in the client while connecting or backpressured; default 1 MiB. */
  maxBufferBytes?: number;
  /** Give up a connect attempt after this long and retry with backoff; default 1000 ms. */
  connectTimeoutMs?: number;
  /** Lines longer than this (bytes, newline included) are dropped; default 1 MiB, the agent's `maxRecordBytes`. */
  maxRecordBytes?: number;
  /** How often the socket file's inode is compared with the connected one; default 1000 ms, 0 = never. */
  inodeCheckMs?: number;
  /** Reconnect backoff: delay = min(maxMs, n² × baseMs) after n consecutive failures; defaults 100 / 1000 ms. */
  reconnectBaseMs?: number;
  reconnectMaxMs?: number;
}

export interface AgentClientStats {
  /** Records handed to the kernel (the agent reads them from there). */
  sent: number;
  /** Records dropped: buffer cap, oversize or unserialisable record, lost with a failed connection, sent after close. */
  dropped: number;
  /** Connections established after the first one. */
  reconnects: number;
  /** Bytes waiting in the client right now. */
  bufferedBytes: number;
  connected: boolean;
}

export interface AgentClient {
  /** Queue one record (one JSON line). Returns false when it was dropped (and counted). Never throws. */
  send(record: object): boolean;
  /** Resolves once every accepted record was handed to the kernel, or after `timeoutMs` (default 1000). */
  flush(timeoutMs?: number): Promise<void>;
  /** Flushes (bounded by `timeoutMs`, default 1000), then closes; later `send()` calls drop. */
  close(timeoutMs?: number): Promise<void>;
  stats(): AgentClientStats;
  /** The socket path in use. */
  readonly socket: string;
}

const ROOT_SOCKET = '/run/sidekick/agent.sock';

/**
 * The path clients use when none is given: env SIDEKICK_AGENT_SOCKET; else /run/sidekick/agent.sock as root or when
 * /run/sidekick exists (the systemd unit's RuntimeDirectory); else $XDG_RUNTIME_DIR/sidekick/agent.sock; else
 * ./var/agent.sock under the working directory. Same rule as the PHP client.
 */
export function defaultAgentSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SIDEKICK_AGENT_SOCKET) return env.SIDEKICK_AGENT_SOCKET;
  if (process.getuid?.() === 0 || isDir('/run/sidekick')) return ROOT_SOCKET;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'sidekick', 'agent.sock');
  return join(process.cwd(), 'var', 'agent.sock');
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function identity(st: Stats): string {
  return `${st.dev}:${st.ino}`;
}

function positive(v: number | undefined, fallback: number, name: string, allowZero = false): number {
  if (v === undefined) return fallback;
  if (!Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) {
    throw new RangeError(`createAgentClient: ${name} must be a ${allowZero ? 'non-negative' : 'positive'} number`);
  }
  return v;
}

interface Waiter {
  resolve: () => void;
  timer: NodeJS.Timeout;
}

class Client implements AgentClient {
  readonly socket: string;
  private readonly maxBufferBytes: number;
  private readonly maxRecordBytes: number;
  private readonly connectTimeoutMs: number;
  private readonly backoff: RestartBackoff;

  private sock: Socket | null = null;
  private connected = false;
  private connecting = false;
  private closed = false;
  private everConnected = false;
  private inode: string | null = null;
  private checkingInode = false;

  private queue: string[] = [];
  private queuedBytes = 0;
  private inflight = 0;
  private immediate: NodeJS.Immediate | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private connectTimer: NodeJS.Timeout | null = null;
  private readonly inodeTimer: NodeJS.Timeout | null = null;
  private waiters: Waiter[] = [];

  private sent = 0;
  private dropped = 0;
  private reconnects = 0;

  constructor(opts: AgentClientOptions) {
    this.socket = opts.socket ?? defaultAgentSocketPath();
    this.maxBufferBytes = positive(opts.maxBufferBytes, 1024 * 1024, 'maxBufferBytes');
    this.maxRecordBytes = positive(opts.maxRecordBytes, 1024 * 1024, 'maxRecordBytes');
    this.connectTimeoutMs = positive(opts.connectTimeoutMs, 1000, 'connectTimeoutMs');
    const inodeCheckMs = positive(opts.inodeCheckMs, 1000, 'inodeCheckMs', true);
    this.backoff = new RestartBackoff({
      baseMs: positive(opts.reconnectBaseMs, 100, 'reconnectBaseMs'),
      maxMs: positive(opts.reconnectMaxMs, 1000, 'reconnectMaxMs'),
    });
    if (inodeCheckMs > 0) {
      this.inodeTimer = setInterval(() => this.checkInode(), inodeCheckMs);
      this.inodeTimer.unref();
    }
    this.connect();
  }

  send(record: object): boolean {
    if (this.closed) return this.drop(1);
    let json: string | undefined;
    try {
      json = JSON.stringify(record);
    } catch {
      return this.drop(1);
    }
    if (typeof json !== 'string') return this.drop(1);
    const line = json + '\n';
    const bytes = Buffer.byteLength(line);
    if (bytes > this.maxRecordBytes) return this.drop(1);
    const backlog = this.queuedBytes + (this.sock && this.connected ? this.sock.writableLength : 0);
    if (backlog + bytes > this.maxBufferBytes) return this.drop(1);
    this.queue.push(line);
    this.queuedBytes += bytes;
    if (this.connected) {
      if (this.immediate === null) this.immediate = setImmediate(this.writeQueue);
    } else if (this.sock && this.queue.length === 1) {
      this.sock.ref(); // connecting: see connect()
    }
    return true;
  }

  flush(timeoutMs = 1000): Promise<void> {
    if (this.idle()) return Promise.resolve();
    if (!this.connected && !this.connecting && !this.closed) this.connectNow();
    return new Promise((resolve) => {
      const waiter: Waiter = {
        resolve,
        // Ref'ed on purpose: awaiting flush() keeps the process up to timeoutMs, no longer.
        timer: setTimeout(
          () => {
            this.waiters = this.waiters.filter((w) => w !== waiter);
            resolve();
          },
          Math.max(0, timeoutMs),
        ),
      };
      this.waiters.push(waiter);
    });
  }

  async close(timeoutMs = 1000): Promise<void> {
    if (this.closed) return;
    const deadline = Date.now() + Math.max(0, timeoutMs);
    await this.flush(timeoutMs);
    this.closed = true;
    if (this.inodeTimer) clearInterval(this.inodeTimer);
    this.clearTimer('reconnectTimer');
    this.clearTimer('connectTimer');
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = null;
    if (this.queue.length > 0) this.drop(this.queue.length);
    this.queue = [];
    this.queuedBytes = 0;
    const sock = this.sock;
    this.sock = null;
    this.connected = false;
    if (sock && !sock.destroyed) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => sock.destroy(), Math.max(0, deadline - Date.now()));
        sock.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        sock.end();
      });
    }
    this.settleWaiters();
  }

  stats(): AgentClientStats {
    return {
      sent: this.sent,
      dropped: this.dropped,
      reconnects: this.reconnects,
      bufferedBytes: this.queuedBytes + (this.sock && this.connected ? this.sock.writableLength : 0),
      connected: this.connected,
    };
  }

  private drop(n: number): false {
    this.dropped += n;
    return false;
  }

  private idle(): boolean {
    return this.queue.length === 0 && this.inflight === 0;
  }

  private settleWaiters(): void {
    if (this.waiters.length === 0 || !(this.idle() || this.closed)) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  private clearTimer(name: 'reconnectTimer' | 'connectTimer'): void {
    const t = this[name];
    if (t) clearTimeout(t);
    this[name] = null;
  }

  /** Hands the whole queue to the socket as one write; the callback counts the records sent or lost. */
  private readonly writeQueue = (): void => {
    this.immediate = null;
    const sock = this.sock;
    if (!sock || !this.connected || this.queue.length === 0) return;
    const n = this.queue.length;
    const chunk = n === 1 ? this.queue[0]! : this.queue.join('');
    this.queue = [];
    this.queuedBytes = 0;
    this.inflight += n;
    sock.write(chunk, (err) => {
      this.inflight -= n;
      if (err) this.dropped += n;
      else this.sent += n;
      this.settleWaiters();
    });
  };

  private connectNow(): void {
    this.clearTimer('reconnectTimer');
    this.connect();
  }

  private connect(): void {
    if (this.closed || this.sock || this.connecting) return;
    this.connecting = true;
    // Remember which file we connect to; a later stat showing another inode means the agent re-created its socket.
    stat(this.socket, (statErr, st) => {
      if (this.closed) {
        this.connecting = false;
        return;
      }
      if (statErr) {
        this.connecting = false;
        this.inode = null;
        this.scheduleReconnect();
        return;
      }
      this.inode = identity(st);
      const sock = createConnection({ path: this.socket });
      this.sock = sock;
      // Ref'ed only while connecting with records waiting (bounded by connectTimeoutMs), so a short script's last
      // records still go out; unref'ed once connected, so the client never holds the process open.
      if (this.queue.length === 0) sock.unref();
      sock.on('error', () => {
        // 'close' follows; lost writes are counted by their callbacks.
      });
      sock.once('connect', () => {
        this.clearTimer('connectTimer');
        if (sock !== this.sock) return;
        this.connecting = false;
        this.connected = true;
        sock.unref();
        this.backoff.started();
        if (this.everConnected) this.reconnects++;
        this.everConnected = true;
        sock.resume(); // the agent never replies; reading lets us see its FIN at once
        this.writeQueue();
        this.settleWaiters();
      });
      sock.once('close', () => this.onClose(sock));
      this.connectTimer = setTimeout(() => sock.destroy(), this.connectTimeoutMs);
      this.connectTimer.unref();
    });
  }

  private onClose(sock: Socket): void {
    if (sock !== this.sock) return; // an old connection we already replaced
    this.clearTimer('connectTimer');
    this.sock = null;
    this.connected = false;
    this.connecting = false;
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer) return;
    const { delayMs } = this.backoff.failed();
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delayMs);
    this.reconnectTimer.unref();
  }

  private checkInode(): void {
    if (!this.connected || this.checkingInode || this.inode === null) return;
    this.checkingInode = true;
    stat(this.socket, (err, st) => {
      this.checkingInode = false;
      // A missing file means the agent is stopping or someone removed it: keep the connection while it works.
      if (err || !this.connected || !this.sock) return;
      if (identity(st) === this.inode) return;
      // The path now names another socket: leave the old connection (let it drain, bounded) and connect to the new.
      const old = this.sock;
      this.sock = null;
      this.connected = false;
      old.end();
      setTimeout(() => old.destroy(), 5000).unref();
      this.backoff.reset();
      this.connectNow();
    });
  }
}

/** Creates a client; it connects at once in the background. Options are validated (RangeError on a bad value). */
export function createAgentClient(opts: AgentClientOptions = {}): AgentClient {
  return new Client(opts);
}

// ---------------------------------------------------------------------------------------------------------------
// Middleware for Node HTTP workers (plain `http` handlers, Express, Connect, …).

type RequestLike = IncomingMessage & {
  route?: { path?: unknown };
  baseUrl?: string;
  originalUrl?: string;
};

export interface AgentMiddlewareOptions {
  /** Record type; default 'node_request'. */
  type?: string;
  /** Route to report; default Express's matched route (baseUrl + route.path) or the URL path without the query. */
  route?: (req: IncomingMessage, res: ServerResponse) => string | undefined;
  /** Extra fields merged into each record (built-in fields win). */
  fields?: (req: IncomingMessage, res: ServerResponse) => Record<string, unknown> | undefined;
}

function defaultRoute(req: RequestLike): string {
  const routePath = req.route?.path;
  if (typeof routePath === 'string') return (req.baseUrl ?? '') + routePath;
  const url = req.originalUrl ?? req.url ?? '';
  const cut = url.search(/[?#]/);
  return cut === -1 ? url : url.slice(0, cut);
}

/**
 * `app.use(agentMiddleware(client))`, or call it first in a plain handler: `mw(req, res)`. Sends one record per
 * request when the response finishes (or the connection closes first: `aborted: true`):
 * `{ ts, type, route, method, status, duration_ms, host, pid, [aborted], ...fields }`. Never throws.
 */
export function agentMiddleware(
  client: Pick<AgentClient, 'send'>,
  opts: AgentMiddlewareOptions = {},
): (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void {
  const type = opts.type ?? 'node_request';
  const host = hostname();
  const pid = process.pid;
  return function sidekickAgentMiddleware(req, res, next) {
    const ts = Date.now();
    const start = performance.now();
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      try {
        const extra = opts.fields?.(req, res);
        const record: Record<string, unknown> = {
          ...extra,
          ts,
          type,
          route: opts.route?.(req, res) ?? defaultRoute(req as RequestLike),
          method: req.method ?? null,
          status: res.statusCode,
          duration_ms: Math.round((performance.now() - start) * 1000) / 1000,
          host,
          pid,
        };
        if (!res.writableFinished) record.aborted = true;
        client.send(record);
      } catch {
        // telemetry must never break a response
      }
    };
    res.once('finish', finish);
    res.once('close', finish);
    next?.();
  };
}
