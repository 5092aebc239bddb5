// A FIFO to use as a child's stderr, that the test reads, stops reading (and fills, so stderr is blocked: the next
// write would wait for a reader) and reads again. The test holds the FIFO open read-write and non-blocking, so opening
// it never waits, and it always has a reader: a write into it blocks (or answers EAGAIN), never fails with EPIPE.
import { execFileSync } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export interface LogLine {
  pid: number;
  msg?: string;
  component?: string;
  droppedLines?: number;
  [k: string]: unknown;
}

export class StderrFifo {
  readonly path: string;
  /** The write end to give a child as its stderr (blocking, as a shell redirection would open it). */
  readonly writeFd: number;
  private readonly fd: number;
  private text = '';
  private reading = true;
  private readonly timer: NodeJS.Timeout;
  private readonly buf = Buffer.alloc(1 << 16);

  constructor(dir: string, name = 'stderr.fifo') {
    this.path = join(dir, name);
    execFileSync('mkfifo', [this.path]);
    this.fd = openSync(this.path, constants.O_RDWR | constants.O_NONBLOCK);
    this.writeFd = openSync(this.path, constants.O_WRONLY);
    this.timer = setInterval(() => {
      if (this.reading) this.drain();
    }, 10);
  }

  /** Reads everything the FIFO holds now. */
  private drain(): void {
    for (;;) {
      let n: number;
      try {
        n = readSync(this.fd, this.buf, 0, this.buf.length, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return;
        throw err;
      }
      if (n === 0) return;
      this.text += this.buf.toString('latin1', 0, n);
    }
  }

  /** Stops reading and fills the FIFO (with lines that are not JSON): from now on, stderr is blocked. */
  block(): void {
    this.drain();
    this.reading = false;
    const page = Buffer.from(`${'#'.repeat(4095)}\n`);
    const one = Buffer.from('\n');
    for (const chunk of [page, one]) {
      for (;;) {
        try {
          writeSync(this.fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break;
          throw err;
        }
      }
    }
  }

  /** Reads again (and keeps reading). */
  unblock(): void {
    this.reading = true;
    this.drain();
  }

  /** Every JSON log line read so far (the filler and anything else left out). */
  lines(): LogLine[] {
    const text = Buffer.from(this.text, 'latin1').toString('utf8');
    const out: LogLine[] = [];
    for (const l of text.split('\n')) {
      if (!l.startsWith('{')) continue;
      try {
        out.push(JSON.parse(l) as LogLine);
      } catch {
        // a line cut by the end of what was read so far
      }
    }
    return out;
  }

  close(): void {
    clearInterval(this.timer);
    closeSync(this.writeFd);
    closeSync(this.fd);
  }
}

/** Lines of one pid: the logged ones, and the "lines dropped" notices of the stderr writer. */
export function linesOf(lines: LogLine[], pid: number): { logged: number; notices: number[] } {
  let logged = 0;
  const notices: number[] = [];
  for (const l of lines) {
    if (l.pid !== pid) continue;
    if (l.component === 'log' && typeof l.droppedLines === 'number') notices.push(l.droppedLines);
    else logged++;
  }
  return { logged, notices };
}

/** Resident memory of a process in bytes (Linux /proc). */
export function rssOf(pid: number): number {
  let status = '';
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    // gone
  }
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}
