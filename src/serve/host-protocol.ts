// The messages between `sidekick serve`'s supervisor and an app's sidekick host process (host-main.ts), over a
// child_process IPC channel with advanced serialization (snapshots are structured-cloned, not JSON-encoded).
//
// The host runs the app's SidekickRegistry (every sidekick thread of the app); the supervisor keeps what must survive
// the host (every latest snapshot, counters, the timeline) and relays snapshots to the HTTP workers.
import type { ErrorData } from '../errors.js';
import type { SidekicksConfig } from '../config/schema.js';
import type { LifecycleKind } from '../common/lifecycle.js';
import type { LogCounts } from '../log/logger.js';
import type { SidekickResume, SidekickStatus } from '../sidekicks/instance.js';

type Snapshot = Record<string, string>;

/** What a host starts with: its app's settings, and what an earlier host of the same app left (a restart). */
export interface HostInit {
  app: string;
  config: SidekicksConfig;
  /** Sidekicks that ran (or were asked for) in the previous host: started again at once, generation + 1. */
  resume: SidekickResume[];
  /** Why the previous host ended (its sidekicks count a crash with this reason). */
  previousHostExit: string | undefined;
}

/** supervisor → host */
export type ToHost =
  | { sk: 'host-init'; init: HostInit }
  | { sk: 'ensure'; name: string }
  | { sk: 'task'; id: number; name: string; payload: unknown; reply: boolean; progress: boolean }
  /** The caller gave up (its deadline, its signal, its HTTP worker died): the handler's signal aborts. */
  | { sk: 'task-cancel'; id: number; reason: ErrorData }
  /** The last `vars` message of `name` was taken: the host may send the next one (latest-wins flow control). */
  | { sk: 'vars-ack'; name: string }
  | { sk: 'reconfigure'; config: SidekicksConfig }
  | { sk: 'restart-all'; id: number }
  | { sk: 'status'; id: number }
  /** Stop every sidekick (each with its grace period), then exit. */
  | { sk: 'stop' };

/** host → supervisor */
export type FromHost =
  /** Sent once the host listens for messages (earlier ones would be lost); the supervisor answers `host-init`. */
  | { sk: 'hello' }
  | { sk: 'vars'; name: string; vars: Snapshot; generation: number }
  | { sk: 'failed'; name: string; error: ErrorData }
  | { sk: 'lifecycle'; name: string; kind: LifecycleKind; generation: number; detail: string | undefined }
  | { sk: 'task-done'; id: number; ok: true; value: unknown }
  | { sk: 'task-done'; id: number; ok: false; error: ErrorData }
  | { sk: 'task-progress'; id: number; value: unknown }
  | { sk: 'done'; id: number }
  /** Every sidekick stopped; the host exits next. */
  | { sk: 'stopped' }
  | { sk: 'status'; id: number; sidekicks: SidekickStatus[]; rss: number; log: LogCounts };
