// One client connection of the Unix socket receiver (unix-socket.ts). Its own LineFramer; good lines go straight to
// the sink (the spool append). A connection is never closed because of bad input, and the agent never writes to a
// client (a graceful stop half-closes: see sayBye). Reading pauses while the memory budget is exhausted, and naps
// for a moment after a small read (read coalescing, see nap). For a worker recycle, detach() stops reading at once
// and hands out the raw handle with its unfinished line. The Node internals this takes (stream handles) are in
// common/node-internals.
import type net from 'node:net';
import {
  readEndSeen,
  startHandleReading,
  stopHandleReading,
  streamHandleOf,
  takeStreamHandle,
} from '../../common/node-internals.js';
import type { MemoryBudget } from '../worker/memory-budget.js';
import { LineFramer, type LineSink } from './ndjson.js';

/** What a connection needs of the receiver that holds it. */
export interface ConnectionOwner {
  /** False while this connection must not read (memory budget exhausted, or another one finishes its line). */
  mayRead(conn: Connection): boolean;
  /** The connection's unfinished line changed (size, or a line was let go of). */
  partialsChanged(conn: Connection): void;
  readonly maxRecordBytes: number;
  readonly lineSink: LineSink;
  readonly budget: MemoryBudget;
  /** Read to the end regardless of the memory budget (the final drain). */
  readonly draining: boolean;
  /** Read coalescing window in ms; 0 = off. */
  readonly coalesceMs: number;
  /** The connection stopped reading for coalesceMs (nap): wake it with the others. */
  napping(conn: Connection): void;
  /**
   * A read of `bytes` happened and the connection may read on: true when the owner coalesces reads itself (paced
   * turns, see UnixSocketReceiver), so the connection must not nap.
   */
  afterRead(bytes: number): boolean;
  /** The connection closed. */
  forget(conn: Connection): void;
}

/** What a detached connection carries to its next owner. */
export interface DetachedConnection {
  handle: unknown;
  partial: Buffer;
  discarding: boolean;
}

/** A read this large means more is waiting: keep reading rather than nap. */
export const NAP_BELOW_BYTES = 32 * 1024;

export class Connection {
  readonly framer: LineFramer;
  private held = 0;
  private heldGen = 0;
  paused = false;
  lastDataAt = Date.now();
  detached = false;
  /** Not reading for a moment (read coalescing), see nap(). */
  private napping = false;
  /** Reads since the last wake (a woken connection that read nothing naps again at once: see renap()). */
  readsSinceWake = 0;
  /** Wakes in a row that found nothing to read (see renap()). */
  emptyWakes = 0;

  constructor(
    readonly socket: net.Socket,
    private readonly receiver: ConnectionOwner,
  ) {
    this.framer = new LineFramer(receiver.maxRecordBytes, receiver.lineSink);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => {
      this.framer.end();
      this.account();
    });
    socket.on('error', () => {
      // a client vanishing mid-write is normal; the framer keeps what arrived
    });
    socket.on('close', () => this.receiver.forget(this));
  }

  private onData(chunk: Buffer): void {
    this.lastDataAt = Date.now();
    this.readsSinceWake++;
    this.emptyWakes = 0;
    this.framer.push(chunk);
    this.account();
    if (!this.receiver.mayRead(this)) this.pause();
    else if (this.receiver.afterRead(chunk.length)) return;
    else if (chunk.length < NAP_BELOW_BYTES && this.receiver.coalesceMs > 0) this.nap();
  }

  /**
   * Read coalescing: after a small read, stop reading this connection for `coalesceMs`, so the lines clients write
   * meanwhile wait in the kernel (their send buffers hold ~1 MiB) and the next read takes them all at once. A busy PHP
   * host sends each record as its own small write; read one by one, every record costs the agent an event-loop turn
   * and the client a wake-up of the agent (expensive on a VM). The socket is really taken out of the poll set
   * (readStop), not just paused in JS, so those writes wake nobody.
   */
  private nap(): void {
    const handle = streamHandleOf(this.socket);
    if (!handle || this.napping || this.paused || this.detached || this.socket.destroyed) return;
    if (readEndSeen(this.socket)) return; // EOF already read: the rest is in the stream's buffer, nothing to wait for
    this.napping = true;
    this.socket.pause();
    stopHandleReading(handle);
    this.receiver.napping(this);
  }

  /** Reads again (the nap is over); false when it does not (paused, detached, closed, or it was not napping). */
  wake(): boolean {
    if (!this.napping) return false;
    this.napping = false;
    if (this.paused || this.detached || this.socket.destroyed) return false;
    this.readsSinceWake = 0;
    this.readAgain();
    return true;
  }

  /**
   * Called one event-loop turn after wake() (the poll phase in between read whatever the client had written): a
   * connection that read nothing naps again at once, rather than stay in the poll set where its client's next write
   * would wake the agent for that one record. So while clients write, the agent reads every connection once per
   * coalescing window, whatever the number of connections and however their writes are spread. A connection that
   * found nothing `maxEmpty` times in a row is left reading (its client went quiet: its next write wakes the agent,
   * and no timer runs for idle connections). True when it napped again.
   */
  renap(maxEmpty: number): boolean {
    if (this.napping || this.readsSinceWake > 0) return false;
    if (++this.emptyWakes > maxEmpty) return false;
    this.nap();
    return this.napping;
  }

  /**
   * Resumes the stream and, if nap() stopped the handle, the handle too: the stream may still count its last read
   * request as pending and would then never ask the handle again.
   */
  private readAgain(): void {
    const handle = streamHandleOf(this.socket);
    // Never restart a handle that already read EOF: a second EOF would be a push after end, an error that destroys
    // the socket with the lines still in its buffer.
    if (handle && !handle.reading && !readEndSeen(this.socket)) startHandleReading(handle);
    this.socket.resume();
  }

  account(): void {
    const now = this.framer.bufferedBytes;
    const gen = this.framer.partialGen;
    if (now === this.held && gen === this.heldGen) return;
    this.receiver.budget.add('receiver', now - this.held);
    this.held = now;
    this.heldGen = gen;
    if (!this.detached) this.receiver.partialsChanged(this);
  }

  /**
   * Tells the client this agent is going away: a half-close (FIN on our side; we keep reading). PHP's liveness check
   * of a persistent socket (a peek that reads 0) and the Node client's 'end' both see it before their next write,
   * close their end and connect again, so we read everything they wrote up to their EOF — at no cost per request.
   * The agent never writes data to a client: a client that exits with unread data in its socket makes the kernel
   * report ECONNRESET here, and the lines it wrote just before would be lost (seen with PHP CLI clients).
   */
  sayBye(): void {
    if (this.detached || this.socket.destroyed || !this.socket.writable) return;
    this.lastDataAt = Date.now(); // the client gets a full idle period to answer
    this.socket.end();
  }

  /**
   * Stops reading: the socket is taken out of the poll set (readStop), as for a nap, so a paused connection holds no
   * more than what was read already (a JS-only pause lets Node's stream read on up to its high-water mark, per
   * connection, outside the budget).
   */
  pause(): void {
    if (this.paused || this.detached) return;
    this.paused = true;
    this.socket.pause();
    const handle = streamHandleOf(this.socket);
    if (handle && !this.socket.destroyed) stopHandleReading(handle);
  }

  resume(): void {
    if (!this.paused || this.detached) return;
    this.paused = false;
    this.napping = false;
    if (!this.socket.destroyed) this.readAgain();
  }

  release(): void {
    this.framer.setMaxRecordBytes(this.receiver.maxRecordBytes);
    this.receiver.budget.add('receiver', -this.held);
    this.held = 0;
  }

  /**
   * Stops reading *now* and takes the native handle away from the socket object, so nothing more is read in this
   * process: readStop on the handle, then consume whatever the stream already buffered (only present if the
   * connection was paused), then detach the handle as child_process does when it sends a socket.
   */
  detach(): DetachedConnection | undefined {
    const socket = this.socket;
    const handle = streamHandleOf(socket);
    if (!handle || socket.destroyed) return undefined;
    stopHandleReading(handle);
    socket.removeAllListeners('data');
    let chunk: Buffer | null;
    while ((chunk = socket.read() as Buffer | null) !== null) this.framer.push(chunk);
    stopHandleReading(handle); // read() may have restarted it; no data is delivered before we return
    takeStreamHandle(socket);
    socket.removeAllListeners();
    socket.on('error', () => undefined);
    this.detached = true;
    const { partial, discarding } = this.framer.takePartial();
    this.account();
    return { handle, partial, discarding };
  }
}
