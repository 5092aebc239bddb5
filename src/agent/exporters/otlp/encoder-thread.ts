// The otlp exporter's encoding (the transcoder and gzip of a body 1.6× the NDJSON's size: ~0.9 µs of CPU per B4
// record, ~4.5 for a PHP request record with its span) runs on a thread of its own, so the agent's event loop keeps
// reading sockets and writing the spool at the http exporter's pace while another core encodes (B4 in
// docs/benchmarks.md, "OTLP exporter: the encoder thread"). The event loop's share is a copy of the part's bytes and
// two messages (~10–30 µs per part of 100 records). Parts are answered in order. If the thread cannot start or dies,
// the exporter encodes inline from then on (the same code, the same bytes), parts the thread held included, and says
// so once in the log. `encoderThread: false` in the config (or a host with one CPU) encodes inline from the start.
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { gzipFast } from '../http.js';
import { PartEncoder, type EncodeSettings, type EncodedPart, type PartInput } from './encode-part.js';
import { packPart, unpackEncoded } from './encoder-wire.js';

interface Pending {
  resolve(out: EncodedPart): void;
  reject(err: Error): void;
  part: PartInput;
}

/** What the thread answers: the encoded part (./encoder-wire.ts), or why it could not. */
export type EncoderAnswer = ArrayBuffer | { id: number; error: string };

/**
 * The thread's entry: the compiled file beside this one. When this module runs from its TypeScript source (tests
 * under tsx), the built one in dist/ (a worker thread does not get tsx's loader on Node 20; `npm test` builds first).
 */
const ENTRY = import.meta.url.endsWith('.ts')
  ? new URL('../../../../dist/agent/exporters/otlp/encoder-main.js', import.meta.url)
  : new URL('./encoder-main.js', import.meta.url);

export class EncoderThread {
  private worker: Worker | undefined;
  /** Set once encoding is inline: from the start (no thread), or after the thread failed. */
  private inline: PartEncoder | undefined;
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private closed = false;

  constructor(
    private readonly settings: EncodeSettings,
    private readonly log: Logger | undefined,
    useThread = true,
  ) {
    if (!useThread) this.inline = new PartEncoder(settings);
  }

  /** True while parts go to the thread (false once encoding is inline). */
  get threaded(): boolean {
    return this.inline === undefined;
  }

  encode(part: PartInput): Promise<EncodedPart> {
    if (this.closed) return Promise.reject(new Error('otlp exporter closed'));
    if (this.inline) return this.encodeInline(this.inline, part);
    const worker = this.start();
    if (!worker) return this.encode(part);
    const id = ++this.seq;
    // a copy of exactly the part's bytes in a buffer of its own (a part is a view of a spool batch, which must stay
    // whole), transferred
    const message = packPart(id, part);
    return new Promise<EncodedPart>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, part });
      worker.postMessage(message, [message]);
    });
  }

  private async encodeInline(encoder: PartEncoder, part: PartInput): Promise<EncodedPart> {
    const raw = encoder.encode(part);
    if (!this.settings.gzip) return raw;
    // (the transcoder's buffers are written over by the next part: gzipFast copies what it compresses later)
    const logs = raw.logs && (await gzipFast(raw.logs, { volatile: true }));
    const traces = raw.traces && (await gzipFast(raw.traces, { volatile: true }));
    return { ...raw, logs, traces };
  }

  private start(): Worker | undefined {
    if (this.worker) return this.worker;
    try {
      const w = new Worker(ENTRY, { workerData: this.settings, name: 'sidekick-otlp-encoder' });
      w.unref(); // never what keeps the agent alive
      w.on('message', (msg: EncoderAnswer) => {
        if (msg instanceof ArrayBuffer) {
          const { id, encoded } = unpackEncoded(msg);
          const p = this.pending.get(id);
          this.pending.delete(id);
          p?.resolve(encoded);
          return;
        }
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.reject(new Error(`otlp encoder: ${msg.error}`));
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
    const inline = new PartEncoder(this.settings);
    this.inline = inline;
    const w = this.worker;
    this.worker = undefined;
    void w?.terminate().catch(() => undefined);
    this.log?.warn({ err }, 'otlp encoder thread unavailable: encoding on the event loop from now on');
    const held = [...this.pending.values()];
    this.pending.clear();
    for (const p of held) this.encodeInline(inline, p.part).then(p.resolve, p.reject);
  }

  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = undefined;
    for (const p of this.pending.values()) p.reject(new Error('otlp exporter closed'));
    this.pending.clear();
    await w?.terminate();
  }
}
