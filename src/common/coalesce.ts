// Coalesced runs of one job (a reload): at most one runs at a time, and any number of requests made while it runs
// become exactly one more run after it — never dropped, never stacked. The queued run starts only once the running
// one has finished, so it sees everything that changed meanwhile (the config file as it is then).

export class Coalesced {
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private closed = false;

  /**
   * @param job the work of one run; a rejection is that run's outcome (returned to its requesters), not the next one's
   * @param onQueued called when a request arrives while a run is under way (`first`: it queued the next run; otherwise
   * it joined the one already queued)
   */
  constructor(
    private readonly job: () => Promise<void>,
    private readonly onQueued?: (first: boolean) => void,
  ) {}

  /** Runs the job now, or once after the current run; resolves (or rejects) with the run that covers this request. */
  request(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.queued) {
      this.onQueued?.(false);
      return this.queued;
    }
    if (!this.running) return this.launch();
    this.onQueued?.(true);
    const queued = this.running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        this.queued = undefined;
        return this.closed ? undefined : this.launch();
      });
    this.queued = queued;
    return queued;
  }

  /** True while a run is under way or queued. */
  get busy(): boolean {
    return this.running !== undefined || this.queued !== undefined;
  }

  /** No run starts any more (a queued one is skipped); resolves once the run under way, if any, has finished. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.running || this.queued) {
      await (this.queued ?? this.running)!.catch(() => undefined);
    }
  }

  private launch(): Promise<void> {
    const run: Promise<void> = Promise.resolve()
      .then(this.job)
      .finally(() => {
        if (this.running === run) this.running = undefined;
      });
    this.running = run;
    return run;
  }
}
