// The agent's listening socket as the supervisor holds it, and the client connections it holds between two workers.
//
// The supervisor binds the socket and never accepts on it: each worker inherits the fd and accepts directly. The
// socket file is published under its path only once a worker listens (publishListener), so a client never connects
// to a socket nobody will serve. On a recycle the leaving worker hands its open connections back as raw handles with
// their unfinished line; they wait here until the next worker accepts (see supervisor.ts).
import type { Logger } from 'pino';
import type { AgentConfig } from '../../config/schema.js';
import { describeError } from '../../errors.js';
import type { WorkerHandle } from './worker-handle.js';
import { dropStashedPartial } from '../handover-partials.js';
import {
  bindSharedSocket,
  type BoundHandle,
  type OwnedSocketFile,
  type SharedSocket,
} from '../receivers/socket-file.js';
import type { FromWorker } from '../worker-protocol.js';

export interface Listener {
  handle: BoundHandle;
  path: string;
  /** Set once published under `path` (after a worker listens on it). */
  file: OwnedSocketFile | undefined;
  shared: SharedSocket;
}

/** Binds `cfg.socket` (a live socket there is never stolen) without publishing it yet. */
export async function bindListener(cfg: Pick<AgentConfig, 'socket' | 'socketMode' | 'socketGroup'>): Promise<Listener> {
  const shared = await bindSharedSocket({ path: cfg.socket, mode: cfg.socketMode, group: cfg.socketGroup });
  return { handle: shared.handle, path: cfg.socket, file: undefined, shared };
}

export function publishListener(l: Listener): void {
  l.file ??= l.shared.publish();
}

export function closeListener(l: Listener): void {
  if (l.file) {
    l.handle.close();
    l.file.unlinkIfOurs();
  } else l.shared.discard();
}

export function closeHandle(handle: unknown): void {
  try {
    (handle as { close(): void }).close();
  } catch {
    // already closed
  }
}

type ConnMessage = Extract<FromWorker, { t: 'conn' }>;

/** Connections handed over by a leaving worker, held until the current worker accepts. */
export class HeldConnections {
  private held: { handle: unknown; msg: ConnMessage }[] = [];

  /** `spoolDir`: where a long unfinished line waits in a file (handover-partials.ts), removed if never passed on. */
  constructor(private readonly spoolDir: () => string) {}

  add(handle: unknown, msg: ConnMessage): void {
    this.held.push({ handle, msg });
  }

  /** Passes every held connection to `target` if it accepts (state 'ready'); our copy of each handle is closed. */
  forwardTo(target: WorkerHandle | undefined, log: Logger): void {
    if (!target || target.state !== 'ready' || this.held.length === 0) return;
    for (const { handle, msg } of this.held.splice(0)) {
      // The message as it came: the unfinished line inline, or the name of its file (never its bytes).
      const { partial, partialFile, discarding } = msg;
      const next = { t: 'conn' as const, partial, discarding, ...(partialFile ? { partialFile } : {}) };
      target.send(next, handle, (err) => {
        if (err) {
          log.warn({ err: describeError(err) }, 'could not pass a connection to the new worker');
          dropStashedPartial(this.spoolDir(), msg);
        }
        closeHandle(handle); // the worker has its own copy now
      });
    }
  }

  closeAll(): void {
    for (const h of this.held.splice(0)) {
      closeHandle(h.handle);
      dropStashedPartial(this.spoolDir(), h.msg);
    }
  }
}
