// What the agent tells its clients without a reply channel: `agent.state` beside the socket, a symlink whose target
// is the state (profiling on or off, sample rate), read with one readlink.
import { readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseStateTarget } from '../receivers/control.js';

export interface AgentState {
  profiling: boolean;
  sampleRate: number;
}

const DEFAULT_STATE: AgentState = { profiling: true, sampleRate: 1 };

/** The state link for the agent listening on `socket`. */
export function agentStatePath(socket: string): string {
  return join(dirname(socket), 'agent.state');
}

/** The agent's current state; profiling on when there is none yet (an older agent) or it cannot be read. */
export function readAgentState(stateFile: string): AgentState {
  try {
    return parseStateTarget(readlinkSync(stateFile)) ?? DEFAULT_STATE;
  } catch {
    return DEFAULT_STATE; // no state yet (an older agent): profiling on
  }
}
