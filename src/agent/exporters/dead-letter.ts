// Dead letters: batches (or 413 halves) central rejected for good. Nothing vanishes: each is kept under
// `<spool.dir>/dead-letter/` as the original NDJSON plus a small JSON sidecar saying why, both written atomically and
// durably (tmp + fsync + rename + directory fsync, src/common/atomic-file.ts) so a reader never sees half of one,
// counted (dead_lettered), and logged as SK_ERR_DEAD_LETTER.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { DeadLetterReason as DeadLetterCause } from '../metrics.js';
import type { ExportPart } from './types.js';
import { writeFileAtomic } from '../../common/atomic-file.js';

export interface DeadLetterReason {
  status: number;
  body: string;
  target: string;
  /** Why (default `rejected`), and how many of the kept records were refused (default all: an OTLP partial
   * success names a count, not which ones). */
  reason?: DeadLetterCause;
  rejected?: number;
}

export class DeadLetterStore {
  readonly dir: string;
  private seq = 0;

  constructor(spoolDir: string) {
    this.dir = join(spoolDir, 'dead-letter');
  }

  /** Writes the part and its sidecar; returns the NDJSON file path. */
  async write(part: ExportPart, why: DeadLetterReason): Promise<string> {
    await mkdir(this.dir, { recursive: true });
    const stamp = new Date().toISOString().replace(/[-:]/g, '');
    const base = `${stamp}-${String(++this.seq).padStart(4, '0')}-${part.id.replace(/[^A-Za-z0-9._-]/g, '_')}`;
    const file = join(this.dir, `${base}.ndjson`);
    await writeFileAtomic(file, part.payload, { tmp: join(this.dir, `.${base}.ndjson.tmp`), mode: 0o640 });
    const sidecar = {
      batchId: part.id,
      records: part.records,
      bytes: part.payload.length,
      status: why.status,
      reason: why.reason ?? 'rejected',
      rejected: why.rejected ?? part.records,
      body: why.body.slice(0, 1024),
      target: why.target,
      time: new Date().toISOString(),
    };
    await writeFileAtomic(join(this.dir, `${base}.json`), `${JSON.stringify(sidecar, null, 2)}\n`, {
      tmp: join(this.dir, `.${base}.json.tmp`),
      mode: 0o640,
    });
    return file;
  }
}
