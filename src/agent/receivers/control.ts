// Control lines: messages from a client library to the agent, sent on the same connection as records.
//
//   {"_sidekick":"dropped","count":N}     the client had to drop N records since its last successful send
//                                         (agent unreachable, socket buffer full, record too large, encode error)
//
// Client → agent, once at the start of a connection:
//
//   {"_sidekick":"hello","state":true}      "I read control lines": the agent then writes the lines below on this
//                                         connection. A client that never says hello is never written to (a client
//                                         that does not read would otherwise never see its own EOF).
//
// Agent → client (only to clients that said hello; a client keeps the last line it has read):
//
//   {"_sidekick":"state","profiling":true,"sampleRate":1,"reason":"ok"}   written at accept and on every change:
//       whether clients should run their profiler (false while the exporter's breaker is open or an operator turned
//       it off: `reason` says which), and the share of requests to profile. Clients peek it without consuming it, so
//       every request of a long-lived PHP process sees the latest line.
//   {"_sidekick":"bye"}                    written at a graceful stop, just before the agent half-closes the
//       connection: close it at the next send and connect again (the agent reads everything up to that EOF).
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

/** What clients are told to do about profiling (the agent's state line). */
export interface ClientState {
  profiling: boolean;
  sampleRate: number;
  reason: 'ok' | 'breaker_open' | 'disabled';
}

export function stateLine(state: ClientState): string {
  return `{"_sidekick":"state","profiling":${state.profiling},"sampleRate":${state.sampleRate},"reason":"${state.reason}"}\n`;
}

/** What clients that read control lines write first on a new connection. */
export const HELLO_LINE = '{"_sidekick":"hello","state":true}\n';

/** Written just before the half-close of a graceful stop (clients that peek for state lines see it there). */
export const BYE_LINE = '{"_sidekick":"bye"}\n';
