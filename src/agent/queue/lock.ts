// Exclusive lock on a spool directory: file `LOCK` holding the owner's pid (and, on Linux, its start time).
//
// Node has no flock(), so the lock is a file whose owner is checked for liveness:
// - Create: write a temp file with our identity, fsync, then link() it to `LOCK`. link() fails if `LOCK` exists, so
//   creation is atomic *with* its content (no half-written lock a racing opener could misread as stale).
// - `LOCK` exists: if its owner is alive (kill(pid, 0) succeeds or EPERM, and on Linux /proc/<pid>/stat shows the same
//   start time, so a recycled pid does not count) → SK_ERR_SPOOL_LOCKED. A lock naming our own pid is ours only if
//   this process holds it right now (containers restart the agent with the same pid, often 1).
// - Stale (owner dead, or unreadable after power loss): rename it to a private name, check the renamed file is
//   still the stale one we judged (if a racing opener had just replaced it with a live lock, put that back and give
//   up), delete it, and try to create again. Two openers taking over at once: exactly one link() wins.
// The spool directory must be on a local filesystem (pids mean nothing across hosts).
import { link, readFile, rename, open, unlink } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SidekickError } from '../../errors.js';
import type { Logger } from '../../log/logger.js';
import { fsyncDir, unlinkIfExists } from '../../common/atomic-file.js';

interface LockOwner {
  pid: number;
  start?: string;
  host?: string;
}

/** Locks held by this process, by path (so a same-pid lock left by a previous incarnation is seen as stale). */
const held = new Set<string>();

/** Start time of a process in clock ticks since boot (Linux /proc), or undefined where unavailable. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19]; // field 22 of the whole line; fields here start at field 3
  } catch {
    return undefined;
  }
}

function isAlive(owner: LockOwner, path: string): boolean {
  if (owner.pid === process.pid) return held.has(path);
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false; // ESRCH: no such process
  }
  if (owner.start !== undefined) {
    const now = processStartTime(owner.pid);
    if (now !== undefined && now !== owner.start) return false; // pid recycled by another process
  }
  return true;
}

function parseOwner(text: string): LockOwner | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockOwner>;
    if (typeof v.pid === 'number' && Number.isInteger(v.pid) && v.pid > 0) return v as LockOwner;
  } catch {
    // fall through
  }
  return undefined;
}

export class SpoolLock {
  private released = false;

  private constructor(
    readonly path: string,
    private readonly content: string,
  ) {}

  static async acquire(dir: string, log: Logger): Promise<SpoolLock> {
    const path = join(dir, 'LOCK');
    const owner: LockOwner = { pid: process.pid, host: hostname() };
    const start = processStartTime(process.pid);
    if (start !== undefined) owner.start = start;
    const content = `${JSON.stringify(owner)}\n`;
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    const fh = await open(tmp, 'w', 0o644);
    try {
      await fh.writeFile(content);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          await link(tmp, path);
          held.add(path);
          await fsyncDir(dir);
          return new SpoolLock(path, content);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
        let text: string;
        try {
          text = await readFile(path, 'utf8');
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // released meanwhile: try again
          throw err;
        }
        const other = parseOwner(text);
        if (other && isAlive(other, path)) throw lockedError(dir, other);
        // stale: move it aside, make sure it is the one we judged, remove it
        const aside = `${path}.stale.${process.pid}.${randomBytes(4).toString('hex')}`;
        try {
          await rename(path, aside);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
          throw err;
        }
        const movedText = await readFile(aside, 'utf8').catch(() => '');
        if (movedText !== text) {
          // a racing opener replaced the stale lock with its live one between our read and our rename: give it back
          await link(aside, path).catch(() => {});
          await unlink(aside).catch(() => {});
          const racer = parseOwner(movedText);
          throw lockedError(dir, racer ?? { pid: -1 });
        }
        await unlink(aside).catch(() => {});
        log.warn(
          { lockPath: path, stalePid: other?.pid, staleHost: other?.host },
          other ? `took over a stale spool lock of dead pid ${other.pid}` : 'took over an unreadable spool lock',
        );
      }
      throw new SidekickError('SK_ERR_SPOOL_LOCKED', `could not take the spool lock ${path} (kept changing hands)`, {
        dir,
        lockPath: path,
      });
    } finally {
      await unlinkIfExists(tmp).catch(() => {});
    }
  }

  /** The lock file went with its directory (removed while we held it): stop holding it, touch nothing on disk. */
  forget(): void {
    this.released = true;
    held.delete(this.path);
  }

  /** Remove the lock file if it is still ours. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    held.delete(this.path);
    try {
      if ((await readFile(this.path, 'utf8')) === this.content) await unlink(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

function lockedError(dir: string, owner: LockOwner): SidekickError {
  return new SidekickError(
    'SK_ERR_SPOOL_LOCKED',
    `spool directory ${dir} is locked by live process ${owner.pid}${owner.host ? ` on ${owner.host}` : ''}; ` +
      'stop the other agent or give this one another agent.spool.dir',
    { dir, pid: owner.pid, host: owner.host },
  );
}
