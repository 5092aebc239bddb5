// The Node agent client's connection: one persistent Unix socket to the agent, non-blocking writes on its fd,
// reconnects with backoff, a replaced socket file noticed by its inode, the agent's "bye" honoured. What it promises
// (never throws, never blocks, bounded, never keeps the process alive) is told in index.ts.
import { stat, writeSync, type Stats } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { settleWithin } from '../../common/async.js';
import { RestartBackoff } from '../../common/backoff.js';
import { socketFd } from '../../common/node-internals.js';
import { droppedLine } from '../receivers/control.js';
import { readAgentState } from './agent-state.js';
import { resolveOptions, type AgentClientOptions } from './options.js';
import { PendingLines } from './pending-lines.js';
import { SpillFile } from './spill-file.js';

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

  private readonly lines = new PendingLines();
  // Fallback path (no fd): records handed to socket.write() whose callbacks have not run yet.
  private inflight = 0;

  private immediate: NodeJS.Immediate | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private connectTimer: NodeJS.Timeout | null = null;
  private readonly inodeTimer: NodeJS.Timeout | null = null;
  /** flush() calls waiting for every accepted line to reach the kernel. */
  private waiters: (() => void)[] = [];

  private readonly spillFile: SpillFile;
  /** The agent's state link (profiling on/off, sample rate). */
  private readonly stateFile: string;
  private reconnects = 0;

  constructor(opts: AgentClientOptions) {
    const settings = resolveOptions(opts);
    this.socket = settings.socket;
    this.maxBufferBytes = settings.maxBufferBytes;
    this.maxRecordBytes = settings.maxRecordBytes;
    this.connectTimeoutMs = settings.connectTimeoutMs;
    this.stateFile = settings.stateFile;
    this.spillFile = new SpillFile(settings.spillDir, settings.spillMaxBytes);
    this.backoff = new RestartBackoff({ baseMs: settings.reconnectBaseMs, maxMs: settings.reconnectMaxMs });
    if (settings.inodeCheckMs > 0) {
      this.inodeTimer = setInterval(() => this.checkInode(), settings.inodeCheckMs);
      this.inodeTimer.unref();
    }
    this.connect();
  }

  send(record: object): boolean {
    if (this.closed) return this.lines.drop(1);
    let json: string | undefined;
    try {
      json = JSON.stringify(record);
    } catch {
      return this.lines.drop(1);
    }
    if (typeof json !== 'string') return this.lines.drop(1);
    const line = json + '\n';
    const bytes = Buffer.byteLength(line);
    if (bytes > this.maxRecordBytes) return this.lines.drop(1);
    if (this.bufferedBytes() + bytes > this.maxBufferBytes) return this.keep(line) || this.lines.drop(1);
    this.lines.push(line, bytes);
    if (this.connected) {
      // One write per event-loop turn; while the kernel is full the retry timer drives the writes instead.
      if (this.immediate === null && this.retryTimer === null) this.immediate = setImmediate(this.pump);
    } else if (this.sock && this.lines.queued === 1) {
      this.sock.ref(); // connecting with records waiting: see connect()
    }
    return true;
  }

  flush(timeoutMs = 1000): Promise<void> {
    if (this.idle()) return Promise.resolve();
    if (!this.connected && !this.connecting && !this.closed) this.connectNow();
    let waiter!: () => void;
    const idle = new Promise<void>((resolve) => this.waiters.push((waiter = resolve)));
    // settleWithin's timer is ref'ed, on purpose: awaiting flush() keeps the process up to timeoutMs, no longer.
    return settleWithin(idle, timeoutMs).then(() => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
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
    this.lines.abandonPartialLine(this.keep);
    for (const line of this.lines.takeAll()) if (!this.keep(line)) this.lines.drop(1);
    const unreported = this.lines.unreported;
    if (unreported > 0 && this.spillFile.append(droppedLine(unreported), true)) this.lines.unreported = 0;
    const sock = this.sock;
    this.sock = null;
    this.connected = false;
    if (sock && !sock.destroyed) {
      const closed = new Promise<boolean>((resolve) => sock.once('close', () => resolve(true)));
      sock.end();
      // Within what is left of the deadline (ref'ed, like flush's); past it the socket is destroyed.
      if (!(await settleWithin(closed, deadline - Date.now()))) {
        sock.destroy();
        await closed;
      }
    }
    this.settleWaiters();
  }

  stats(): AgentClientStats {
    return {
      sent: this.lines.sent,
      spilled: this.spillFile.spilled,
      dropped: this.lines.dropped,
      reconnects: this.reconnects,
      bufferedBytes: this.bufferedBytes(),
      connected: this.connected,
    };
  }

  private bufferedBytes(): number {
    let n = this.lines.bytes;
    if (this.inflight > 0 && this.sock) n += this.sock.writableLength;
    return n;
  }

  /** A line that cannot go to the agent now goes to the spill file, when it is on and has room. */
  private readonly keep = (line: string): boolean => this.spillFile.append(line);

  private idle(): boolean {
    return this.lines.empty && this.inflight === 0;
  }

  private settleWaiters(): void {
    if (this.waiters.length === 0 || !(this.idle() || this.closed)) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }

  private clearTimer(name: 'reconnectTimer' | 'connectTimer' | 'retryTimer'): void {
    const t = this[name];
    if (t) clearTimeout(t);
    this[name] = null;
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
    const fd = socketFd(sock);
    if (fd < 0) {
      this.pumpStream(sock);
      return;
    }
    const lines = this.lines;
    while (lines.out || lines.takeQueue()) {
      const out = lines.out!;
      let n: number;
      try {
        n = writeSync(fd, out, lines.outOff, out.length - lines.outOff);
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
      lines.advance(n);
    }
    this.settleWaiters();
  };

  /** Fallback when no fd is exposed: socket.write(), with callbacks counting what was sent or lost. */
  private pumpStream(sock: Socket): void {
    if (this.lines.out) this.lines.abandonPartialLine(this.keep);
    const batch = this.lines.takeBatch();
    if (!batch) return;
    this.inflight += batch.lines;
    sock.write(batch.chunk, (err) => {
      this.inflight -= batch.lines;
      this.lines.settled(batch, !!err);
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
      if (this.lines.empty) sock.unref();
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
    this.lines.abandonPartialLine(this.keep);
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
    const { profiling, sampleRate } = readAgentState(this.stateFile);
    return profiling && (sampleRate >= 1 || Math.random() < sampleRate);
  }

  /**
   * Leaves `sock` for a new connection (agent stopping, or its socket file replaced): finishes the line being
   * written if the kernel takes it now, else drops it; ends the old connection gracefully; connects again.
   */
  private leave(sock: Socket): void {
    if (sock !== this.sock || !this.connected) return;
    this.clearTimer('retryTimer');
    const fd = socketFd(sock);
    const rest = this.lines.partialRest();
    if (fd >= 0 && rest > 0) {
      try {
        this.lines.advance(writeSync(fd, this.lines.out!, this.lines.outOff, rest));
      } catch {
        // EAGAIN or a dead socket: the cut line is dropped below
      }
    }
    this.lines.abandonPartialLine(this.keep);
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
