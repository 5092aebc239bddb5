// The lines the Node agent client has accepted but not yet handed to the kernel, and the counts the agent must hear
// about: records sent, and records dropped since the last report (a control line leading the next batch).
import { droppedLine } from '../receivers/control.js';

/**
 * Lines wait in a queue until the connection takes them as one batch (`out`). The batch is written from `outOff` on,
 * and every byte the kernel takes is accounted line by line (`advance`), so that a line cut by a lost connection is
 * known exactly: the agent discards a cut line, so it goes whole to the spill file, or is dropped and counted.
 */
export class PendingLines {
  // Lines not yet in a batch, oldest first, with their byte lengths.
  private queue: string[] = [];
  private queueLens: number[] = [];
  private queuedBytes = 0;
  // The batch being written: bytes from `outOff` on are still ours; line `outLine` has `lineLeft` bytes to go.
  out: Buffer | null = null;
  outOff = 0;
  private outLens: number[] = [];
  private outLine = 0;
  private lineLeft = 0;
  // A control line reporting drops may lead the batch: its bytes still to write, and the count it carries.
  private ctlLeft = 0;
  private reporting = 0;
  /** Drops not yet reported to the agent. */
  unreported = 0;
  /** Records handed to the kernel. */
  sent = 0;
  /** Records dropped (see AgentClientStats.dropped). */
  dropped = 0;

  /** Nothing queued and no batch in progress. */
  get empty(): boolean {
    return this.queue.length === 0 && this.out === null;
  }

  /** Lines waiting for the next batch. */
  get queued(): number {
    return this.queue.length;
  }

  /** Bytes not yet handed to the kernel (queue and the rest of the batch). */
  get bytes(): number {
    return this.queuedBytes + (this.out ? this.out.length - this.outOff : 0);
  }

  push(line: string, bytes: number): void {
    this.queue.push(line);
    this.queueLens.push(bytes);
    this.queuedBytes += bytes;
  }

  /** Counts `n` dropped records (to be reported to the agent); returns false for `return lines.drop(1)`. */
  drop(n: number): false {
    this.dropped += n;
    this.unreported += n;
    return false;
  }

  /** Moves the queue into the `out` batch. */
  takeQueue(): boolean {
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
  advance(n: number): void {
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

  /**
   * Bytes still to write of a line (or the leading control line) the kernel took only part of; 0 when the batch is
   * at a line boundary. Finishing them on the same connection saves the line.
   */
  partialRest(): number {
    if (!this.out || this.outOff === 0) return 0;
    if (this.ctlLeft > 0) return this.ctlLeft;
    return this.lineLeft !== this.outLens[this.outLine] ? this.lineLeft : 0;
  }

  /**
   * The connection is gone: a line cut in the middle cannot be finished on another one. It is offered whole to
   * `keep` (the spill file), else dropped and counted.
   */
  abandonPartialLine(keep: (line: string) => boolean): void {
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
    if (!keep(this.out.subarray(start, start + len).toString('utf8'))) this.drop(1);
    this.outOff += this.lineLeft;
    this.outLine++;
    this.lineLeft = this.outLens[this.outLine] ?? 0;
    if (this.outOff >= this.out.length) this.out = null;
  }

  /**
   * Hands the rest of the batch over in one piece (the socket.write() path): its bytes, how many lines it holds and
   * the drop count its control line carries. Call `settled` with the write's outcome.
   */
  takeBatch(): { chunk: Buffer; lines: number; reporting: number } | undefined {
    if (!this.out && !this.takeQueue()) return undefined;
    const lines = this.outLens.length - this.outLine;
    const chunk = this.out!.subarray(this.outOff);
    const reporting = this.ctlLeft > 0 ? this.reporting : 0;
    this.out = null;
    this.ctlLeft = 0;
    this.reporting = 0;
    return { chunk, lines, reporting };
  }

  /** The outcome of a batch handed over by takeBatch(). */
  settled(batch: { lines: number; reporting: number }, failed: boolean): void {
    if (failed) this.drop(batch.lines);
    else {
      this.sent += batch.lines;
      this.unreported -= batch.reporting;
    }
  }

  /** Empties everything, returning the whole lines not sent (the rest of the batch, then the queue), oldest first. */
  takeAll(): string[] {
    const rest = this.out ? this.out.subarray(this.outOff + this.ctlLeft).toString('utf8') : '';
    const lines = [
      ...rest
        .split('\n')
        .filter(Boolean)
        .map((l) => l + '\n'),
      ...this.queue,
    ];
    this.queue = [];
    this.queueLens = [];
    this.queuedBytes = 0;
    this.out = null;
    return lines;
  }
}
