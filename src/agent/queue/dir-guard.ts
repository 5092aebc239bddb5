// Is the spool directory still the one the spool opened and locked? A directory removed while the agent runs (a
// cleanup job, `rm -rf`, a tmpfiles rule) leaves every open file working, so writes into the open segment and the
// ledger go on succeeding into unlinked inodes while anything that needs a path (a segment roll, the reader opening a
// segment, side files, the directory fsync) fails with ENOENT: the spool wedged, and a restart found an empty
// directory (everything accepted was lost without a count). A directory replaced under the same path (removed and
// recreated, another filesystem mounted over it) is the same case: the spool's files are not in it.
//
// The check compares the path's (dev, ino) with the ones taken at open (or at the last rebuild): once a second
// (CHECK_INTERVAL_MS, a stat), and at once when a part sees ENOENT on a path (suspect()). What happens then is
// rebuild.ts (the rule is stated there).
import { stat } from 'node:fs/promises';

export const CHECK_INTERVAL_MS = 1000;

export interface DirIdentity {
  dev: number;
  ino: number;
}

/** The directory's identity now; undefined if the path is missing or not a directory. */
export async function dirIdentity(dir: string): Promise<DirIdentity | undefined> {
  try {
    const s = await stat(dir);
    return s.isDirectory() ? { dev: s.dev, ino: s.ino } : undefined;
  } catch {
    return undefined;
  }
}

export class DirGuard {
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<boolean> | undefined;
  private stopped = false;

  constructor(
    private readonly dir: string,
    private identity: DirIdentity,
    /** Called (not awaited) when the check finds the directory gone or replaced. */
    private readonly lost: () => void,
  ) {}

  start(): void {
    if (this.stopped || this.timer) return;
    this.timer = setInterval(() => void this.check(), CHECK_INTERVAL_MS);
    this.timer.unref();
  }

  /** The spool now lives in a (re)created directory with this identity. */
  adopt(identity: DirIdentity): void {
    this.identity = identity;
  }

  /** `now` is the directory the spool lives in. */
  is(now: DirIdentity): boolean {
    return now.dev === this.identity.dev && now.ino === this.identity.ino;
  }

  /** A part saw ENOENT on a path inside the directory: check now. */
  suspect(err: unknown): void {
    if ((err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') void this.check();
  }

  /** True while the path is the directory the spool opened; false (and lost() called) otherwise. Coalesced. */
  check(): Promise<boolean> {
    if (this.stopped) return Promise.resolve(true);
    this.checking ??= dirIdentity(this.dir).then((now) => {
      this.checking = undefined;
      const same = now !== undefined && this.is(now);
      if (!same && !this.stopped) this.lost();
      return same;
    });
    return this.checking;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
