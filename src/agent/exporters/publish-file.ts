// Publish a whole file under `path` via `tmp` (a reader of the directory sees a whole batch or none), durably: see
// src/common/atomic-file.ts. Kept as a name for the file exporter.
import { writeFileAtomic } from '../../common/atomic-file.js';

export function publishFile(tmp: string, path: string, data: Buffer): Promise<void> {
  return writeFileAtomic(path, data, { tmp, mode: 0o640 });
}
