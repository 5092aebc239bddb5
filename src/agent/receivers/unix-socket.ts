// The Unix stream socket receiver: many clients, many lines per connection, no reply.
//
// Accepts connections (up to maxConnections, from the file-descriptor limit), one Connection each (connection.ts:
// its own LineFramer, bad input never closes it, the agent never writes to a client). Reading pauses on every
// connection while the memory budget is exhausted. For a worker recycle, `detachAll()` stops reading every connection
// at once and hands out the raw handles with their unfinished line, so the next worker continues each stream exactly
// where this one stopped.
//
// Unfinished lines (the start of a line whose newline has not arrived) are held per connection, each up to
// maxRecordBytes, and together they count against memory.maxBytes with their own share, `budget.partialLimit` (a
// quarter). Pausing every connection would not free them (only reading on finishes a line: the deadlock of commit
// 8160393), and reading all of them lets 300 slow clients hold 300 MB. So past the share the receiver reads *one*
// connection at a time, the finisher: the one holding the largest unfinished line (the most to free). The others
// stop reading (their clients' bytes wait in the kernel) until the finisher has let its line go (completed it, or
// skipped it as too large), then the next largest is the finisher; under 75% of the share every connection reads
// again. Held memory stays under the share plus one line (maxRecordBytes) plus one read. A finisher whose client sends
// nothing for STALLED_LINE_MS in the middle of its line would hold everyone up: its line is cut, counted
// `invalid{reason="stalled"}` (SK_ERR_RECORD_STALLED) and skipped up to its newline, and the next one goes on.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { Logger } from 'pino';
import { sleep } from '../../common/async.js';
import { socketOverHandle } from '../../common/node-internals.js';
import { RateLimitedLog } from '../../log/logger.js';
import type { InvalidReason } from '../metrics.js';
import type { MemoryBudget } from '../worker/memory-budget.js';
import { Connection, type ConnectionOwner, type DetachedConnection } from './connection.js';
import { parseControl } from './control.js';
import type { LineSink } from './ndjson.js';

export type { DetachedConnection } from './connection.js';

export interface ReceiverSink {
  append(lines: Buffer, records: number): void;
  /**
   * The end of the event-loop turn in which the nap timer woke the napping connections and they read: what they
   * appended may be written now (one spool write per coalescing window, without one more wake-up for the spool's
   * flush timer).
   */
  turnDone?(): void;
  invalid(reason: InvalidReason, records: number): void;
  connection(): void;
  /** A new connection was closed at once: this worker holds as many as its file-descriptor limit allows. */
  connectionRejected?(): void;
  /** A client reported `count` records it had to drop (a control line). */
  clientDropped(count: number): void;
  /** An unterminated last line was discarded at end of a connection. */
  truncated(): void;
}

export interface ReceiverOptions {
  maxRecordBytes: number;
  /** Read coalescing window in ms (see Connection.nap); default 0 = off. */
  coalesceMs?: number;
  sink: ReceiverSink;
  budget: MemoryBudget;
  log: Logger;
  /** Most client connections held at once; default: from the process's file-descriptor limit (maxConnectionsFor). */
  maxConnections?: number;
  /**
   * Coalesce reads by pacing the whole event loop (see PACED TURNS above UnixSocketReceiver) instead of napping
   * connections. Only for a process that runs nothing but this pipeline (the agent worker): it blocks the thread.
   */
  pacedTurns?: boolean;
}

/**
 * PACED TURNS (the agent worker's way to coalesce reads, `pacedTurns`): connections never nap; instead, at the end
 * of an event-loop turn that read only a little (under PACE_BELOW_BYTES in all: records trickling in, one per client
 * write), after what it read was handed to the spool (turnDone: written to the OS in that turn), the thread sleeps
 * (Atomics.wait) until `coalesceMs` after the turn began. What clients write meanwhile waits in the kernel and wakes
 * nobody: the sockets are not polled while the thread sleeps, so the next turn reads every connection's records at
 * once, one wake-up per window however many connections write. Napping connections could not get there: libuv stops
 * reading a socket lazily (it stays in epoll until it next reports ready), so each napping connection still woke the
 * process once per window, and every window cost each connection a readStop/readStart. The price: everything else in
 * the process (export responses, timers, the supervisor's messages) also waits up to `coalesceMs`, which is why this
 * is only for a process that holds nothing but the pipeline. A turn that read more (bulk ingest), draining, a hand-over
 * or unfinished lines over their share never sleep; a turn that read nothing does not either (an idle agent blocks in
 * epoll as usual, and the first record after a quiet spell is read at once).
 */
const PACE_BELOW_BYTES = 64 * 1024;
/**
 * Paced turns keep each connection's unread bytes near this (a few % of a Unix socket's ~200 KiB send buffer), so a
 * client's non-blocking write never finds its buffer full because the agent slept: the window shrinks when the busiest
 * connection read more than this in one turn, and grows back (at most ×2 a turn, up to coalesceMs) when it read less.
 */
const PACE_CONN_BYTES = 16 * 1024;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/**
 * A woken connection that read nothing naps again (Connection.renap) up to this many times in a row; then it is left
 * reading, so a quiet client costs no timer (20 × the 5 ms default window: 100 ms without a record).
 */
const MAX_EMPTY_WAKES = 20;

/** A finisher (see the header) that receives nothing this long in the middle of its line has its line cut. */
export const STALLED_LINE_MS = 1000;
const STALL_CHECK_MS = 250;

/** File descriptors kept for everything that is not a client connection (spool, exporter, spill, node itself). */
const FD_RESERVE = 128;

/** The soft RLIMIT_NOFILE of this process (Linux /proc), or undefined when it cannot be read or is unlimited. */
export function fdSoftLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Accept backlog asked for: bursts of (re)connecting clients (PHP connects once per request) must queue, not fail. */
export const LISTEN_BACKLOG = 4096;

/**
 * The accept backlog in force on a socket listened with `requested`: Linux silently caps listen()'s backlog at
 * net.core.somaxconn (per network namespace, read from /proc), and offers no way to read a Unix socket's backlog back
 * but `ss -xl` (Send-Q of a listener). `somaxconn` is undefined where /proc cannot tell.
 */
export function effectiveBacklog(requested = LISTEN_BACKLOG): {
  requested: number;
  effective: number;
  somaxconn: number | undefined;
} {
  let somaxconn: number | undefined;
  try {
    const v = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim());
    if (Number.isInteger(v) && v > 0) somaxconn = v;
  } catch {
    // not Linux, or /proc not mounted
  }
  return { requested, effective: somaxconn === undefined ? requested : Math.min(requested, somaxconn), somaxconn };
}

/**
 * Client connections a worker takes with `fdLimit` descriptors: all but FD_RESERVE (half of a small limit), so a
 * flood of connections can never take the descriptors the spool, the exporter and Node itself need (at the limit,
 * even reading the process's RSS fails with EMFILE). Past it a new connection is closed at once and counted.
 */
export function maxConnectionsFor(fdLimit: number | undefined): number {
  if (fdLimit === undefined) return Infinity;
  return Math.max(1, fdLimit - Math.min(FD_RESERVE, Math.floor(fdLimit / 2)));
}

export class UnixSocketReceiver implements ConnectionOwner {
  readonly budget: MemoryBudget;
  /** Set by drain(): read to the end regardless of the memory budget. */
  draining = false;
  readonly lineSink: LineSink;
  maxRecordBytes: number;
  private readonly conns = new Set<Connection>();
  /** Read coalescing window (agent.ingest.coalesceMs); 0 = read as soon as data arrives. */
  coalesceMs: number;
  private readonly nappers = new Set<Connection>();
  private napTimer: NodeJS.Timeout | undefined;
  /** Connections woken by the last wakeAll(): the ones that read nothing nap again one turn later (renap). */
  private woken: Connection[] = [];
  /** The end-of-turn callback is scheduled (setImmediate: after this turn's poll phase). */
  private turnScheduled = false;
  /** Paced turns (see PACED TURNS): on, bytes read in this turn, and when the turn's first read came. */
  private readonly paced: boolean;
  private turnBytes = 0;
  /** The largest single read of this turn (the busiest connection's share). */
  private turnMaxRead = 0;
  private turnStartedAt = 0;
  /** When the previous paced turn began (its reads), and the window that was aimed for. */
  private lastTurnAt = 0;
  private paceWindowMs = 0;
  /** Turns that slept, and ms slept (status and tests). */
  pacedSleeps = 0;
  pacedSleptMs = 0;
  private readonly servers = new Set<net.Server>();
  private readonly badLog: RateLimitedLog;
  private readonly capLog: RateLimitedLog;
  private readonly log: Logger;
  private readonly sink: ReceiverSink;
  /** Most client connections held at once (see maxConnectionsFor). */
  readonly maxConnections: number;
  /** Unfinished lines over their share (see the header): only `finisher` reads. */
  private pressure = false;
  private finisher: Connection | undefined;
  private finisherGen = 0;
  /** When the finisher was chosen, or the budget last let readers go on: the start of its stall clock. */
  private finisherSince = 0;
  private stallTimer: NodeJS.Timeout | undefined;
  /** Set while connections are detached for a hand-over: nobody is resumed. */
  private detaching = false;
  private readonly pressureLog: RateLimitedLog;

  constructor(opts: ReceiverOptions) {
    this.sink = opts.sink;
    this.budget = opts.budget;
    this.maxRecordBytes = opts.maxRecordBytes;
    this.coalesceMs = opts.coalesceMs ?? 0;
    this.paced = opts.pacedTurns === true;
    this.log = opts.log;
    this.badLog = new RateLimitedLog(opts.log, 10, 10_000);
    this.capLog = new RateLimitedLog(opts.log, 1, 10_000);
    this.pressureLog = new RateLimitedLog(opts.log, 1, 10_000);
    this.maxConnections = opts.maxConnections ?? maxConnectionsFor(fdSoftLimit());
    const sink = opts.sink;
    const printable = (b: Buffer): string => b.toString('utf8').replace(/[^\x20-\x7e]/g, '?');
    const bad = (reason: InvalidReason, sample: Buffer): void => {
      sink.invalid(reason, 1);
      const code =
        reason === 'too_large'
          ? 'SK_ERR_RECORD_TOO_LARGE'
          : reason === 'stalled'
            ? 'SK_ERR_RECORD_STALLED'
            : 'SK_ERR_RECORD_INVALID';
      this.badLog.warn(
        { code, reason, sample: printable(sample) },
        reason === 'too_large'
          ? `${code}: a line longer than maxRecordBytes (${this.maxRecordBytes}) was skipped`
          : reason === 'stalled'
            ? `${code}: a client sent nothing for ${STALLED_LINE_MS} ms in the middle of a line while unfinished ` +
              `lines held their share of memory.maxBytes; the line was cut and the rest of it is skipped`
            : reason === 'bad_control'
              ? `${code}: a control line this agent does not understand was skipped`
              : `${code}: a line that is not a JSON object was skipped (${reason})`,
      );
    };
    this.lineSink = {
      good: (lines, records) => sink.append(lines, records),
      bad,
      control: (line) => void this.onControl(line),
      truncated: (sample) => {
        sink.truncated();
        this.badLog.warn(
          { code: 'SK_ERR_RECORD_INVALID', reason: 'truncated', sample: printable(sample) },
          'SK_ERR_RECORD_INVALID: a connection ended inside a line; the cut line was discarded (the client counts it as dropped)',
        );
      },
    };
    this.budget.on('relief', () => {
      this.finisherSince = Date.now();
      for (const c of this.conns) if (this.mayRead(c)) c.resume();
    });
    this.budget.on('exhausted', () => {
      if (this.draining) return;
      for (const c of this.conns) c.pause();
    });
  }

  /** Starts accepting on a listening (or about-to-listen) server. */
  attach(server: net.Server): void {
    this.servers.add(server);
    server.on('connection', (socket) => {
      if (this.conns.size >= this.maxConnections) {
        this.reject(socket);
        return;
      }
      this.sink.connection();
      this.accept(socket);
    });
  }

  /**
   * At the connection cap: the new connection is closed at once (the client sees EOF and reconnects or counts a
   * drop); the ones held go on. Without the cap the worker would run out of descriptors, where libuv closes new
   * connections silently and the spool, the exporter and Node itself fail with EMFILE.
   */
  private reject(socket: net.Socket): void {
    socket.destroy();
    this.sink.connectionRejected?.();
    this.capLog.warn(
      { code: 'SK_ERR_TOO_MANY_CONNECTIONS', open: this.conns.size, max: this.maxConnections },
      `SK_ERR_TOO_MANY_CONNECTIONS: ${this.conns.size} client connections open, the most this worker takes ` +
        `(its file-descriptor limit less ${FD_RESERVE} kept for the spool and exporter); a new connection was closed`,
    );
  }

  /** A net.Server for the receiver to listen with (no half-open: the receiver never writes). */
  static createServer(): net.Server {
    return net.createServer({ allowHalfOpen: false, pauseOnConnect: false });
  }

  private accept(socket: net.Socket): Connection {
    const conn = new Connection(socket, this);
    this.conns.add(conn);
    if (!this.mayRead(conn)) conn.pause();
    return conn;
  }

  /** Whether `conn` may read now: not while the budget is exhausted, nor while another one is the finisher. */
  mayRead(conn: Connection): boolean {
    if (this.draining) return true;
    if (this.budget.exhausted || this.detaching) return false;
    return !this.pressure || conn === this.finisher;
  }

  /** A connection's unfinished line changed: keep unfinished lines within their share (see the header). */
  partialsChanged(conn: Connection): void {
    if (this.detaching || this.draining) return;
    const held = this.budget.pool('receiver');
    const limit = this.budget.partialLimit;
    if (!this.pressure) {
      if (held > limit) this.enterPressure(held, limit);
      return;
    }
    if (held <= limit * 0.75) this.leavePressure();
    else if (conn === this.finisher && conn.framer.partialGen !== this.finisherGen) this.nextFinisher(conn);
  }

  private enterPressure(held: number, limit: number): void {
    this.pressure = true;
    this.finisher = undefined;
    for (const c of this.conns) c.pause();
    this.nextFinisher(undefined);
    this.stallTimer = setInterval(() => this.checkStall(), STALL_CHECK_MS);
    this.stallTimer.unref();
    this.pressureLog.warn(
      { held, limit, connections: this.conns.size },
      `unfinished lines hold ${held} bytes, over their share of memory.maxBytes (${limit}): reading one ` +
        `connection at a time until they are finished`,
    );
  }

  private leavePressure(): void {
    this.pressure = false;
    this.finisher = undefined;
    clearInterval(this.stallTimer);
    this.stallTimer = undefined;
    for (const c of this.conns) if (this.mayRead(c)) c.resume();
  }

  /** The next finisher: the largest unfinished line, another connection's before `prev`'s (so none is starved). */
  private nextFinisher(prev: Connection | undefined): void {
    let best: Connection | undefined;
    for (const c of this.conns) {
      if (c === prev || c.detached) continue;
      if (!best || c.framer.bufferedBytes > best.framer.bufferedBytes) best = c;
    }
    if (prev && !prev.detached && this.conns.has(prev) && (!best || best.framer.bufferedBytes === 0)) best = prev;
    this.finisher = best;
    this.finisherGen = best?.framer.partialGen ?? 0;
    this.finisherSince = Date.now();
    if (prev && prev !== best) prev.pause();
    if (best && this.mayRead(best)) best.resume();
  }

  /** A finisher whose client went quiet in the middle of its line: cut the line, go on with the next one. */
  private checkStall(): void {
    const f = this.finisher;
    if (!this.pressure || this.budget.exhausted || this.draining || this.detaching) return;
    if (!f) {
      this.nextFinisher(undefined);
      return;
    }
    if (Date.now() - Math.max(f.lastDataAt, this.finisherSince) < STALLED_LINE_MS) return;
    if (f.framer.cutPartial()) f.account();
    else this.nextFinisher(f); // nothing unfinished there (it went quiet between lines): someone else's turn
  }

  /** Adopts a connection detached by a previous worker (raw handle + its unfinished line). */
  adopt(handle: unknown, partial: Buffer, discarding: boolean): void {
    const conn = this.accept(socketOverHandle(handle));
    conn.framer.restorePartial(partial, discarding);
    conn.account();
  }

  /** One timer for every napping connection: they all read again when it fires. */
  napping(conn: Connection): void {
    this.nappers.add(conn);
    this.napTimer ??= setTimeout(this.onNapTimer, this.coalesceMs);
  }

  private readonly onNapTimer = (): void => {
    this.napTimer = undefined;
    this.wakeAll(true);
    this.scheduleTurnEnd();
  };

  /**
   * Every napping connection reads again. From the nap timer (`tick`), the ones woken are remembered: those that read
   * nothing in this turn nap again at its end (Connection.renap), so that an idle-but-active connection does not wake
   * the agent for each record its client writes before the next tick.
   */
  private wakeAll(tick = false): void {
    clearTimeout(this.napTimer);
    this.napTimer = undefined;
    if (this.nappers.size === 0) return;
    const all = [...this.nappers];
    this.nappers.clear();
    for (const c of all) if (c.wake() && tick) this.woken.push(c);
  }

  /** See ConnectionOwner.afterRead and PACED TURNS. */
  afterRead(bytes: number): boolean {
    if (!this.paced) return false;
    if (this.turnBytes === 0) this.turnStartedAt = performance.now();
    this.turnBytes += bytes;
    if (bytes > this.turnMaxRead) this.turnMaxRead = bytes;
    this.scheduleTurnEnd();
    return true;
  }

  private scheduleTurnEnd(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(this.onTurnEnd);
  }

  /**
   * Runs after the poll phase of the nap timer's turn (where the woken connections read), or of a paced turn that
   * read: renap, then a flush, then (paced) the sleep.
   */
  private readonly onTurnEnd = (): void => {
    this.turnScheduled = false;
    const woken = this.woken;
    if (woken.length > 0) {
      this.woken = [];
      // draining, detaching or pressure: nobody naps again (renap is a no-op for paused or detached connections)
      if (this.coalesceMs > 0 && !this.draining && !this.detaching && !this.pressure) {
        for (const c of woken) if (this.conns.has(c)) c.renap(MAX_EMPTY_WAKES);
      }
    }
    const bytes = this.turnBytes;
    const maxRead = this.turnMaxRead;
    this.turnBytes = 0;
    this.turnMaxRead = 0;
    // A bulk turn (paced, ≥ PACE_BELOW_BYTES) leaves its write buffer to fill up (or to the spool's 2 ms timer), as
    // before paced turns: sealing it every turn would only cut bulk ingest into more, smaller frames.
    if (!this.paced || bytes < PACE_BELOW_BYTES) this.sink.turnDone?.();
    if (!this.paced || bytes === 0) return;
    const began = this.turnStartedAt;
    // What this turn read piled up since the previous turn began (after a quiet spell: count it as one full window).
    const since = began - this.lastTurnAt;
    this.lastTurnAt = began;
    const cap = this.coalesceMs;
    if (bytes >= PACE_BELOW_BYTES || cap <= 0) return;
    if (this.draining || this.detaching || this.pressure || this.budget.exhausted) return;
    const last = since > 0 && since <= 2 * cap ? since : cap;
    const window = Math.min(cap, Math.max(1, last * Math.min(2, PACE_CONN_BYTES / Math.max(1, maxRead))));
    this.paceWindowMs = window;
    const ms = Math.floor(window - (performance.now() - began));
    if (ms < 1) return;
    Atomics.wait(sleeper, 0, 0, ms);
    this.pacedSleeps++;
    this.pacedSleptMs += ms;
  };

  forget(conn: Connection): void {
    this.nappers.delete(conn);
    if (!this.conns.delete(conn)) return;
    conn.release();
    if (!this.pressure || this.detaching || this.draining) return;
    if (this.budget.pool('receiver') <= this.budget.partialLimit * 0.75) this.leavePressure();
    else if (conn === this.finisher) this.nextFinisher(undefined);
  }

  /** Handles one control line from a client (a hello from an older client is accepted and ignored). */
  onControl(line: Buffer): void {
    const msg = parseControl(line);
    if (msg === undefined) {
      this.lineSink.bad('bad_control', line.subarray(0, 64));
      return;
    }
    if (msg.kind === 'dropped' && msg.count > 0) this.sink.clientDropped(msg.count);
  }

  setMaxRecordBytes(n: number): void {
    this.maxRecordBytes = n;
    for (const c of this.conns) c.framer.setMaxRecordBytes(n);
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  /** Closes every listener (open connections stay). Does not wait for connections. */
  stopAccepting(): void {
    for (const s of this.servers) {
      s.removeAllListeners('connection');
      s.on('connection', (socket) => this.accept(socket)); // a connection already in flight is still read
      s.close();
    }
    this.servers.clear();
  }

  /**
   * The graceful end of every connection (final stop; accepting must already have stopped). Each client gets a
   * "bye" (our half-close): our clients close their end at their next send and reconnect (to the next agent), so
   * every line they wrote before is read here, up to their EOF. A connection also ends when it has
   * been quiet for `idleMs` (idle clients, clients that do not read), and all remaining ones after `maxMs`.
   * Nothing the kernel took from a bye-aware client is lost; a client that ignores bye can lose what it writes after
   * the last read.
   */
  async drain(idleMs: number, maxMs: number): Promise<void> {
    const until = Date.now() + maxMs;
    // Read what clients already wrote, past the memory budget: bytes left unread in a socket at stop would be lost
    // without a count, while what is read reaches the spool (written, or counted by its own caps). Bounded by the
    // clients' socket buffers and maxMs.
    this.draining = true;
    this.coalesceMs = 0; // read eagerly to the end
    this.wakeAll();
    for (const c of this.conns) {
      c.resume();
      c.sayBye();
    }
    while (this.conns.size > 0 && Date.now() < until) {
      const now = Date.now();
      for (const c of this.conns) {
        if (now - c.lastDataAt >= idleMs) {
          c.framer.end();
          c.socket.destroy();
          this.forget(c);
        }
      }
      if (this.conns.size === 0) break;
      await sleep(Math.max(1, Math.min(idleMs, 25))); // at least 1 ms, as setTimeout would
    }
    this.destroyAll();
  }

  /** Stops every connection at once and returns them for hand-over. */
  detachAll(): DetachedConnection[] {
    this.detaching = true;
    clearInterval(this.stallTimer);
    const out: DetachedConnection[] = [];
    for (const c of [...this.conns]) {
      const d = c.detach();
      this.forget(c);
      if (d) out.push(d);
    }
    if (out.length) this.log.debug({ connections: out.length }, 'connections detached for hand-over');
    return out;
  }

  destroyAll(): void {
    clearInterval(this.stallTimer);
    this.wakeAll();
    for (const c of [...this.conns]) {
      c.socket.destroy();
      this.forget(c);
    }
  }
}
