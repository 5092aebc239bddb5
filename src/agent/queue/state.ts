// Small JSON side files in the spool directory (e.g. the exporter breaker's state), so they share the spool's lock and
// lifetime. Written atomically: tmp file + fsync + rename + directory fsync; a reader sees the old or the new value,
// never a mix, even after power loss. Writes to one name are serialized so the last call wins.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../log/logger.js';
import { writeFileAtomic } from '../../common/atomic-file.js';

const STATE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class StateFiles {
  private readonly chains = new Map<string, Promise<void>>();

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
    /** A write failed (ENOENT: the spool directory may be gone, dir-guard.ts). */
    private readonly failed: (err: unknown) => void = () => {},
  ) {}

  path(name: string): string {
    if (!STATE_NAME.test(name)) {
      throw new RangeError(`state name must match ${STATE_NAME.source}, got ${JSON.stringify(name)}`);
    }
    return join(this.dir, `state-${name}.json`);
  }

  /** The value last written under `name`, or undefined if none (or if the file is unreadable: logged, not thrown). */
  async read(name: string): Promise<unknown> {
    const path = this.path(name);
    await this.chains.get(name);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      return JSON.parse(text) as unknown;
    } catch (err) {
      this.log.warn({ path, err: String(err) }, 'ignoring an unreadable spool state file');
      return undefined;
    }
  }

  write(name: string, value: unknown): Promise<void> {
    let path: string;
    let text: string | undefined;
    try {
      path = this.path(name);
      text = JSON.stringify(value); // throws on cycles / BigInt
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (text === undefined) return Promise.reject(new TypeError('state value is not JSON-serializable'));
    const prev = this.chains.get(name) ?? Promise.resolve();
    const next = prev.then(() =>
      writeFileAtomic(path, `${text}\n`).catch((err: unknown) => {
        this.failed(err);
        throw err;
      }),
    );
    const settled = next.catch(() => {});
    this.chains.set(name, settled);
    void settled.then(() => {
      if (this.chains.get(name) === settled) this.chains.delete(name);
    });
    return next;
  }
}
