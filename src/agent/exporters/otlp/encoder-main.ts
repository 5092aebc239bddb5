// Entry of the otlp exporter's encoder thread (./encoder-thread.ts): parts in, request bodies out, in order.
import { parentPort, workerData } from 'node:worker_threads';
import { encodePart, newMapper, type EncodeSettings, type PartInput } from './encode-part.js';
import { ownBuffer } from './encoder-thread.js';

const settings = workerData as EncodeSettings;
const mapper = newMapper(settings);
const port = parentPort!;

port.on('message', ({ id, part }: { id: number; part: PartInput }) => {
  try {
    const out = encodePart(settings, mapper, part);
    // the bodies move to the exporter's thread without a copy (each in a buffer of its own: never Node's shared pool)
    const logs = out.logs && ownBuffer(out.logs);
    const traces = out.traces && ownBuffer(out.traces);
    const transfer = [logs?.buffer, traces?.buffer].filter((b): b is ArrayBuffer => b !== undefined);
    port.postMessage({ id, out: { ...out, logs, traces } }, transfer);
  } catch (err) {
    port.postMessage({ id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  }
});
