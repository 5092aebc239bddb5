// Compatibility re-exports for src/agent/receivers/spill.ts, which still imports from here. The implementations live in
// src/common/atomic-file.ts; once spill.ts imports that module directly (and calls writeFileAtomic(file, data)), this
// file can go.
import { writeFileAtomic as write } from '../../common/atomic-file.js';

export { fsyncDir, unlinkIfExists } from '../../common/atomic-file.js';

/** @deprecated use writeFileAtomic(path, data) from src/common/atomic-file.ts (`dir` is always dirname(path)). */
export function writeFileAtomic(dir: string, path: string, data: string | Buffer): Promise<void> {
  void dir;
  return write(path, data);
}
