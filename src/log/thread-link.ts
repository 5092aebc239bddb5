// Worker threads (sidekicks) log through their process's one bounded stderr writer, not through their own: one cap
// per process, one drop count, one "lines dropped" line. A thread posts each line to the main thread over a
// MessagePort (never a blocking write in the thread). If the main thread is too busy to take them, posted lines pile
// up in the port: a counter the thread shares with the main thread (SharedArrayBuffer, one per link, so a thread that
// dies with lines in flight leaves nothing behind) bounds them, and past THREAD_IN_FLIGHT_CHARS the thread drops its
// line and counts it in a counter shared by the whole process, which the main thread's writer adds to its own counts.
import { MessageChannel, type MessagePort } from 'node:worker_threads';

/** Characters of one thread's lines posted and not yet taken by the main thread. */
const THREAD_IN_FLIGHT_CHARS = 256 * 1024;

/** What a thread gets in its workerData (under THREAD_LOG_KEY) to log through its process. */
export interface ThreadLogLink {
  port: MessagePort;
  /** Int32: characters in flight on this link. */
  inFlight: SharedArrayBuffer;
  /** BigInt64: lines dropped by every thread of the process. */
  dropped: SharedArrayBuffer;
}

export const THREAD_LOG_KEY = 'sidekickLog';

let dropped: BigInt64Array | undefined;

function droppedCounter(): BigInt64Array {
  dropped ??= new BigInt64Array(new SharedArrayBuffer(BigInt64Array.BYTES_PER_ELEMENT));
  return dropped;
}

/** Lines the threads of this process dropped before they reached the main thread. */
export function threadDroppedLines(): number {
  return dropped ? Number(Atomics.load(dropped, 0)) : 0;
}

/**
 * Main thread: a link for one new thread (pass `link` in its workerData under THREAD_LOG_KEY and `transfer` in the
 * Worker's transferList); its lines go to `write`.
 */
export function createThreadLogLink(write: (line: string) => void): { link: ThreadLogLink; transfer: MessagePort[] } {
  const inFlight = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));
  const { port1, port2 } = new MessageChannel();
  port1.on('message', (line: string) => {
    Atomics.sub(inFlight, 0, line.length);
    write(line);
  });
  port1.unref(); // a thread's log link never keeps the process alive
  port1.once('close', () => port1.close());
  const link = {
    port: port2,
    inFlight: inFlight.buffer as SharedArrayBuffer,
    dropped: droppedCounter().buffer as SharedArrayBuffer,
  };
  return { link, transfer: [port2] };
}

/** The link in a thread's workerData, if its creator gave it one. */
export function threadLogLinkOf(workerData: unknown): ThreadLogLink | undefined {
  const link = (workerData as Record<string, unknown> | null | undefined)?.[THREAD_LOG_KEY] as
    ThreadLogLink | undefined;
  return link?.port && link.inFlight && link.dropped ? link : undefined;
}

/** Thread side: a pino destination that posts lines to the main thread, bounded. */
export class ThreadLogSink {
  private readonly inFlight: Int32Array;
  private readonly dropped: BigInt64Array;

  constructor(private readonly link: ThreadLogLink) {
    this.inFlight = new Int32Array(link.inFlight);
    this.dropped = new BigInt64Array(link.dropped);
    link.port.unref(); // logging does not keep a sidekick thread alive either
  }

  write(line: string): boolean {
    if (Atomics.load(this.inFlight, 0) + line.length > THREAD_IN_FLIGHT_CHARS) {
      Atomics.add(this.dropped, 0, 1n);
      return true;
    }
    Atomics.add(this.inFlight, 0, line.length);
    this.link.port.postMessage(line);
    return true;
  }
}
