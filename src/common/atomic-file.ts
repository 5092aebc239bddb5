// The one atomic file write (and the two small fs helpers it needs). A reader of the directory sees the old file or
// the whole new one, never a mix, and after power loss the new one is there once this resolved:
//   1. write a temporary file (beside the target unless the caller names another one on the same filesystem),
//   2. fsync it (its bytes are on disk before its name is),
//   3. rename it over the target (atomic on POSIX),
//   4. fsync the target's directory (the rename itself is on disk).
// On any failure before the rename the temporary file is removed; the target is untouched.
// Used by the spool's side files (queue/state.ts), the spill receiver's offsets, the file exporter and dead letters.
import { open, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

export interface AtomicWriteOptions {
  /** Mode of a newly created file (before umask). Default 0o600. */
  mode?: number;
  /** The temporary path; must be on the target's filesystem. Default `<path>.<pid>.<n>.tmp` beside the target. */
  tmp?: string;
}

let tmpCounter = 0;

/** Write `data` to `path` atomically and durably: tmp file, fsync, rename over, fsync the directory. */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: AtomicWriteOptions = {},
): Promise<void> {
  const tmp = opts.tmp ?? `${path}.${process.pid}.${++tmpCounter}.tmp`;
  try {
    const fh = await open(tmp, 'w', opts.mode ?? 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fsyncDir(dirname(path));
}

/** fsync a directory so entries created, renamed or removed in it survive power loss. Best effort where unsupported. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // some platforms / filesystems refuse fsync on a directory; nothing more we can do there
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'ENOTSUP') throw err;
  } finally {
    await fh?.close();
  }
}

/** Remove `path`; false if it was not there. */
export async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
