// Entry of the otlp exporter's encoder thread (./encoder-thread.ts): parts in, compressed request bodies out, in order.
import { parentPort, workerData } from 'node:worker_threads';
import { gzipSync } from 'node:zlib';
import { PartEncoder, type EncodeSettings } from './encode-part.js';
import type { EncoderAnswer } from './encoder-thread.js';
import { packEncoded, unpackPart } from './encoder-wire.js';

const settings = workerData as EncodeSettings;
const encoder = new PartEncoder(settings);
const port = parentPort!;

/** A body as it goes out: gzip level 1, as the http exporter (the transcoder's buffers are copied by the packing). */
const finish = (raw: Buffer | undefined): Buffer | undefined =>
  raw === undefined || !settings.gzip ? raw : gzipSync(raw, { level: 1 });

port.on('message', (message: ArrayBuffer) => {
  const { id, part } = unpackPart(message);
  let answer: EncoderAnswer;
  try {
    const raw = encoder.encode(part);
    answer = packEncoded(id, { ...raw, logs: finish(raw.logs), traces: finish(raw.traces) });
  } catch (err) {
    answer = { id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) };
  }
  port.postMessage(answer, answer instanceof ArrayBuffer ? [answer] : []);
});
