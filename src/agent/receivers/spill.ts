// The spill receiver: records clients wrote to disk while they could not reach the agent, fed into the pipeline.
//
// Clients (PHP, Node) that cannot hand a line to the agent's socket append it to `<spill dir>/spill.ndjson`: one
// whole line per O_APPEND write, never a lock, capped by the file's size (docs/clients.md "Spill"). Drops they could
// not avoid go there too, as control lines. This receiver tails that file the way a log shipper does:
//
// - It reads from a remembered offset up to the last complete line, pushes the lines through the same framer and
//   sink as socket data (validation, control lines, counters), lets the spool make them durable (flush = fsync), and
//   only then saves the new offset. Resumable: a crash re-reads at most the lines between the spool's fsync and the
//   offset write (at-least-once; central drops the duplicates by record content only, so that window is kept to one
//   chunk of ≤ 1 MiB per fsync). Offsets are keyed by the file's identity (device, inode, birth time), not its name.
// - Rotation without locks: a fully read file is renamed to `spill.ndjson.<ms>.draining` (the offset goes with its
//   identity), so the next spill creates a fresh file. A writer that opened the old name just before the rename may
//   still append to the draining file: it is read again until it has not grown for DRAIN_GRACE_MS, then deleted
//   (offset entry removed first: a crash in between re-reads rather than skips). A last line without its newline at
//   that point is a torn write (a writer died mid-write): counted as truncated and discarded.
// - Triggers: start, every `scanIntervalMs`, and fs.watch events on the directory (debounced).
// - Back-pressure: between chunks it waits while the memory budget is exhausted, like a paused socket.
import { watch, type FSWatcher } from 'node:fs';
import { chmod, chown, mkdir, open, readFile, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { onceWithin } from '../../common/async.js';
import type { MemoryBudget } from '../worker/memory-budget.js';
import { writeFileAtomic, unlinkIfExists } from '../../common/atomic-file.js';
import { LineFramer, type LineSink } from './ndjson.js';
import { resolveGroup } from './socket-file.js';

export const SPILL_FILE = 'spill.ndjson';
const DRAINING = /^spill\.ndjson\.(\d+)\.draining$/;
const CHUNK_BYTES = 1024 * 1024;
const DRAIN_GRACE_MS = 5000;
const WATCH_DEBOUNCE_MS = 50;

export interface SpillReceiverOptions {
  dir: string;
  /** Where offsets are kept (inside the spool directory: the spool's lock makes it single-writer). */
  stateFile: string;
  scanIntervalMs: number;
  maxRecordBytes: number;
  /** Directory group for client writers (the socket's group); the dir is created 2770. */
  group: string | number | undefined;
  sink: LineSink;
  /** Makes everything appended so far durable (the spool's flush). */
  flush: () => Promise<void>;
  budget: MemoryBudget;
  log: Logger;
  /** Records read from spill files (for the `spill_replayed` counter). */
  onReplayed: (records: number) => void;
  /** A rotated file is deleted once it has not grown for this long (default 5 s). */
  drainGraceMs?: number;
}

export interface SpillStats {
  dir: string;
  /** Bytes written to spill files and not read yet. */
  pendingBytes: number;
  /** Age of the oldest unread spilled data (0 when none): since the file's birth, or since the last catch-up. */
  oldestPendingMs: number;
  files: number;
  lastError?: string;
}

interface FileState {
  offset: number;
  /** Epoch ms since which this file has had unread data (its birth time the first time we see it). */
  pendingSince: number;
}

export class SpillReceiver {
  private offsets = new Map<string, FileState>();
  private timer: NodeJS.Timeout | undefined;
  private watcher: FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private stats: SpillStats;
  private readonly opts: SpillReceiverOptions;

  constructor(opts: SpillReceiverOptions) {
    this.opts = opts;
    this.stats = { dir: opts.dir, pendingBytes: 0, oldestPendingMs: 0, files: 0 };
  }

  async start(): Promise<void> {
    const { dir, group } = this.opts;
    try {
      // Created here (not by an operator): setgid 2770 whatever the umask, so client writers of the group can add files
      // and the agent can read, rename and delete them; no world access.
      if (await mkdir(dir, { recursive: true })) {
        if (group !== undefined) await chown(dir, -1, resolveGroup(group)).catch(() => undefined);
        await chmod(dir, 0o2770);
      }
    } catch (err) {
      this.opts.log.warn({ err, dir }, 'spill directory cannot be created; client spill files will not be replayed');
    }
    this.offsets = await this.loadState();
    try {
      this.watcher = watch(dir, { persistent: false }, () => this.soon());
      this.watcher.on('error', () => undefined);
    } catch {
      // no watch support here: the interval alone
    }
    this.timer = setInterval(() => this.kick(), this.opts.scanIntervalMs);
    this.timer.unref();
    this.kick();
  }

  /** Stops scanning; waits for a scan in progress (it ends at its next chunk boundary). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.debounce);
    this.watcher?.close();
    await this.running;
  }

  snapshot(): SpillStats {
    return { ...this.stats };
  }

  /** Runs one scan now (tests, and `kick()`); resolves when it and any scan it queued are done. */
  scanNow(): Promise<void> {
    this.kick();
    return this.running ?? Promise.resolve();
  }

  private soon(): void {
    if (this.debounce || this.stopped) return;
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.kick();
    }, WATCH_DEBOUNCE_MS);
    this.debounce.unref();
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.scan();
          delete this.stats.lastError;
        } catch (err) {
          this.stats.lastError = String(err);
          this.opts.log.warn({ err, dir: this.opts.dir }, 'spill scan failed; retrying at the next scan');
        }
      } while (this.again && !this.stopped);
    })().finally(() => (this.running = undefined));
  }

  private async scan(): Promise<void> {
    const { dir } = this.opts;
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    // Oldest first: draining files by their rotation time, then the live file.
    const draining = names
      .filter((n) => DRAINING.test(n))
      .sort((a, b) => Number(DRAINING.exec(a)![1]) - Number(DRAINING.exec(b)![1]));
    const files = [...draining, ...(names.includes(SPILL_FILE) ? [SPILL_FILE] : [])];
    let pending = 0;
    let oldest = 0;
    const now = Date.now();
    const seen = new Set<string>();
    for (const name of files) {
      if (this.stopped) return;
      const r = await this.consume(name);
      if (!r) continue;
      seen.add(r.id);
      if (r.pending > 0) {
        pending += r.pending;
        oldest = Math.max(oldest, now - r.pendingSince);
      }
    }
    // Forget offsets of files that are gone (deleted by us, or by an operator).
    let changed = false;
    for (const id of this.offsets.keys())
      if (!seen.has(id)) {
        this.offsets.delete(id);
        changed = true;
      }
    if (changed) await this.saveState();
    this.stats.pendingBytes = pending;
    this.stats.oldestPendingMs = oldest;
    this.stats.files = files.length;
  }

  /** Reads one file from its offset to its last complete line; rotates or deletes it when done. */
  private async consume(name: string): Promise<{ id: string; pending: number; pendingSince: number } | undefined> {
    const path = join(this.opts.dir, name);
    let fh;
    try {
      fh = await open(path, 'r');
    } catch {
      return undefined; // gone between readdir and open
    }
    try {
      const st = await fh.stat();
      const id = `${st.dev}:${st.ino}:${Math.trunc(st.birthtimeMs)}`;
      let state = this.offsets.get(id);
      if (!state) {
        state = { offset: 0, pendingSince: Math.trunc(st.birthtimeMs) || Date.now() };
        this.offsets.set(id, state);
      }
      let size = st.size;
      const chunk = Math.max(CHUNK_BYTES, this.opts.maxRecordBytes + 1); // any valid line fits in one chunk
      const buf = Buffer.allocUnsafe(chunk);
      while (state.offset < size && !this.stopped) {
        await this.budgetRelief();
        const { bytesRead } = await fh.read(buf, 0, Math.min(chunk, size - state.offset), state.offset);
        if (bytesRead === 0) break;
        const lastNl = buf.lastIndexOf(0x0a, bytesRead - 1);
        if (lastNl < 0) {
          if (bytesRead < chunk) break; // an unfinished last line: wait for its writer (or the drain grace)
          // A full chunk without a newline is a line over maxRecordBytes: skip it up to its newline.
          const next = await nextLineStart(fh, state.offset + bytesRead, size);
          if (next === undefined) break;
          this.opts.sink.bad('too_large', buf.subarray(0, 64));
          state.offset = next;
          await this.saveState();
          continue;
        }
        const records = this.feed(buf.subarray(0, lastNl + 1));
        // Fed: this process never feeds these lines again, even if the flush below fails (the spool holds them in
        // its write buffer and writes them, or counts them dropped disk_full). Only the *saved* offset waits for
        // durability: a crash before the next successful flush re-reads them (at-least-once).
        state.offset += lastNl + 1;
        if (records > 0) this.opts.onReplayed(records);
        await this.opts.flush();
        await this.saveState();
        if (state.offset >= size) size = (await fh.stat()).size; // writers may have appended meanwhile
      }
      const latest = await fh.stat();
      const drained = name !== SPILL_FILE && Date.now() - latest.mtimeMs >= (this.opts.drainGraceMs ?? DRAIN_GRACE_MS);
      if (state.offset < size && !drained) {
        return { id, pending: size - state.offset, pendingSince: state.pendingSince };
      }
      state.pendingSince = Date.now();
      if (name === SPILL_FILE) {
        if (size > 0) await this.rotate(path);
      } else if (drained) await this.finish(id, path, state.offset < size);
      return { id, pending: 0, pendingSince: state.pendingSince };
    } finally {
      await fh.close();
    }
  }

  /** Counts the records in `lines` (complete lines) while pushing them through the sink. */
  private feed(lines: Buffer): number {
    let records = 0;
    const counting: LineSink = {
      good: (l, n) => {
        records += n;
        this.opts.sink.good(l, n);
      },
      bad: (reason, sample) => this.opts.sink.bad(reason, sample),
      control: (line) => this.opts.sink.control(line),
      truncated: (sample) => this.opts.sink.truncated(sample),
    };
    new LineFramer(this.opts.maxRecordBytes, counting).push(lines);
    return records;
  }

  /** The live file is fully read: move it aside so writers start a new one; keep reading it for a grace period. */
  private async rotate(path: string): Promise<void> {
    const target = join(this.opts.dir, `${SPILL_FILE}.${Date.now()}.draining`);
    await rename(path, target);
  }

  /** A draining file that stopped growing: count a torn tail, forget its offset, delete it. */
  private async finish(id: string, path: string, tornTail: boolean): Promise<void> {
    if (tornTail) this.opts.sink.truncated(Buffer.from('(torn last line of a spill file)'));
    this.offsets.delete(id);
    await this.saveState();
    await unlinkIfExists(path);
  }

  /** Waits while the memory budget is exhausted; wakes at least every 100 ms, so a stop is not held up. */
  private async budgetRelief(): Promise<void> {
    const budget = this.opts.budget;
    while (budget.exhausted && !this.stopped) await onceWithin(budget, 'relief', 100);
  }

  private async loadState(): Promise<Map<string, FileState>> {
    try {
      const raw = JSON.parse(await readFile(this.opts.stateFile, 'utf8')) as { offsets?: Record<string, number> };
      const now = Date.now();
      return new Map(Object.entries(raw.offsets ?? {}).map(([id, offset]) => [id, { offset, pendingSince: now }]));
    } catch {
      return new Map();
    }
  }

  private async saveState(): Promise<void> {
    const offsets: Record<string, number> = {};
    for (const [id, s] of this.offsets) offsets[id] = s.offset;
    const file = this.opts.stateFile;
    await writeFileAtomic(file, JSON.stringify({ offsets }));
  }
}

/** The offset just after the next newline at or after `from`, or undefined when there is none yet. */
async function nextLineStart(
  fh: Awaited<ReturnType<typeof open>>,
  from: number,
  size: number,
): Promise<number | undefined> {
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (let pos = from; pos < size;) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) return undefined;
    const nl = buf.subarray(0, bytesRead).indexOf(0x0a);
    if (nl >= 0) return pos + nl + 1;
    pos += bytesRead;
  }
  return undefined;
}
