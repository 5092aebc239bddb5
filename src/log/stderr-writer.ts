// This process's stderr, written so that logging never blocks an event loop.
//
// Why not pino.destination({ fd: 2, sync: true }): a write(2) to a pipe, FIFO or socket nobody drains waits until the
// reader reads, and a blocked log line then freezes the whole process (HTTP workers stop answering, the agent stops
// exporting). sonic-boom's sync mode, given a non-blocking fd, sleeps 100 ms and retries on EAGAIN: still blocking.
// Its async mode hands each write to fs.write in the libuv threadpool: on the inherited (blocking) fd 2 that parks one
// of the four threadpool threads, which DNS lookups, fs and zlib share, until a reader comes.
//
// So: a non-blocking descriptor and our own bounded queue. Each line is written at once with a non-blocking write; a
// pipe that is full answers EAGAIN in microseconds, and the line waits in the queue (up to `capBytes`); past the cap,
// new lines are dropped and counted. A timer (unref'd, backing off to RETRY_MAX_MS) tries again; once the queue has
// drained, one line says how many lines were dropped. At exit the queue is flushed, bounded by EXIT_FLUSH_MS, so the
// last line ("stopped") is not lost when stderr is writable, and a blocked stderr cannot hold the exit up.
//
// The descriptor (openStderr): a regular file is written as is (a local file never waits for a reader). A pipe, FIFO,
// TTY or character device is reopened through /proc/self/fd/2 with O_NONBLOCK: a private open file description, so
// the flag does not leak to the processes sharing our stderr (our HTTP workers, a shell pipeline). A socket (journald's
// stdout stream) cannot be reopened; for it, and where /proc is missing, Node's own process.stderr is created, which
// makes fd 2 non-blocking for pipes and sockets (libuv does), and fd 2 is written directly.
import { constants, fstatSync, openSync, writeSync } from 'node:fs';

/**
 * 1 MiB: about 4,000 lines of 250 bytes, a few seconds of the busiest logging (a reload, a crash loop, an export
 * failure burst) while a log shipper stalls, and small beside an HTTP worker's heap. Set with SIDEKICK_LOG_BUFFER_BYTES.
 */
export const DEFAULT_LOG_BUFFER_BYTES = 1024 * 1024;
const RETRY_MIN_MS = 10;
const RETRY_MAX_MS = 250;
/** Exit waits at most this long for a full stderr to take the queue, and gives up sooner without progress. */
const EXIT_FLUSH_MS = 1000;
const EXIT_STALL_MS = 250;

/** Lines this process logged, and how many of them never reached stderr (dropped while it was not drained). */
export interface LogCounts {
  lines: number;
  dropped: number;
}

/** The buffer cap from SIDEKICK_LOG_BUFFER_BYTES (bytes, at least 4 KiB) or the default. */
export function logBufferBytes(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number(env.SIDEKICK_LOG_BUFFER_BYTES);
  return Number.isFinite(n) && n > 0 ? Math.max(4096, Math.floor(n)) : DEFAULT_LOG_BUFFER_BYTES;
}

/** A descriptor for this process's stderr that never makes a write wait (see the header); undefined: no stderr. */
export function openStderr(): number | undefined {
  let regular: boolean;
  try {
    regular = fstatSync(2).isFile();
  } catch {
    return undefined; // fd 2 closed
  }
  if (regular) return 2;
  try {
    return openSync('/proc/self/fd/2', constants.O_WRONLY | constants.O_NONBLOCK); // O_CLOEXEC added by libuv
  } catch {
    void process.stderr; // a socket, or no /proc: let libuv switch fd 2 to non-blocking
    return 2;
  }
}

export class StderrWriter {
  private readonly queue: Buffer[] = [];
  /** The "lines dropped" notices in the queue (they are not logged lines: never counted as dropped). */
  private readonly notices = new WeakSet<Buffer>();
  private queuedBytes = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs = RETRY_MIN_MS;
  private lines = 0;
  private dropped = 0;
  private reportedDropped = 0;

  /**
   * @param fd where to write (openStderr()); undefined: nowhere, every line is dropped and counted.
   * @param extraDropped lines dropped before they reached this writer (by worker threads, thread-link.ts), counted in.
   */
  constructor(
    private readonly fd: number | undefined,
    private readonly capBytes: number,
    private readonly extraDropped: () => number = () => 0,
  ) {}

  /** One complete line (with its newline). Never blocks: written, queued, or dropped and counted. */
  write(line: string): boolean {
    this.lines++;
    const buf = Buffer.from(line);
    if (this.fd === undefined || this.queuedBytes + buf.length > this.capBytes) {
      this.dropped++;
      return true;
    }
    this.queue.push(buf);
    this.queuedBytes += buf.length;
    if (this.retryTimer === undefined) this.flush();
    return true;
  }

  counts(): LogCounts {
    const extra = this.extraDropped();
    return { lines: this.lines + extra, dropped: this.dropped + extra };
  }

  /** Bytes waiting for stderr. */
  get pendingBytes(): number {
    return this.queuedBytes;
  }

  /** Writes what stderr takes now; schedules a retry if it is full. */
  private flush(): void {
    this.retryTimer = undefined;
    const before = this.queuedBytes;
    if (this.writeQueued() === 'blocked') {
      // Progress means a reader is reading: look again soon. None: back off.
      this.retryMs = this.queuedBytes < before ? RETRY_MIN_MS : Math.min(RETRY_MAX_MS, this.retryMs * 2);
      this.retryTimer = setTimeout(() => this.flush(), this.retryMs);
      this.retryTimer.unref(); // a blocked stderr must not keep the process alive; exit flushes what it can
      return;
    }
    this.retryMs = RETRY_MIN_MS;
  }

  /**
   * Writes queued lines until the queue is empty ('drained') or stderr is full ('blocked'). Once drained after
   * drops, queues the line that says how many (it is not counted in `lines`) and writes it too. 'failed': stderr
   * refused the write for good (EPIPE: no reader left, EBADF): the queue is dropped and counted; the next line tries
   * again (a FIFO can get a reader back).
   */
  private writeQueued(): 'drained' | 'blocked' | 'failed' {
    for (;;) {
      while (this.queue.length > 0) {
        const head = this.queue[0]!;
        let n: number;
        try {
          n = writeSync(this.fd!, head);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return 'blocked';
          for (const b of this.queue) if (!this.notices.has(b)) this.dropped++;
          this.queue.length = 0;
          this.queuedBytes = 0;
          return 'failed';
        }
        this.queuedBytes -= n;
        // A partial write keeps the rest of the line at the head: lines reach stderr whole or not at all.
        if (n < head.length) {
          const rest = head.subarray(n);
          if (this.notices.has(head)) this.notices.add(rest);
          this.queue[0] = rest;
        } else this.queue.shift();
      }
      const dropped = this.counts().dropped;
      if (dropped === this.reportedDropped) return 'drained';
      const notice = Buffer.from(droppedLine(dropped - this.reportedDropped, dropped));
      this.reportedDropped = dropped;
      this.notices.add(notice);
      this.queue.push(notice);
      this.queuedBytes += notice.length;
    }
  }

  /** At exit: write what stderr takes within EXIT_FLUSH_MS (less when it makes no progress). Synchronous. */
  flushAtExit(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.fd === undefined) return;
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    const deadline = Date.now() + EXIT_FLUSH_MS;
    let lastProgress = Date.now();
    let pauseMs = 1;
    for (;;) {
      const before = this.queuedBytes;
      if (this.writeQueued() !== 'blocked') return;
      const now = Date.now();
      if (this.queuedBytes < before) lastProgress = now;
      if (now >= deadline || now - lastProgress >= EXIT_STALL_MS) return;
      Atomics.wait(sleeper, 0, 0, pauseMs); // a short sleep: the process is exiting, nothing else runs
      pauseMs = Math.min(20, pauseMs * 2);
    }
  }
}

/** The line written once stderr drains after lines were dropped, in the logger's JSON shape. */
function droppedLine(n: number, total: number): string {
  return `${JSON.stringify({
    level: 'warn',
    time: Date.now(),
    pid: process.pid,
    component: 'log',
    droppedLines: n,
    droppedLinesTotal: total,
    msg: `stderr was not drained: ${n} log lines dropped`,
  })}\n`;
}
