// The Node agent client's spill file: the second line of defence, shared with the PHP client
// (docs/clients.md "Spill"). `<spillDir>/spill.ndjson` takes one O_APPEND write of a whole line, never a lock,
// capped by the file's size; the agent's spill receiver replays it.
import { appendFileSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

const SPILL_FILE = 'spill.ndjson';
const SPILL_MAX_LINE_BYTES = 65536;
const CONTROL_PREFIX = '{"_sidekick":';

export class SpillFile {
  readonly path: string;
  /** Records appended (control lines not counted). */
  spilled = 0;

  /** `maxBytes` caps the file's size; 0 turns spilling off. */
  constructor(
    dir: string,
    private readonly maxBytes: number,
  ) {
    this.path = join(dir, SPILL_FILE);
  }

  /**
   * Appends one whole line within the cap (`ignoreCap`: a last control line may pass it by one line's size); false
   * when spilling is off, the line too long, the file full or not writable. Synchronous: only on the fallback path.
   */
  append(line: string, ignoreCap = false): boolean {
    if (this.maxBytes === 0 || line.length > SPILL_MAX_LINE_BYTES) return false;
    const bytes = Buffer.byteLength(line);
    try {
      let size = 0;
      try {
        size = statSync(this.path).size;
      } catch {
        mkdirSync(dirname(this.path), { recursive: true, mode: 0o2770 });
      }
      const cap = this.maxBytes + (ignoreCap ? SPILL_MAX_LINE_BYTES : 0);
      if (size + bytes > cap) return false;
      appendFileSync(this.path, line, { mode: 0o660 });
    } catch {
      return false;
    }
    if (!line.startsWith(CONTROL_PREFIX)) this.spilled++;
    return true;
  }
}
