// The embedded default exporter: each batch becomes one NDJSON file in `exporter.dir`.
//
// A batch is written to `<dir>/.tmp/`, fsynced, then renamed into `<dir>/` — rename is atomic, so a reader listing
// `<dir>/*.ndjson` never sees half a batch (the maildir pattern). Names sort by time:
// `<UTC yyyymmddThhmmss.mmmZ>-<seq>-<batch id>.ndjson`. "Rotation" is therefore per batch; a consumer reads and
// deletes (or moves) the files it has processed. The same batch id after a crash produces a second file with the same
// id in its name, so a consumer can drop duplicates.
import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExporterConfig } from '../../config/schema.js';
import { RetryableExportError, type ExportOutcome, type ExportPart, type Exporter } from './types.js';
import { publishFile } from './publish-file.js';

type FileConfig = Extract<ExporterConfig, { type: 'file' }>;

export class FileExporter implements Exporter {
  private seq = 0;
  private ready: Promise<void> | undefined;

  constructor(readonly config: FileConfig) {}

  private ensureDirs(): Promise<void> {
    this.ready ??= (async () => {
      await mkdir(join(this.config.dir, '.tmp'), { recursive: true });
    })().catch((err: unknown) => {
      this.ready = undefined;
      throw err;
    });
    return this.ready;
  }

  overheadBytes(): number {
    return 0;
  }

  async export(part: ExportPart): Promise<ExportOutcome> {
    const stamp = new Date().toISOString().replace(/[-:]/g, '');
    const safeId = part.id.replace(/[^A-Za-z0-9._-]/g, '_');
    const name = `${stamp}-${String(++this.seq).padStart(6, '0')}-${safeId}.ndjson`;
    const tmp = join(this.config.dir, '.tmp', `${process.pid}-${name}`);
    try {
      await this.ensureDirs();
      await publishFile(tmp, join(this.config.dir, name), part.payload);
      return { kind: 'delivered' };
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      // A full disk or a permission problem is an outage of this sink: retry with backoff, breaker counts it.
      throw new RetryableExportError(`file exporter: ${(err as Error).message}`, 'network');
    }
  }

  async close(): Promise<void> {
    // nothing held open
  }
}
