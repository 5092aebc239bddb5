// The otlp exporter's encoding (JSON.parse of every record, mapping, protobuf, gzip: ~2.5 µs of CPU per record, more
// than everything else the agent does with a record) runs on a thread of its own, so the agent's event loop keeps
// reading sockets and writing the spool at the http exporter's pace, and a second core does the encoding (B4 otlp in
// docs/benchmarks.md). Parts go to the thread in order and come back in order; each payload is copied once into a
// buffer of its own and transferred, the bodies are transferred back (no copy). If the thread cannot start or dies,
// the exporter encodes inline from then on (same function, same bytes) and says so once in the log.
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { encodePart, newMapper, type EncodeSettings, type EncodedPart, type PartInput } from './encode-part.js';
import type { RecordMapper } from './mapping.js';

/** A Uint8Array that owns its whole ArrayBuffer (so transferring it detaches nothing else): the view, or a copy. */
export function ownBuffer(b: Uint8Array): Uint8Array {
  // new Uint8Array(view) copies; Buffer#slice would not (it is subarray), and transferring its buffer would detach
  // the batch it is cut from, or Node's shared allocation pool
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b : new Uint8Array(b);
}

interface Pending {
  resolve(out: EncodedPart): void;
  reject(err: Error): void;
  part: PartInput;
}

/**
 * The thread's entry: the compiled file beside this one. When this module runs from its TypeScript source (tests
 * under tsx), the built one in dist/ (Node 20 does not pass tsx's loader on to a worker thread; `npm test` builds first).
 */
const ENTRY = import.meta.url.endsWith('.ts')
  ? new URL('../../../../dist/agent/exporters/otlp/encoder-main.js', import.meta.url)
  : new URL('./encoder-main.js', import.meta.url);

export class EncoderThread {
  private worker: Worker | undefined;
  private inline: RecordMapper | undefined;
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private closed = false;

  constructor(
    private readonly settings: EncodeSettings,
    private readonly log: Logger | undefined,
    useThread = true,
  ) {
    if (!useThread) this.inline = newMapper(settings);
  }

  encode(part: PartInput): Promise<EncodedPart> {
    if (this.inline) return Promise.resolve(encodePart(this.settings, this.inline, part));
    const worker = this.start();
    if (!worker) return this.encode(part);
    const id = ++this.seq;
    const payload = new Uint8Array(part.payload); // a copy of exactly the part's bytes (a part is a view of a batch)
    return new Promise<EncodedPart>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, part });
      worker.postMessage({ id, part: { ...part, payload } }, [payload.buffer]);
    });
  }

  private start(): Worker | undefined {
    if (this.worker) return this.worker;
    try {
      const w = new Worker(ENTRY, { workerData: this.settings, name: 'sidekick-otlp-encoder' });
      w.unref(); // never what keeps the agent alive
      w.on('message', (msg: { id: number; out?: EncodedPart; error?: string }) => {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.out) p.resolve(msg.out);
        else p.reject(new Error(`otlp encoder: ${msg.error ?? 'no answer'}`));
      });
      w.on('error', (err) => this.fallBack(err));
      w.on('exit', (code) => {
        if (!this.closed) this.fallBack(new Error(`the encoder thread exited with code ${code}`));
      });
      this.worker = w;
      return w;
    } catch (err) {
      this.fallBack(err as Error);
      return undefined;
    }
  }

  /** The thread is gone: encode inline from now on; parts it held are encoded inline too (nothing is lost). */
  private fallBack(err: Error): void {
    if (this.inline) return;
    this.inline = newMapper(this.settings);
    this.worker = undefined;
    this.log?.warn({ err }, 'otlp encoder thread unavailable: encoding on the event loop from now on');
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      try {
        p.resolve(encodePart(this.settings, this.inline, p.part));
      } catch (e) {
        p.reject(e as Error);
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = undefined;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new Error('otlp exporter closed'));
    }
    await w?.terminate();
  }
}
