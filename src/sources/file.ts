// The file source: a JSON, YAML or .env file, or a directory of them, published on every change.
//
// Event-driven: fs.watch on the *folder* that holds the file, never on the file itself, because editors and
// deployers replace files rather than write them: an atomic-rename save, vim's backup-and-rename, `mv` over the
// file, and Kubernetes ConfigMap volumes, where `app.yaml -> ..data/app.yaml` and an update swaps the `..data`
// symlink to a new timestamped folder. A watch on the file would follow the old inode and go quiet. Each change
// (debounced) re-resolves symlinks, re-reads and re-parses; where a symlink leads to another folder, that folder is
// watched too, and the set of watched folders follows the symlinks as they move.
//
// Errors: on the first load of a run, anything wrong (missing file, bad content) throws, which is a boot failure
// with the message, retried with backoff by the runtime. After the first publish the last good snapshot stays: a
// deleted file, invalid content or a snapshot over maxVarsBytes is logged (rate-limited, with the path and the
// parser's message) and shown as the sidekick's `sourceError` in `sidekick status` until a good load clears it.
// The one failure it cannot ride out is losing the watched folder itself: then it throws (a crash, restarted).
// Content rules (what becomes a var) are in file-parse.ts.
import { watch, type FSWatcher } from 'node:fs';
import { readFile, readdir, realpath, stat, lstat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { FileSourceConfig } from '../config/sources.js';
import type { SidekickContext } from '../sidekicks/context.js';
import { childLogger, RateLimitedLog, type Logger } from '../log/logger.js';
import { describeError } from '../errors.js';
import type { SourceMain } from './index.js';
import { FileContentError, formatOfName, isConfigEntry, mergeInNameOrder, parseVars } from './file-parse.js';
import { reportSourceError } from './report.js';

export function createSource(config: FileSourceConfig): SourceMain {
  return (ctx) => new FileSource(config, ctx).run();
}

/** The file (or folder) is not there: after the first publish, the last good snapshot stays. */
class MissingError extends Error {}
/** A folder entry vanished between listing and reading it (a rename in progress): read again, report nothing. */
class TransientError extends Error {}
/** The watched folder itself is gone: nothing will tell us when it comes back, so the run ends (a crash). */
class FatalError extends Error {}

/** Folder to watch → the entry names in it that matter ('all' for the watched config folder itself). */
type WatchPlan = Map<string, Set<string> | 'all'>;

const isCode = (err: unknown, code: string): boolean => (err as NodeJS.ErrnoException | undefined)?.code === code;

class FileSource {
  private readonly path: string;
  private readonly log: Logger;
  private readonly warnings: RateLimitedLog;
  private readonly watchers = new Map<string, { watcher: FSWatcher; names: Set<string> | 'all'; id: string }>();
  private timer: NodeJS.Timeout | undefined;
  private firstPendingAt: number | undefined;
  private loading = false;
  private again = false;
  private closed = false;
  private failing = false;
  private end: { resolve(): void; reject(err: Error): void } | undefined;

  constructor(
    private readonly config: FileSourceConfig,
    private readonly ctx: SidekickContext,
  ) {
    this.path = resolve(config.path);
    this.log = childLogger({ component: 'source', source: 'file', app: ctx.app, sidekick: ctx.name, path: this.path });
    this.warnings = new RateLimitedLog(this.log, 5, 10_000);
  }

  async run(): Promise<void> {
    const { signal } = this.ctx;
    if (signal.aborted) return;
    const ended = new Promise<void>((resolve, reject) => (this.end = { resolve, reject }));
    const onAbort = (): void => this.close();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      // First load: any error throws (a boot failure, retried by the runtime). Watch first, so a change made while
      // the first read runs is not missed.
      this.loading = true; // events during the first load wait for it, then load once more
      let vars: Record<string, string> | undefined;
      for (let attempt = 1; vars === undefined; attempt++) {
        try {
          vars = await this.read();
        } catch (err) {
          if (this.closed) return; // stopped while loading: not a boot failure
          if (!(err instanceof TransientError) || attempt >= 5) throw err;
        }
      }
      if (this.closed) return;
      this.ctx.setVars(vars);
      this.log.debug({ keys: Object.keys(vars).length }, 'file source published');
      this.loading = false;
      if (this.again) {
        this.again = false;
        this.schedule();
      }
      await ended;
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.close();
    }
  }

  private close(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    for (const { watcher } of this.watchers.values()) watcher.close();
    this.watchers.clear();
    if (err) this.end?.reject(err);
    else this.end?.resolve();
  }

  /** Debounced: a load runs debounceMs after the last event of a burst, and at most 10 × debounceMs after its first. */
  private schedule(): void {
    if (this.closed) return;
    const now = Date.now();
    this.firstPendingAt ??= now;
    const due = Math.min(now + this.config.debounceMs, this.firstPendingAt + 10 * this.config.debounceMs);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fire(), Math.max(0, due - now));
  }

  private fire(): void {
    this.timer = undefined;
    this.firstPendingAt = undefined;
    if (this.loading)
      this.again = true; // read once more when the load in flight ends: the last write wins
    else void this.reload();
  }

  private async reload(): Promise<void> {
    this.loading = true;
    try {
      const vars = await this.read();
      if (this.closed) return;
      this.ctx.setVars(vars); // identical content is a no-op; over maxVarsBytes throws, handled below
      if (this.failing) {
        this.failing = false;
        reportSourceError(undefined);
        this.log.info({ keys: Object.keys(vars).length }, 'file source applied again');
      }
    } catch (err) {
      if (this.closed) return;
      if (err instanceof FatalError) return this.close(err);
      if (err instanceof TransientError) {
        this.again = true;
        return;
      }
      this.failing = true;
      const message = err instanceof Error ? err.message : describeError(err);
      reportSourceError(message);
      const what = err instanceof MissingError ? 'is gone' : 'could not be applied';
      this.warnings.warn({ error: message }, `file source: ${this.path} ${what}; keeping the last good snapshot`);
    } finally {
      this.loading = false;
      if (this.again && !this.closed) {
        this.again = false;
        this.schedule();
      }
    }
  }

  /** Re-resolves the path, moves the watches to where its symlinks now lead, and reads the vars. */
  private async read(): Promise<Record<string, string>> {
    const info = await stat(this.path).catch((err: unknown) => {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR')) return undefined;
      throw err;
    });
    if (info?.isDirectory()) return this.readFolder();
    const plan: WatchPlan = new Map();
    const home = await this.realFolder(dirname(this.path));
    plan.set(home, new Set([basename(this.path)]));
    if (!info) {
      await this.watchPlan(plan);
      throw new MissingError(`${this.path} does not exist`);
    }
    await this.addTarget(plan, this.path, home);
    await this.watchPlan(plan);
    const format = this.config.format ?? formatOfName(this.path);
    if (!format) {
      throw new FileContentError(this.path, 'cannot tell its format from the name: set source.format (json|yaml|env)');
    }
    return parseVars(this.path, await this.readText(this.path, false), format);
  }

  private async readFolder(): Promise<Record<string, string>> {
    const plan: WatchPlan = new Map();
    const real = await this.realFolder(this.path);
    plan.set(real, 'all');
    if ((await lstat(this.path)).isSymbolicLink()) {
      // The folder is itself a symlink: a swap of it shows in its parent folder only.
      plan.set(await this.realFolder(dirname(this.path)), new Set([basename(this.path)]));
    }
    const names = (await readdir(real)).filter((n) => isConfigEntry(n, this.config.format));
    const files: { name: string; vars: Record<string, string> }[] = [];
    for (const name of names) {
      const file = join(this.path, name);
      const info = await stat(file).catch(() => undefined);
      if (!info) throw new TransientError(`${file} vanished while being read`);
      if (!info.isFile()) continue;
      await this.addTarget(plan, file, real);
      const format = this.config.format ?? formatOfName(name)!;
      files.push({ name, vars: parseVars(file, await this.readText(file, true), format) });
    }
    await this.watchPlan(plan);
    if (files.length === 0) {
      const which = this.config.format ? 'files' : '.json, .yaml, .yml or .env files';
      throw new MissingError(`${this.path} holds no ${which}`);
    }
    return mergeInNameOrder(files);
  }

  private async readText(file: string, inFolder: boolean): Promise<string> {
    try {
      return await readFile(file, 'utf8');
    } catch (err) {
      if (isCode(err, 'ENOENT')) {
        if (inFolder) throw new TransientError(`${file} vanished while being read`);
        throw new MissingError(`${file} does not exist`);
      }
      throw err;
    }
  }

  /** The real path of a folder we must watch; its absence ends the run (nothing could tell us it came back). */
  private async realFolder(folder: string): Promise<string> {
    try {
      return await realpath(folder);
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR')) {
        throw new FatalError(`the folder ${folder} does not exist: cannot watch ${this.path}`);
      }
      throw err;
    }
  }

  /** Where `file`'s symlinks lead, when that is another folder than `home`: watched too, for that entry. */
  private async addTarget(plan: WatchPlan, file: string, home: string): Promise<void> {
    const target = await realpath(file).catch(() => undefined);
    if (!target || dirname(target) === home) return;
    const names = plan.get(dirname(target));
    if (names === 'all') return;
    if (names) names.add(basename(target));
    else plan.set(dirname(target), new Set([basename(target)]));
  }

  /** Opens watches the plan needs, closes those it no longer does. The config folder is required; others are best effort. */
  private async watchPlan(plan: WatchPlan): Promise<void> {
    if (this.closed) return;
    for (const [folder, entry] of this.watchers) {
      if (plan.has(folder)) continue;
      entry.watcher.close();
      this.watchers.delete(folder);
    }
    const required = [...plan.keys()][0];
    for (const [folder, names] of plan) {
      try {
        // A folder deleted and made again under the same path is a new inode: the old watch on it is deaf.
        const { dev, ino } = await stat(folder);
        if (this.closed) return;
        const id = `${dev}:${ino}`;
        const existing = this.watchers.get(folder);
        if (existing?.id === id) {
          existing.names = names;
          continue;
        }
        existing?.watcher.close();
        const watcher = watch(folder, (_event, name) => this.onEvent(folder, name));
        watcher.on('error', (err) => this.onWatchError(folder, err));
        this.watchers.set(folder, { watcher, names, id });
      } catch (err) {
        if (folder === required) throw new FatalError(`cannot watch ${folder}: ${describeError(err)}`);
        this.watchers.get(folder)?.watcher.close();
        this.watchers.delete(folder);
        this.log.debug({ folder, error: describeError(err) }, 'file source: cannot watch a symlink target folder');
      }
    }
  }

  private onEvent(folder: string, name: string | Buffer | null): void {
    const names = this.watchers.get(folder)?.names;
    if (!names) return;
    const entry = name === null ? undefined : name.toString();
    // No name (some platforms), a Kubernetes `..data` swap, an entry we read, or the folder's own name (Linux
    // reports the watched folder's deletion so; the next load finds out): load again.
    if (names === 'all' || entry === undefined || entry.startsWith('..') || names.has(entry)) this.schedule();
    else if (entry === basename(folder)) this.schedule();
  }

  private onWatchError(folder: string, err: Error): void {
    const entry = this.watchers.get(folder);
    entry?.watcher.close();
    this.watchers.delete(folder);
    this.log.debug({ folder, error: err.message }, 'file source: watch ended; resolving the path again');
    this.schedule(); // the next load re-plans the watches, or ends the run if the config folder is gone
  }
}
