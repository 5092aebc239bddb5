// The Node agent client's options, their defaults and their validation.
import { dirname, join } from 'node:path';
import { defaultAgentSocketPath } from '../socket-path.js';
import { agentStatePath } from './agent-state.js';

export interface AgentClientOptions {
  /** Socket path. Default: env SIDEKICK_AGENT_SOCKET, else the agent's default (see `defaultAgentSocketPath`). */
  socket?: string;
  /** Cap on bytes buffered in the client while connecting or backpressured; default 1 MiB. */
  maxBufferBytes?: number;
  /** Give up a connect attempt after this long and retry with backoff; default 1000 ms. */
  connectTimeoutMs?: number;
  /** Lines longer than this (bytes, newline included) are dropped; default 1 MiB, the agent's `maxRecordBytes`. */
  maxRecordBytes?: number;
  /** How often the socket file's inode is compared with the connected one; default 1000 ms, 0 = never. */
  inodeCheckMs?: number;
  /** Reconnect backoff: delay = min(maxMs, n² × baseMs) after n consecutive failures; defaults 100 / 1000 ms. */
  reconnectBaseMs?: number;
  reconnectMaxMs?: number;
  /** Spill directory. Default: env SIDEKICK_AGENT_SPILL_DIR, else `spill/` beside the socket (as the agent assumes). */
  spillDir?: string;
  /** Cap on the spill file's size; default 64 MiB; 0 turns spilling off. */
  spillMaxBytes?: number;
}

/** The options resolved: defaults filled in, paths derived, numbers validated. */
export interface ClientSettings {
  socket: string;
  maxBufferBytes: number;
  maxRecordBytes: number;
  connectTimeoutMs: number;
  inodeCheckMs: number;
  reconnectBaseMs: number;
  reconnectMaxMs: number;
  spillDir: string;
  spillMaxBytes: number;
  /** The agent's state link beside the socket (profiling on/off, sample rate). */
  stateFile: string;
}

function positive(v: number | undefined, fallback: number, name: string, allowZero = false): number {
  if (v === undefined) return fallback;
  if (!Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) {
    throw new RangeError(`createAgentClient: ${name} must be a ${allowZero ? 'non-negative' : 'positive'} number`);
  }
  return v;
}

/** Fills in the defaults; throws RangeError on a bad number. */
export function resolveOptions(opts: AgentClientOptions): ClientSettings {
  const socket = opts.socket ?? defaultAgentSocketPath();
  return {
    socket,
    maxBufferBytes: positive(opts.maxBufferBytes, 1024 * 1024, 'maxBufferBytes'),
    maxRecordBytes: positive(opts.maxRecordBytes, 1024 * 1024, 'maxRecordBytes'),
    connectTimeoutMs: positive(opts.connectTimeoutMs, 1000, 'connectTimeoutMs'),
    spillMaxBytes: positive(opts.spillMaxBytes, 64 * 1024 * 1024, 'spillMaxBytes', true),
    stateFile: agentStatePath(socket),
    spillDir: opts.spillDir ?? (process.env.SIDEKICK_AGENT_SPILL_DIR || join(dirname(socket), 'spill')),
    inodeCheckMs: positive(opts.inodeCheckMs, 1000, 'inodeCheckMs', true),
    reconnectBaseMs: positive(opts.reconnectBaseMs, 100, 'reconnectBaseMs'),
    reconnectMaxMs: positive(opts.reconnectMaxMs, 1000, 'reconnectMaxMs'),
  };
}
