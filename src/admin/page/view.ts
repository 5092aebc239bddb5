// What the status page is sent: `ServeRuntime.status()` as it is (less its ever-changing uptime: the page counts that
// itself from `startedAt`), plus each sidekick's vars as keys, sizes and a short keyed hash (the same as `sidekick
// vars` shows, src/vars/mask.ts). Values are included only when `admin.showValues` is true: vars often hold secrets,
// and a page is easier to leave open than a terminal.
import { maskVars } from '../../vars/mask.js';
import type { Vars } from '../../vars/snapshot.js';

/** Keys listed per sidekick; the rest is counted (a huge snapshot must not make every push huge). */
export const MAX_KEYS_SHOWN = 200;
/** Characters of a value shown when values are shown. */
export const MAX_VALUE_CHARS = 300;
/** Rate samples kept for the charts: one a second, the last five minutes. */
export const HISTORY_SAMPLES = 300;

export interface VarsKey {
  key: string;
  /** UTF-8 bytes of the value. */
  bytes: number;
  /** A short keyed hash of the value (per process): shows that a value changed without showing it. */
  hash: string;
  /** Only with admin.showValues, cut at MAX_VALUE_CHARS. */
  value?: string;
}

export interface VarsSummary {
  generation: number;
  keys: VarsKey[];
  /** Keys not listed (past MAX_KEYS_SHOWN). */
  more: number;
}

export interface PageView {
  /** When the supervisor started (ms since the epoch). */
  startedAt: number;
  showValues: boolean;
  /** `status()` without `uptimeMs`. */
  status: Record<string, unknown>;
  /** By "app/name". */
  vars: Record<string, VarsSummary>;
  /** The `agent` vars every app sees, when the agent runs. */
  agentVars: VarsSummary | undefined;
}

export interface RateSample {
  t: number;
  received: number;
  exported: number;
  spoolRecords: number;
}

type Summary = Omit<VarsSummary, 'generation'>;

export type CurrentVars = (app: string, name: string) => { vars: Vars; generation: number } | undefined;

/** The parts of status() read here (the rest is passed through untouched). */
interface StatusShape {
  uptimeMs?: number;
  apps?: { name: string; sidekicks?: { name: string }[] }[];
  agent?: {
    rates?: { receivedPerSec: number; exportedPerSec: number };
    gauges?: { spoolRecords: number };
  };
}

export class ViewBuilder {
  /**
   * Snapshots are frozen and replaced on publish, so one summary per snapshot object is enough (one with values, one
   * without: `showValues` can change at a reload).
   */
  private readonly summaries = { masked: new WeakMap<Vars, Summary>(), shown: new WeakMap<Vars, Summary>() };
  private startedAt: number | undefined;

  constructor(
    /** Read at each build: a reload that changes `admin.showValues` applies to the next picture. */
    private readonly showValues: () => boolean,
    private readonly current: CurrentVars,
  ) {}

  build(raw: unknown, now: number): PageView {
    const showValues = this.showValues();
    const { uptimeMs, ...status } = raw as StatusShape & Record<string, unknown>;
    // Taken once: recomputing it from each sample would jitter by a millisecond and look like a change.
    if (this.startedAt === undefined) this.startedAt = now - (uptimeMs ?? 0);
    const vars: Record<string, VarsSummary> = {};
    for (const app of (status as StatusShape).apps ?? [])
      for (const sk of app.sidekicks ?? []) {
        const cur = this.current(app.name, sk.name);
        if (cur) vars[`${app.name}/${sk.name}`] = this.summary(cur, showValues);
      }
    const agentCur = (status as StatusShape).agent ? this.current('', 'agent') : undefined;
    return {
      startedAt: this.startedAt,
      showValues,
      status,
      vars,
      agentVars: agentCur ? this.summary(agentCur, showValues) : undefined,
    };
  }

  private summary(cur: { vars: Vars; generation: number }, showValues: boolean): VarsSummary {
    const cache = showValues ? this.summaries.shown : this.summaries.masked;
    let s = cache.get(cur.vars);
    if (!s) {
      const names = Object.keys(cur.vars).sort();
      const shown = names.slice(0, MAX_KEYS_SHOWN);
      const masked = maskVars(Object.fromEntries(shown.map((key) => [key, cur.vars[key]!])));
      const keys = shown.map((key): VarsKey => {
        const k: VarsKey = { key, bytes: masked[key]!.bytes, hash: masked[key]!.hash };
        const value = cur.vars[key]!;
        if (showValues) k.value = value.length > MAX_VALUE_CHARS ? `${value.slice(0, MAX_VALUE_CHARS)}…` : value;
        return k;
      });
      s = { keys, more: names.length - keys.length };
      cache.set(cur.vars, s);
    }
    return { generation: cur.generation, ...s };
  }
}

/** The agent's ingest and export rates and spool backlog, one sample a second, for the page's charts. */
export class RateHistory {
  private readonly samples: RateSample[] = [];

  add(raw: unknown, t: number): void {
    const agent = (raw as StatusShape).agent;
    if (!agent?.rates) return;
    this.samples.push({
      t,
      received: agent.rates.receivedPerSec,
      exported: agent.rates.exportedPerSec,
      spoolRecords: agent.gauges?.spoolRecords ?? 0,
    });
    if (this.samples.length > HISTORY_SAMPLES) this.samples.shift();
  }

  all(): RateSample[] {
    return [...this.samples];
  }
}
