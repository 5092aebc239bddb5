// Writes `data` to `tmp`, syncs it, then renames it to `path`: a reader of the directory sees a whole batch or none.
import { open, rename } from 'node:fs/promises';

export async function publishFile(tmp: string, path: string, data: Buffer): Promise<void> {
  const fh = await open(tmp, 'w', 0o640);
  try {
    await fh.writeFile(data);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}
