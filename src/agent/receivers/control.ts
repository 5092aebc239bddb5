// Control lines: messages from a client library to the agent, sent on the same connection as records.
//
//   {"_sidekick":"dropped","count":N}     the client had to drop N records since its last successful send
//                                         (agent unreachable, socket buffer full, record too large, encode error)
//
// Agent → client: nothing is written; a graceful stop half-closes each connection (the "bye", see
// UnixSocketReceiver.drain): the client closes its end at its next send and connects again.
//
// The agent adds N to `client_dropped`, so "records sent = delivered + dead-lettered + dropped (agent) + invalid +
// client_dropped" holds end to end. Unknown or malformed control lines are counted as invalid (`bad_control`), so a
// newer client talking to an older agent is visible rather than silent. Format: docs/clients.md "Drops".

/** The most one control line may report: far above any real count, low enough that a bad client cannot wreck sums. */
export const MAX_CONTROL_COUNT = 1_000_000_000;

export type ControlMessage = { kind: 'dropped'; count: number };

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
