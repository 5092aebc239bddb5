// Sidekick agent client for Node (`import { createAgentClient } from 'sidekick/client'`).
//
// Fire-and-forget NDJSON records over the agent's Unix stream socket:
// - `send()` never throws and never blocks: it serialises the record, appends it to a bounded in-memory buffer and
//   returns. Lines are written in order, batched once per event-loop turn (setImmediate), on one persistent connection.
// - Bounded: the bytes waiting in the client (not yet handed to the kernel) never exceed `maxBufferBytes` (1 MiB);
//   past it `send()` appends the line to the spill file (below) or, when that is off or full, drops the record,
//   counts it and returns false. Lines over `maxRecordBytes` are dropped too.
// - Spill: the second line of defence, shared with the PHP client: `<spillDir>/spill.ndjson`, one O_APPEND write of
//   a whole line, capped by the file's size; the agent replays it. Lines that cannot be sent at close() and a line cut
//   by a lost connection go there too.
// - Reconnects with backoff (100 ms × n², capped at 1 s, reset after 10 s of stable connection) after an error or a
//   close, and also when the socket file is replaced (its inode is checked every `inodeCheckMs`): a connection to an
//   orphaned inode keeps "working" while the new agent never sees the data — DogStatsD's lesson.
// - Never keeps the process alive: timers are unref'ed and so is the connected socket. Only a connect attempt with
//   records waiting is ref'ed, bounded by `connectTimeoutMs`, so a short script's records still go out. When the last
//   records matter (agent slow or restarting), `await client.flush()` holds the process for at most its timeout.
// - Drops are reported: the count of records dropped since the last report goes to the agent as a control line in
//   front of the next batch (`{"_sidekick":"dropped","count":N}`), where it becomes `client_dropped`.
// - A stopping agent half-closes the connection ("bye"): the client finishes the line it is writing, leaves that
//   connection and connects again (to the next agent), so the stopping agent reads everything up to our EOF.
// - profilingEnabled(): the agent's state link beside the socket (one readlink).
// - Quiet: no logging, no dependencies beyond Node's standard library.

import { appendFileSync, mkdirSync, readlinkSync, stat, statSync, writeSync, type Stats } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createConnection, type Socket } from 'node:net';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { RestartBackoff } from '../../common/backoff.js';
import { droppedLine, parseStateTarget } from '../receivers/control.js';
import { defaultAgentSocketPath } from '../socket-path.js';

export { defaultAgentSocketPath };

const DEFAULT_STATE = { profiling: true, sampleRate: 1 };

const SPILL_FILE = 'spill.ndjson';
const SPILL_MAX_LINE_BYTES = 65536;
const CONTROL_PREFIX = '{"_sidekick":';

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
  /** Spill directory. Default: env SIDEKICK_AGENT_SPILL_DIR, else `spill/` beside the socket (as the agent assumes). */
  spillDir?: string;
  /** Cap on the spill file's size; default 64 MiB; 0 turns spilling off. */
  spillMaxBytes?: number;
}

export interface AgentClientStats {
  /** Records handed to the kernel (the agent reads them from there). */
  sent: number;
  /** Records appended to the spill file instead (the agent replays them). */
  spilled: number;
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
  /**
   * Whether to run a profiler for this unit of work: false while the agent's breaker is open, when an operator turned
   * profiling off, when the agent is not connected, or when this call was not sampled (agent.profiling.sampleRate).
   */
  profilingEnabled(): boolean;
  /** Flushes (bounded by `timeoutMs`, default 1000), then closes; later `send()` calls drop. */
  close(timeoutMs?: number): Promise<void>;
  stats(): AgentClientStats;
  /** The socket path in use. */
  readonly socket: string;
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

/** The OS file descriptor behind a connected net.Socket (Unix), or -1 when Node does not expose one. */
function fdOf(sock: Socket): number {
  if (sock.destroyed) return -1;
  const fd = (sock as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
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

  // Lines not yet handed to the socket, oldest first, with their byte lengths.
  private queue: string[] = [];
  private queueLens: number[] = [];
  private queuedBytes = 0;
  // The batch being written: bytes from `outOff` on are still ours; line `outLine` has `lineLeft` bytes to go.
  private out: Buffer | null = null;
  private outOff = 0;
  private outLens: number[] = [];
  private outLine = 0;
  private lineLeft = 0;
  // A control line reporting drops may lead the batch: its bytes still to write, and the count it carries.
  private ctlLeft = 0;
  private reporting = 0;
  // Drops not yet reported to the agent.
  private unreported = 0;
  // Fallback path (no fd): records handed to socket.write() whose callbacks have not run yet.
  private inflight = 0;

  private immediate: NodeJS.Immediate | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private connectTimer: NodeJS.Timeout | null = null;
  private readonly inodeTimer: NodeJS.Timeout | null = null;
  private waiters: Waiter[] = [];

  private sent = 0;
  private spilled = 0;
  private dropped = 0;
  private readonly spillFile: string;
  /** The agent's state link (profiling on/off, sample rate). */
  private readonly stateFile: string;
  private readonly spillMaxBytes: number;
  private reconnects = 0;

  constructor(opts: AgentClientOptions) {
    this.socket = opts.socket ?? defaultAgentSocketPath();
    this.maxBufferBytes = positive(opts.maxBufferBytes, 1024 * 1024, 'maxBufferBytes');
    this.maxRecordBytes = positive(opts.maxRecordBytes, 1024 * 1024, 'maxRecordBytes');
    this.connectTimeoutMs = positive(opts.connectTimeoutMs, 1000, 'connectTimeoutMs');
    this.spillMaxBytes = positive(opts.spillMaxBytes, 64 * 1024 * 1024, 'spillMaxBytes', true);
    this.stateFile = join(dirname(this.socket), 'agent.state');
    this.spillFile = join(
      opts.spillDir ?? (process.env.SIDEKICK_AGENT_SPILL_DIR || join(dirname(this.socket), 'spill')),
      SPILL_FILE,
    );
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
    if (this.bufferedBytes() + bytes > this.maxBufferBytes) return this.spill(line) || this.drop(1);
    this.queue.push(line);
    this.queueLens.push(bytes);
    this.queuedBytes += bytes;
    if (this.connected) {
      // One write per event-loop turn; while the kernel is full the retry timer drives the writes instead.
      if (this.immediate === null && this.retryTimer === null) this.immediate = setImmediate(this.pump);
    } else if (this.sock && this.queue.length === 1) {
      this.sock.ref(); // connecting with records waiting: see connect()
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
    this.clearTimer('retryTimer');
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = null;
    // What could not be sent in time goes to the spill file (whole lines only), else it is dropped.
    this.abandonPartialLine();
    const rest = this.out ? this.out.subarray(this.outOff + this.ctlLeft).toString('utf8') : '';
    for (const line of [
      ...rest
        .split('\n')
        .filter(Boolean)
        .map((l) => l + '\n'),
      ...this.queue,
    ])
      if (!this.spill(line)) this.drop(1);
    if (this.unreported > 0 && this.spill(droppedLine(this.unreported), true)) this.unreported = 0;
    this.queue = [];
    this.queueLens = [];
    this.queuedBytes = 0;
    this.out = null;
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
      spilled: this.spilled,
      dropped: this.dropped,
      reconnects: this.reconnects,
      bufferedBytes: this.bufferedBytes(),
      connected: this.connected,
    };
  }

  private bufferedBytes(): number {
    let n = this.queuedBytes;
    if (this.out) n += this.out.length - this.outOff;
    if (this.inflight > 0 && this.sock) n += this.sock.writableLength;
    return n;
  }

  /** Appends one whole line to the spill file, within its cap. Synchronous: only on the fallback path. */
  private spill(line: string, ignoreCap = false): boolean {
    if (this.spillMaxBytes === 0 || line.length > SPILL_MAX_LINE_BYTES) return false;
    const bytes = Buffer.byteLength(line);
    try {
      let size = 0;
      try {
        size = statSync(this.spillFile).size;
      } catch {
        mkdirSync(dirname(this.spillFile), { recursive: true, mode: 0o2770 });
      }
      const cap = this.spillMaxBytes + (ignoreCap ? SPILL_MAX_LINE_BYTES : 0);
      if (size + bytes > cap) return false;
      appendFileSync(this.spillFile, line, { mode: 0o660 });
    } catch {
      return false;
    }
    if (!line.startsWith(CONTROL_PREFIX)) this.spilled++;
    return true;
  }

  private drop(n: number): false {
    this.dropped += n;
    this.unreported += n;
    return false;
  }

  private idle(): boolean {
    return this.queue.length === 0 && this.out === null && this.inflight === 0;
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

  private clearTimer(name: 'reconnectTimer' | 'connectTimer' | 'retryTimer'): void {
    const t = this[name];
    if (t) clearTimeout(t);
    this[name] = null;
  }

  /** Moves the queue into the `out` batch. */
  private takeQueue(): boolean {
    if (this.queue.length === 0) return false;
    const lines = this.queue.length === 1 ? this.queue[0]! : this.queue.join('');
    const ctl = this.unreported > 0 ? droppedLine(this.unreported) : '';
    this.reporting = this.unreported;
    this.ctlLeft = ctl.length; // ASCII
    this.out = Buffer.from(ctl ? ctl + lines : lines);
    this.outOff = 0;
    this.outLens = this.queueLens;
    this.outLine = 0;
    this.lineLeft = this.outLens[0]!;
    this.queue = [];
    this.queueLens = [];
    this.queuedBytes = 0;
    return true;
  }

  /** `n` more bytes of `out` reached the kernel: count the lines they completed. */
  private advance(n: number): void {
    this.outOff += n;
    if (this.ctlLeft > 0) {
      const take = Math.min(n, this.ctlLeft);
      n -= take;
      this.ctlLeft -= take;
      if (this.ctlLeft === 0) this.reported();
    }
    while (n > 0) {
      const take = Math.min(n, this.lineLeft);
      n -= take;
      this.lineLeft -= take;
      if (this.lineLeft === 0) {
        this.sent++;
        this.outLine++;
        this.lineLeft = this.outLens[this.outLine] ?? 0;
      }
    }
    if (this.out && this.outOff >= this.out.length) this.out = null;
  }

  /** The control line went out whole: the agent has the count. */
  private reported(): void {
    this.unreported -= this.reporting;
    this.reporting = 0;
  }

  /** The connection is gone: a line cut in the middle cannot be finished on another one, so it is dropped. */
  private abandonPartialLine(): void {
    if (this.out && this.ctlLeft > 0 && this.outOff > 0) {
      // A cut control line: skip its rest; its count stays unreported and goes with the next batch.
      this.outOff += this.ctlLeft;
      this.ctlLeft = 0;
      this.reporting = 0;
      return;
    }
    if (!this.out || this.ctlLeft > 0 || this.lineLeft === this.outLens[this.outLine]) return;
    // The agent discards the cut part; the whole line goes to the spill file (or is dropped and counted).
    const len = this.outLens[this.outLine]!;
    const start = this.outOff - (len - this.lineLeft);
    if (!this.spill(this.out.subarray(start, start + len).toString('utf8'))) this.drop(1);
    this.outOff += this.lineLeft;
    this.outLine++;
    this.lineLeft = this.outLens[this.outLine] ?? 0;
    if (this.outOff >= this.out.length) this.out = null;
  }

  /**
   * Writes what the kernel takes right now with non-blocking write(2) calls on the socket's fd. Nothing is ever
   * left pending inside libuv — a pending write request would keep the process alive while a hung agent never
   * reads. On EAGAIN the rest stays in our buffer and an unref'ed timer retries (1 ms doubling to 50 ms).
   */
  private readonly pump = (): void => {
    this.immediate = null;
    this.clearTimer('retryTimer');
    const sock = this.sock;
    if (!sock || !this.connected || sock.destroyed) return; // a destroyed socket: wait for 'close', keep the lines
    const fd = fdOf(sock);
    if (fd < 0) {
      this.pumpStream(sock);
      return;
    }
    while (this.out || this.takeQueue()) {
      const out = this.out!;
      let n: number;
      try {
        n = writeSync(fd, out, this.outOff, out.length - this.outOff);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EINTR') continue;
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
          this.retryDelayMs = Math.min(50, Math.max(1, this.retryDelayMs * 2));
          this.retryTimer = setTimeout(this.pump, this.retryDelayMs);
          this.retryTimer.unref();
        } else {
          this.connected = false; // EPIPE, ECONNRESET, …: 'close' follows and reconnects; the lines wait for it
          sock.destroy();
        }
        return;
      }
      this.retryDelayMs = 0;
      this.advance(n);
    }
    this.settleWaiters();
  };

  /** Fallback when no fd is exposed: socket.write(), with callbacks counting what was sent or lost. */
  private pumpStream(sock: Socket): void {
    if (this.out) this.abandonPartialLine();
    if (!this.out && !this.takeQueue()) return;
    const n = this.outLens.length - this.outLine;
    const chunk = this.out!.subarray(this.outOff);
    const reporting = this.ctlLeft > 0 ? this.reporting : 0;
    this.out = null;
    this.ctlLeft = 0;
    this.reporting = 0;
    this.inflight += n;
    sock.write(chunk, (err) => {
      this.inflight -= n;
      if (err) this.drop(n);
      else {
        this.sent += n;
        this.unreported -= reporting;
      }
      this.settleWaiters();
    });
  }

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
      if (this.queue.length === 0 && this.out === null) sock.unref();
      sock.on('error', () => {
        // 'close' follows.
      });
      sock.once('connect', () => {
        this.clearTimer('connectTimer');
        if (sock !== this.sock) return;
        sock.unref();
        this.connecting = false;
        this.connected = true;
        this.backoff.started();
        if (this.everConnected) this.reconnects++;
        this.everConnected = true;
        // The agent never writes; its FIN is the "bye" of a graceful stop (it keeps reading until ours).
        sock.on('end', () => this.leave(sock));
        sock.resume();
        this.pump();
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
    this.clearTimer('retryTimer');
    this.abandonPartialLine();
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

  profilingEnabled(): boolean {
    if (!this.connected || this.closed) return false;
    const { profiling, sampleRate } = this.readState();
    return profiling && (sampleRate >= 1 || Math.random() < sampleRate);
  }

  /** The agent's state (`agent.state` beside the socket: a symlink whose target is the state), one readlink. */
  private readState(): { profiling: boolean; sampleRate: number } {
    try {
      return parseStateTarget(readlinkSync(this.stateFile)) ?? DEFAULT_STATE;
    } catch {
      return DEFAULT_STATE; // no state yet (an older agent): profiling on
    }
  }

  /**
   * Leaves `sock` for a new connection (agent stopping, or its socket file replaced): finishes the line being
   * written if the kernel takes it now, else drops it; ends the old connection gracefully; connects again.
   */
  private leave(sock: Socket): void {
    if (sock !== this.sock || !this.connected) return;
    this.clearTimer('retryTimer');
    const fd = fdOf(sock);
    if (fd >= 0 && this.out && (this.ctlLeft > 0 || this.lineLeft !== this.outLens[this.outLine])) {
      try {
        const rest = this.ctlLeft > 0 ? this.ctlLeft : this.lineLeft;
        if (this.outOff > 0) this.advance(writeSync(fd, this.out, this.outOff, rest));
      } catch {
        // EAGAIN or a dead socket: the cut line is dropped below
      }
    }
    this.abandonPartialLine();
    this.sock = null;
    this.connected = false;
    sock.end();
    setTimeout(() => sock.destroy(), 1000).unref();
    this.backoff.reset();
    this.connectNow();
  }

  private checkInode(): void {
    if (!this.connected || this.checkingInode || this.inode === null) return;
    this.checkingInode = true;
    stat(this.socket, (err, st) => {
      this.checkingInode = false;
      // A missing file means the agent is stopping or someone removed it: keep the connection while it works.
      if (err || !this.connected || !this.sock) return;
      if (identity(st) === this.inode) return;
      // The path now names another socket: leave the old connection (gracefully) and connect to the new one.
      this.leave(this.sock);
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
