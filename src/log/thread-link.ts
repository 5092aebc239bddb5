// Worker threads (sidekicks) log through their process's one bounded stderr writer, not through their own: one cap
// per process, one drop count, one "lines dropped" line. A thread posts each line to the main thread over a
// MessagePort (never a blocking write in the thread). If the main thread is too busy to take them, posted lines pile
// up in the port: a counter shared by every thread of the process (SharedArrayBuffer) bounds the bytes in flight, and
// past THREAD_IN_FLIGHT_BYTES a thread drops its line and counts it in the same shared memory, which the main
// thread's writer adds to its own counts.
import { MessageChannel, type MessagePort } from 'node:worker_threads';

/** Characters of thread lines posted and not yet taken by the main thread, across all threads of the process. */
const THREAD_IN_FLIGHT_CHARS = 256 * 1024;
const IN_FLIGHT = 0;
const DROPPED = 1;

/** What a thread gets in its workerData (under THREAD_LOG_KEY) to log through its process. */
export interface ThreadLogLink {
  port: MessagePort;
  counters: SharedArrayBuffer;
}

export const THREAD_LOG_KEY = 'sidekickLog';

let shared: BigInt64Array | undefined;

function sharedCounters(): BigInt64Array {
  shared ??= new BigInt64Array(new SharedArrayBuffer(2 * BigInt64Array.BYTES_PER_ELEMENT));
  return shared;
}

/** Lines the threads of this process dropped before they reached the main thread. */
export function threadDroppedLines(): number {
  return shared ? Number(Atomics.load(shared, DROPPED)) : 0;
}

/**
 * Main thread: a link for one new thread (pass `link` in its workerData under THREAD_LOG_KEY and `transfer` in the
 * Worker's transferList); its lines go to `write`.
 */
export function createThreadLogLink(write: (line: string) => void): { link: ThreadLogLink; transfer: MessagePort[] } {
  const counters = sharedCounters();
  const { port1, port2 } = new MessageChannel();
  port1.on('message', (line: string) => {
    Atomics.sub(counters, IN_FLIGHT, BigInt(line.length));
    write(line);
  });
  port1.unref(); // a thread's log link never keeps the process alive
  port1.once('close', () => port1.close());
  return { link: { port: port2, counters: counters.buffer as SharedArrayBuffer }, transfer: [port2] };
}

/** The link in a thread's workerData, if its creator gave it one. */
export function threadLogLinkOf(workerData: unknown): ThreadLogLink | undefined {
  const link = (workerData as Record<string, unknown> | null | undefined)?.[THREAD_LOG_KEY] as
    ThreadLogLink | undefined;
  return link?.port && link.counters ? link : undefined;
}

/** Thread side: a pino destination that posts lines to the main thread, bounded. */
export class ThreadLogSink {
  private readonly counters: BigInt64Array;

  constructor(private readonly link: ThreadLogLink) {
    this.counters = new BigInt64Array(link.counters);
    link.port.unref(); // logging does not keep a sidekick thread alive either
  }

  write(line: string): boolean {
    const n = BigInt(line.length);
    if (Atomics.load(this.counters, IN_FLIGHT) + n > THREAD_IN_FLIGHT_CHARS) {
      Atomics.add(this.counters, DROPPED, 1n);
      return true;
    }
    Atomics.add(this.counters, IN_FLIGHT, n);
    this.link.port.postMessage(line);
    return true;
  }
}
