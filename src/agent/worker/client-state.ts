// What clients are told about profiling, and the state file they read it from.
import { renameSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import type { AgentConfig } from '../../config/schema.js';
import { describeError } from '../../errors.js';
import type { BreakerStateName } from '../breaker/breaker.js';
import { stateTarget, type ClientState } from '../receivers/control.js';

/** The clients' state file (profiling on/off, sample rate), beside the socket. */
const STATE_FILE = 'agent.state';

/**
 * What clients should do about profiling: off while the breaker is not closed (central is failing: profiling would
 * only cost the app) or when the operator turned it off; else the configured sample rate.
 */
export function clientStateOf(p: AgentConfig['profiling'], breaker: BreakerStateName): ClientState {
  const reason = !p.enabled ? 'disabled' : breaker === 'closed' ? 'ok' : 'breaker_open';
  return { profiling: reason === 'ok', sampleRate: p.sampleRate, reason };
}

/**
 * The state as `<socket dir>/agent.state`, a symbolic link whose target is the state (stateTarget): a client reads
 * it with one readlink(2) (~1 µs in PHP, where reading a file costs open/read/close) and the agent replaces it
 * atomically (new link, rename). Clients read it when the app asks (`profilingEnabled()`); nothing is ever written
 * down the clients' connections (see UnixSocketReceiver.sayBye).
 */
export class ClientStateFile {
  private lastLine: string | undefined;

  constructor(private readonly log: Logger) {}

  publish(socket: string, state: ClientState): void {
    const line = stateTarget(state);
    if (line === this.lastLine) return;
    this.lastLine = line;
    const file = join(dirname(socket), STATE_FILE);
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      rmSync(tmp, { force: true });
      symlinkSync(line, tmp);
      renameSync(tmp, file);
    } catch (err) {
      this.lastLine = undefined; // try again at the next change
      this.log.warn({ err: describeError(err), file }, 'could not write the client state file');
    }
  }
}
