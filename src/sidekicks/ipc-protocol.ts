// Messages between an HTTP worker process and the `sidekick serve` supervisor, over cluster IPC
// (advanced serialization, so snapshots are structured-cloned, not JSON-encoded).
import type { ErrorData } from './protocol.js';

export type WorkerToPrimary =
  | { sk: 'ensure'; name: string }
  | { sk: 'task'; id: number; name: string; payload: unknown; reply: boolean }
  | { sk: 'hello' };

export type PrimaryToWorker =
  | { sk: 'init'; snapshots: { name: string; vars: Record<string, string>; generation: number }[] }
  | { sk: 'vars'; name: string; vars: Record<string, string>; generation: number }
  | { sk: 'failed'; name: string; error: ErrorData }
  | { sk: 'task-done'; id: number; ok: true; value: unknown }
  | { sk: 'task-done'; id: number; ok: false; error: ErrorData }
  | { sk: 'drain' };

export function isSidekickMessage(msg: unknown): msg is { sk: string } {
  return typeof msg === 'object' && msg !== null && typeof (msg as { sk?: unknown }).sk === 'string';
}
