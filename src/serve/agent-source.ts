// The telemetry agent inside `sidekick serve`: an AgentSupervisor (its pipeline runs in its own child process) whose
// state every app sees as the vars of a sidekick named "agent", e.g. readVars('agent').PROFILING_ENABLED === '0'
// while its breaker is open, so request code can skip profiling work that would only pile up in the spool.
// Readers never poll: this source samples the supervisor once a second and publishes only when something changed.
import { EventEmitter } from 'node:events';
import { SidekickError } from '../errors.js';
import type { LoadedConfig } from '../config/load.js';
import { AgentSupervisor } from '../agent/supervisor.js';
import { childLogger } from '../log/logger.js';
import { makeSnapshot, sameVars, type Vars } from '../vars/snapshot.js';
import type { VarsSource } from './app-supervisor.js';

export const AGENT_SIDEKICK = 'agent';
const SAMPLE_MS = 1000;

export class AgentVarsSource
  extends EventEmitter<{ vars: [string, Vars, number]; failed: [string, SidekickError] }>
  implements VarsSource
{
  readonly supervisor: AgentSupervisor;
  private vars: Vars | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(loaded: LoadedConfig) {
    super();
    // serve owns the admin socket; its status includes the agent's.
    const embedded: LoadedConfig = { ...loaded, config: { ...loaded.config, admin: { socket: undefined } } };
    this.supervisor = new AgentSupervisor({ loaded: embedded, log: childLogger({ component: 'agent' }) });
  }

  async start(): Promise<void> {
    await this.supervisor.start();
    await this.sample();
    this.timer = setInterval(() => void this.sample(), SAMPLE_MS);
    this.timer.unref();
  }

  private async sample(): Promise<void> {
    const status = (await this.supervisor.status().catch(() => undefined)) as
      | {
          state?: string;
          gauges?: Record<string, unknown>;
          pipeline?: { breaker?: { state?: string }; clients?: { profiling?: boolean; sampleRate?: number } };
        }
      | undefined;
    if (!status) return;
    const breaker = String(status.pipeline?.breaker?.state ?? 'unknown');
    // The same decision the agent sends its socket clients (breaker not closed, or turned off by the operator).
    const clients = status.pipeline?.clients;
    const next = makeSnapshot(
      {
        PROFILING_ENABLED: clients ? (clients.profiling ? '1' : '0') : breaker === 'open' ? '0' : '1',
        PROFILING_SAMPLE_RATE: String(clients?.sampleRate ?? 1),
        AGENT_STATE: String(status.state ?? 'unknown'),
        AGENT_BREAKER: breaker,
        AGENT_SOCKET: this.supervisor.config.socket,
      },
      Infinity,
      'agent',
    );
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

  task(): Promise<unknown> {
    return Promise.reject(new SidekickError('SK_ERR_NO_TASK_HANDLER', 'the agent sidekick takes no tasks'));
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.supervisor.stop();
  }

  status(): Promise<Record<string, unknown>> {
    return this.supervisor.status();
  }
}
