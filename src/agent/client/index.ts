// Sidekick agent client for Node (`import { createAgentClient } from 'sidekick-runtime/client'`).
//
// Fire-and-forget NDJSON records over the agent's Unix stream socket:
// - `send()` never throws and never blocks: it serialises the record, appends it to a bounded in-memory buffer and
//   returns. Lines are written in order, batched once per event-loop turn (setImmediate), on one persistent connection.
// - Bounded: the bytes waiting in the client (not yet handed to the kernel) never exceed `maxBufferBytes` (1 MiB);
//   past it `send()` appends the line to the spill file (below) or, when that is off or full, drops the record,
//   counts it and returns false. Lines over `maxRecordBytes` are dropped too.
// - Spill: the second line of defence, shared with the PHP client: `<spillDir>/spill.ndjson`, one O_APPEND write of
//   a whole line, capped by the file's size; the agent replays it. Lines that cannot be sent at close() and a line cut
//   by a lost connection go there too.
// - Reconnects with backoff (100 ms × n², capped at 1 s, reset after 10 s of stable connection) after an error or a
//   close, and also when the socket file is replaced (its inode is checked every `inodeCheckMs`): a connection to an
//   orphaned inode keeps "working" while the new agent never sees the data — DogStatsD's lesson.
// - Never keeps the process alive: timers are unref'ed and so is the connected socket. Only a connect attempt with
//   records waiting is ref'ed, bounded by `connectTimeoutMs`, so a short script's records still go out. When the last
//   records matter (agent slow or restarting), `await client.flush()` holds the process for at most its timeout.
// - Drops are reported: the count of records dropped since the last report goes to the agent as a control line in
//   front of the next batch (`{"_sidekick":"dropped","count":N}`), where it becomes `client_dropped`.
// - A stopping agent half-closes the connection ("bye"): the client finishes the line it is writing, leaves that
//   connection and connects again (to the next agent), so the stopping agent reads everything up to our EOF.
// - profilingEnabled(): the agent's state link beside the socket (one readlink).
// - Quiet: no logging, no dependencies beyond Node's standard library.
//
// The parts: options.ts (options and defaults), client.ts (the connection), pending-lines.ts (lines not yet sent
// and the drop count), spill-file.ts, agent-state.ts (profilingEnabled's state link), middleware.ts (HTTP).

export { defaultAgentSocketPath } from '../socket-path.js';
export type { AgentClientOptions } from './options.js';
export { createAgentClient, type AgentClient, type AgentClientStats } from './client.js';
export { agentMiddleware, type AgentMiddlewareOptions } from './middleware.js';
