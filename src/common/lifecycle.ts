// Lifecycle events of a running instance (a sidekick crashed, an HTTP worker was replaced, a reload, the agent's
// breaker opened): what an operator wants to see as a timeline. Kept as a bounded ring (the newest RECENT_EVENTS)
// and emitted to live subscribers (the status page). Logs stay the record of truth; this is the at-a-glance view.
import { EventEmitter } from 'node:events';

export type LifecycleKind =
  | 'sidekick_started'
  | 'sidekick_crashed'
  | 'sidekick_boot_failed'
  | 'sidekick_exited'
  | 'sidekick_gave_up'
  | 'sidekick_host_died'
  | 'worker_died'
  | 'worker_unresponsive'
  | 'worker_recycled'
  | 'reload'
  | 'agent_breaker';

export interface LifecycleEvent {
  /** ms since the epoch */
  at: number;
  kind: LifecycleKind;
  app?: string;
  sidekick?: string;
  generation?: number;
  pid?: number;
  /** One line for people: the error, the reason, the new state. */
  detail?: string;
}

export const RECENT_EVENTS = 200;

export class LifecycleLog extends EventEmitter<{ event: [LifecycleEvent] }> {
  private readonly ring: LifecycleEvent[] = [];

  record(event: Omit<LifecycleEvent, 'at'> & { at?: number }): void {
    const e: LifecycleEvent = { at: Date.now(), ...event };
    this.ring.push(e);
    if (this.ring.length > RECENT_EVENTS) this.ring.shift();
    this.emit('event', e);
  }

  /** The newest events, oldest first. */
  recent(): LifecycleEvent[] {
    return [...this.ring];
  }
}
