// Small filesystem helpers shared by the spool files.
import { open, rename, unlink, writeFile } from 'node:fs/promises';

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

let tmpCounter = 0;

/** Write `data` to `path` atomically: tmp file in the same dir, fsync, rename over, fsync the dir. */
export async function writeFileAtomic(dir: string, path: string, data: string | Buffer): Promise<void> {
  const tmp = `${path}.${process.pid}.${++tmpCounter}.tmp`;
  try {
    const fh = await open(tmp, 'w', 0o600);
    try {
      await writeFile(fh, data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fsyncDir(dir);
}

export async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
