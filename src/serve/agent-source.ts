// The telemetry agent inside `sidekick serve`: an AgentSupervisor (its pipeline runs in its own child process) whose
// state every app sees as the vars of a sidekick named "agent", e.g. readVars('agent').PROFILING_ENABLED === '0'
// while its breaker is open, so request code can skip profiling work that would only pile up in the spool.
// The seam is one way: the agent emits typed 'state' events, this source turns each change into a snapshot.
import { EventEmitter } from 'node:events';
import type { LifecycleLog } from '../common/lifecycle.js';
import { SidekickError } from '../errors.js';
import type { AgentConfig } from '../config/schema.js';
import { AgentSupervisor, type AgentState, type AgentStatus } from '../agent/supervisor/supervisor.js';
import { childLogger } from '../log/logger.js';
import type { HealthVerdict } from '../common/health.js';
import { makeSnapshot, sameVars, type Vars } from '../vars/snapshot.js';
import type { VarsSource } from './app-supervisor.js';
import { failedTask, type TaskHandle } from '../sidekicks/task-handle.js';

export const AGENT_SIDEKICK = 'agent';

/** The `agent` vars: the decision the agent gives its socket clients (PROFILING_*) and its own state. */
export function agentVars(s: AgentState): Record<string, string> {
  return {
    PROFILING_ENABLED: s.profiling ? '1' : '0',
    PROFILING_SAMPLE_RATE: String(s.sampleRate),
    AGENT_STATE: s.state,
    AGENT_BREAKER: s.breaker,
    AGENT_SOCKET: s.socket,
  };
}

export class AgentVarsSource
  extends EventEmitter<{ vars: [string, Vars, number]; failed: [string, SidekickError] }>
  implements VarsSource
{
  private readonly supervisor: AgentSupervisor;
  private vars: Vars | undefined;
  private breaker: AgentState['breaker'] | undefined;

  constructor(
    config: AgentConfig,
    configFile?: string,
    private readonly lifecycle?: LifecycleLog,
  ) {
    super();
    // serve owns the admin socket (its status includes the agent's), so the agent serves none of its own.
    this.supervisor = new AgentSupervisor({ config, configFile, log: childLogger({ component: 'agent' }) });
    this.supervisor.on('state', (s) => this.publish(s));
  }

  async start(): Promise<void> {
    await this.supervisor.start();
  }

  reload(config: AgentConfig): Promise<void> {
    return this.supervisor.reload(config);
  }

  private publish(state: AgentState): void {
    if (this.breaker !== undefined && state.breaker !== this.breaker)
      this.lifecycle?.record({ kind: 'agent_breaker', detail: `breaker ${state.breaker}` });
    this.breaker = state.breaker;
    const next = makeSnapshot(agentVars(state), Infinity, 'agent');
    if (sameVars(this.vars, next)) return;
    this.vars = next;
    this.emit('vars', AGENT_SIDEKICK, next, 0);
  }

  declares(name: string): boolean {
    return name === AGENT_SIDEKICK;
  }

  ensure(): void {}

  snapshots(): { name: string; vars: Vars; generation: number }[] {
    return this.vars ? [{ name: AGENT_SIDEKICK, vars: this.vars, generation: 0 }] : [];
  }

  current(): { vars: Vars; generation: number } | undefined {
    return this.vars ? { vars: this.vars, generation: 0 } : undefined;
  }

  task(): TaskHandle {
    return failedTask(new SidekickError('SK_ERR_NO_TASK_HANDLER', 'the agent sidekick takes no tasks'));
  }

  async stop(): Promise<void> {
    await this.supervisor.stop();
  }

  readiness(): HealthVerdict {
    return this.supervisor.readiness();
  }

  status(): Promise<AgentStatus> {
    return this.supervisor.status();
  }
}
