// Control lines: messages from a client library to the agent, sent on the same connection as records.
//
//   {"_sidekick":"dropped","count":N}     the client had to drop N records since its last successful send
//                                         (agent unreachable, socket buffer full, record too large, encode error)
//
// The agent never writes to a client: a client that exits with unread data makes the kernel reset the agent's end,
// and lines it wrote just before would be lost. A graceful stop only half-closes (FIN). What clients need from the
// agent (profiling on or off, sample rate) is `agent.state` beside the socket: a symbolic link whose target is the
// state (`stateTarget()`), so a client reads it with one readlink(2) and the agent replaces it atomically (rename).
// `{"_sidekick":"hello",…}` from older clients is accepted and ignored.
//
// The agent adds N to `client_dropped`, so "records sent = delivered + dead-lettered + dropped (agent) + invalid +
// client_dropped" holds end to end. Unknown or malformed control lines are counted as invalid (`bad_control`), so a
// newer client talking to an older agent is visible rather than silent. Format: docs/clients.md "Drops".

/** The most one control line may report: far above any real count, low enough that a bad client cannot wreck sums. */
export const MAX_CONTROL_COUNT = 1_000_000_000;

export type ControlMessage = { kind: 'dropped'; count: number } | { kind: 'hello' };

/** Parses one control line (no newline); undefined when it is not a control message this agent understands. */
export function parseControl(line: Buffer): ControlMessage | undefined {
  let msg: unknown;
  try {
    msg = JSON.parse(line.toString('utf8'));
  } catch {
    return undefined;
  }
  if (msg === null || typeof msg !== 'object') return undefined;
  const m = msg as Record<string, unknown>;
  if (m._sidekick === 'hello') return { kind: 'hello' };
  if (m._sidekick === 'dropped') {
    const count = m.count;
    if (typeof count === 'number' && Number.isSafeInteger(count) && count >= 0 && count <= MAX_CONTROL_COUNT)
      return { kind: 'dropped', count };
  }
  return undefined;
}

/** The control line a client writes to report `count` dropped records (exactly these bytes, then '\n'). */
export function droppedLine(count: number): string {
  return `{"_sidekick":"dropped","count":${count}}\n`;
}

/** What clients are told to do about profiling (the line in the state file). */
export interface ClientState {
  profiling: boolean;
  sampleRate: number;
  reason: 'ok' | 'breaker_open' | 'disabled' | 'stopped';
}

/** What an older client wrote first on a new connection (accepted, ignored). */
export const HELLO_LINE = '{"_sidekick":"hello","state":true}\n';

/** The state as a symlink target: `sidekick-state:<profiling 0|1>:<sampleRate>:<reason>`. */
export function stateTarget(state: ClientState): string {
  return `sidekick-state:${state.profiling ? 1 : 0}:${state.sampleRate}:${state.reason}`;
}

/** Parses a symlink target written by stateTarget(); undefined when it is not one. */
export function parseStateTarget(target: string): { profiling: boolean; sampleRate: number } | undefined {
  const [tag, p, rate] = target.split(':');
  const sampleRate = Number(rate);
  if (tag !== 'sidekick-state' || (p !== '0' && p !== '1') || !Number.isFinite(sampleRate)) return undefined;
  return { profiling: p === '1', sampleRate: Math.min(1, Math.max(0, sampleRate)) };
}
