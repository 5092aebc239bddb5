// The circuit breaker around the exporter (cockatiel).
//
// `ConsecutiveBreaker(failures)`: opens after N consecutive *retryable* failures (network, timeout, 408, 429, 5xx);
// a delivered batch resets the count, and so does a definitive answer from central (4xx → dead-letter, 413 → split),
// because central is clearly up. Open for `halfOpenAfterMs`, then one test export (half-open) closes or re-opens it.
// While it is open nothing is sent and records keep spooling to disk.
//
// Persistence: on every state change the policy's toJSON() (which keeps `openedAt`) goes to the spool's `breaker`
// state file, and a new worker or a restarted agent starts from it: an open breaker stays open for the *remaining*
// time instead of hammering a dead central right after a restart (opossum's restore bugs: PEERS).
import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  handleType,
  type CircuitBreakerPolicy,
} from 'cockatiel';
import type { Logger } from 'pino';
import { RetryableExportError } from '../exporters/types.js';

/** The breaker refused the call; `retryInMs` is the time left until it half-opens. */
export class BreakerOpenError extends Error {
  constructor(readonly retryInMs: number) {
    super(`exporter breaker is open; half-open in ${retryInMs} ms`);
    this.name = 'BreakerOpenError';
  }
}

export type BreakerStateName = 'closed' | 'open' | 'half_open';

export interface BreakerStore {
  read(): Promise<unknown>;
  write(value: unknown): Promise<void>;
}

export interface BreakerOptions {
  failures: number;
  halfOpenAfterMs: number;
  store: BreakerStore;
  log: Logger;
  onState?: (state: BreakerStateName) => void;
}

interface PersistedBreaker {
  v: 1;
  policy: unknown;
  failures: number;
  halfOpenAfterMs: number;
  savedAt: number;
}

interface PolicyJson {
  ownState?: { value?: number; openedAt?: number };
}

export class ExporterBreaker {
  private policy!: CircuitBreakerPolicy;
  private failures: number;
  private halfOpenAfterMs: number;
  private writes: Promise<void> = Promise.resolve();
  private readonly log: Logger;
  private readonly store: BreakerStore;
  private readonly onState: ((state: BreakerStateName) => void) | undefined;

  private constructor(opts: BreakerOptions) {
    this.failures = opts.failures;
    this.halfOpenAfterMs = opts.halfOpenAfterMs;
    this.log = opts.log;
    this.store = opts.store;
    this.onState = opts.onState;
  }

  static async create(opts: BreakerOptions): Promise<ExporterBreaker> {
    const b = new ExporterBreaker(opts);
    let saved: PersistedBreaker | undefined;
    try {
      const raw = (await opts.store.read()) as PersistedBreaker | undefined;
      if (raw && raw.v === 1 && raw.policy && typeof raw.policy === 'object') saved = raw;
    } catch (err) {
      opts.log.warn({ err }, 'breaker state unreadable; starting closed');
    }
    b.build(saved?.policy);
    if (b.state !== 'closed')
      opts.log.warn(
        { code: 'SK_ERR_BREAKER_OPEN', retryInMs: b.retryInMs() },
        'SK_ERR_BREAKER_OPEN: exporter breaker restored open from the spool; waiting out the remaining time',
      );
    return b;
  }

  private build(initialState: unknown): void {
    const policy = circuitBreaker(handleType(RetryableExportError), {
      halfOpenAfter: this.halfOpenAfterMs,
      breaker: new ConsecutiveBreaker(this.failures),
      ...(initialState ? { initialState } : {}),
    });
    policy.onStateChange((s) => {
      const name = ExporterBreaker.nameOf(s);
      if (s === CircuitState.Open)
        this.log.warn(
          { code: 'SK_ERR_BREAKER_OPEN', halfOpenAfterMs: this.halfOpenAfterMs },
          `SK_ERR_BREAKER_OPEN: exporter breaker opened after ${this.failures} consecutive failures; spooling`,
        );
      else this.log.info({ state: name }, `exporter breaker ${name}`);
      this.persist();
      this.onState?.(name);
    });
    this.policy = policy;
  }

  private static nameOf(s: CircuitState): BreakerStateName {
    if (s === CircuitState.Open || s === CircuitState.Isolated) return 'open';
    if (s === CircuitState.HalfOpen) return 'half_open';
    return 'closed';
  }

  private persist(): void {
    const value: PersistedBreaker = {
      v: 1,
      policy: this.policy.toJSON(),
      failures: this.failures,
      halfOpenAfterMs: this.halfOpenAfterMs,
      savedAt: Date.now(),
    };
    this.writes = this.writes
      .then(() => this.store.write(value))
      .catch((err: unknown) => this.log.warn({ err }, 'could not persist breaker state'));
  }

  /** Waits for pending state writes (before closing the spool). */
  async settle(): Promise<void> {
    await this.writes;
  }

  get state(): BreakerStateName {
    return ExporterBreaker.nameOf(this.policy.state);
  }

  /** 0 closed, 1 open, 2 half-open (the gauge). */
  get stateCode(): 0 | 1 | 2 {
    const s = this.state;
    return s === 'closed' ? 0 : s === 'open' ? 1 : 2;
  }

  /** Milliseconds until an open breaker lets a test call through (0 when not open). */
  retryInMs(now = Date.now()): number {
    if (this.policy.state !== CircuitState.Open) return 0;
    const json = this.policy.toJSON() as PolicyJson;
    const openedAt = json.ownState?.openedAt ?? 0;
    return Math.max(0, openedAt + this.halfOpenAfterMs - now);
  }

  /** Runs `fn` through the breaker. Throws BreakerOpenError when open, RetryableExportError when `fn` did. */
  async execute<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await this.policy.execute(fn);
    } catch (err) {
      if (err instanceof BrokenCircuitError) throw new BreakerOpenError(Math.max(1, this.retryInMs()));
      throw err;
    }
  }

  /** Applies new thresholds, keeping the current state (an open breaker stays open). */
  reconfigure(failures: number, halfOpenAfterMs: number): void {
    if (failures === this.failures && halfOpenAfterMs === this.halfOpenAfterMs) return;
    const state = this.policy.state === CircuitState.HalfOpen ? undefined : this.policy.toJSON();
    this.failures = failures;
    this.halfOpenAfterMs = halfOpenAfterMs;
    this.build(state);
    this.persist();
  }

  toJSON(): { state: BreakerStateName; retryInMs: number; failures: number; halfOpenAfterMs: number } {
    return {
      state: this.state,
      retryInMs: this.retryInMs(),
      failures: this.failures,
      halfOpenAfterMs: this.halfOpenAfterMs,
    };
  }
}
