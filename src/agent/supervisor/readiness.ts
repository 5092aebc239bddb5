// The agent's /readyz: can it take records now? (docs/agent.md "Health endpoints"). A pure decision over what the
// supervisor already holds, so a probe costs no round trip to the worker and a test can feed it any state.
//
// Not ready: stopping; not started (no worker has accepted yet, the socket file is not published); the socket file
// gone or replaced (clients cannot connect); the spool not writable (disk full, or its last write failed and none has
// succeeded since: read-only, removed and not recreatable, permissions; or a write or fsync waiting ≥ 2 s: the
// filesystem does not answer, a hung disk or network mount).
// Still ready, with a warning: the breaker open or half-open (central failing: records are spooled and replayed, which
// is the agent doing its job; clients write to a local socket, so taking the agent "out of rotation" would send
// nothing elsewhere, and beside an app in one pod it would take the app out of its Service for a telemetry outage),
// and a worker being replaced (crash restart, recycle: the supervisor holds the socket, connections wait in its
// backlog and are read by the next worker).
import type { HealthVerdict } from '../../common/health.js';
import type { AgentState } from './agent-status.js';
import type { WorkerState } from './worker-handle.js';

export interface AgentReadinessView {
  stopping: boolean;
  /** The first worker accepted and the socket file was published. */
  started: boolean;
  socket: string;
  /** The socket file at `socket` is still the one this agent bound. */
  socketInPlace: boolean;
  worker: WorkerState | undefined;
  /** Since the running worker's last report (it reports about once a second while its event loop runs). */
  workerSilentMs?: number;
  breaker: AgentState['breaker'];
  /** The spool as the worker last reported it (about once a second); undefined before its first report. */
  spool: { dir: string; diskFull: boolean; writeError?: string | undefined; stalledMs?: number } | undefined;
}

/** A spool write or fsync waiting this long makes the agent not ready (the filesystem is not answering). */
export const SPOOL_STALLED_MS = 2000;
/** A running worker that has not reported for this long is not taking records (reports come about once a second). */
export const WORKER_SILENT_MS = 5000;

export function agentReadiness(v: AgentReadinessView): HealthVerdict {
  if (v.stopping) return { ok: false, reason: 'stopping: draining the socket and flushing the spool' };
  if (!v.started) return { ok: false, reason: `starting: no worker has accepted on ${v.socket} yet` };
  if (!v.socketInPlace)
    return {
      ok: false,
      reason: `socket ${v.socket} was removed or replaced: clients cannot connect (restart the agent)`,
    };
  if (v.spool?.diskFull)
    return { ok: false, reason: `spool ${v.spool.dir}: disk full (new records are held in a bounded buffer)` };
  if (v.worker === 'ready' && (v.workerSilentMs ?? 0) >= WORKER_SILENT_MS)
    return {
      ok: false,
      reason: `worker has not reported for ${Math.round(v.workerSilentMs! / 1000)} s: its event loop is blocked`,
    };
  if ((v.spool?.stalledMs ?? 0) >= SPOOL_STALLED_MS)
    return {
      ok: false,
      reason: `spool ${v.spool!.dir}: the filesystem has not answered for ${Math.round(v.spool!.stalledMs! / 1000)} s (records wait in a bounded buffer)`,
    };
  if (v.spool?.writeError) return { ok: false, reason: `spool ${v.spool.dir} not writable: ${v.spool.writeError}` };
  const warnings: string[] = [];
  if (v.breaker === 'open' || v.breaker === 'half_open')
    warnings.push(`breaker ${v.breaker}: central is failing; records are spooled and replayed when it answers`);
  if (v.worker !== 'ready') warnings.push('worker being replaced: connections wait in the socket backlog');
  return { ok: true, warning: warnings.length ? warnings.join('; ') : undefined };
}
