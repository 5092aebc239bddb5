// The redis-sentinel source: follows the master of a Redis Sentinel group and publishes MASTER_HOST, MASTER_PORT (and
// REPLICAS, comma-separated host:port, when `replicas` is on).
//
// Every configured sentinel gets its own link (a subscriber connection for events and a command connection for
// queries), each reconnecting on its own with backoff. Why all of them and not one at a time: after a failover only
// the leader knows at once; the other sentinels learn the new config from its hello messages, up to ~2 s later. A
// source listening to one sentinel would be late whenever that one was not the leader; listening to all, the first
// `+switch-master` wins, and a sentinel that goes away costs nothing while another is still linked.
//
// Which answer to believe: each master address comes with a config epoch (it only grows; a failover bumps it). A
// `+switch-master` whose old address is the one published is applied at once (the new config's epoch is at least the
// old one + 1), then confirmed by a query; any other answer (a link's query at (re)connect, a stale message) is applied
// only if its epoch is not older than the published one. Every (re)connect queries, so a message missed while a link
// was down cannot leave the published master stale for longer than one link is up. While no sentinel is linked, the
// last master stays published and `sidekick status` shows why as the sidekick's `sourceError`.
//
// Only sentinels are contacted, never the master: `passwordEnv` is the master's password for the app, checked to be
// set at start so a misconfigured deployment fails here, not at its first write.
import { Redis } from 'ioredis';
import { setTimeout as sleep } from 'node:timers/promises';
import { withDeadline } from '../common/async.js';
import { RestartBackoff } from '../common/backoff.js';
import type { RedisSentinelSourceConfig } from '../config/sources.js';
import { SidekickError } from '../errors.js';
import { childLogger, type Logger } from '../log/logger.js';
import type { SidekickContext } from '../sidekicks/context.js';
import type { SourceMain } from './index.js';
import { reportSourceError } from './report.js';

/** How often a linked sentinel is pinged: a sentinel that freezes (or a half-open TCP link) is dropped within this. */
const HEALTH_MS = 5000;

interface Addr {
  host: string;
  port: number;
  /** `host:port` as configured, for messages. */
  key: string;
}

interface Master {
  host: string;
  port: number;
  /** The sentinel config epoch of this address, or a lower bound of it (after a `+switch-master`). */
  epoch: number;
}

export function createSource(config: RedisSentinelSourceConfig): SourceMain {
  return (ctx) => new SentinelWatcher(config, ctx).run();
}

function parseAddr(hostPort: string): Addr {
  const i = hostPort.lastIndexOf(':');
  const host = hostPort.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  return { host, port: Number(hostPort.slice(i + 1)), key: hostPort };
}

const joinHostPort = (host: string, port: number | string): string =>
  host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;

function secretFromEnv(field: string, name: string | undefined): string | undefined {
  if (name === undefined) return undefined;
  const value = process.env[name];
  if (value === undefined) {
    throw new SidekickError('SK_ERR_CONFIG_INVALID', `source.${field}: the environment variable ${name} is not set`, {
      field: `source.${field}`,
    });
  }
  return value;
}

/** A flat `[k1, v1, k2, v2, …]` reply (SENTINEL MASTER, each entry of SENTINEL REPLICAS) as an object. */
function fields(reply: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (!Array.isArray(reply)) return out;
  for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = String(reply[i + 1]);
  return out;
}

class SentinelWatcher {
  private readonly addrs: Addr[];
  private readonly log: Logger;
  /** Ends every link: the sidekick's stop, or a failed start. */
  private readonly stop = new AbortController();
  /** Command connections of the links that are up, by sentinel. */
  private readonly linked = new Map<string, Redis>();
  /** Why each sentinel's first attempt failed (for the start error); a sentinel that linked once is removed. */
  private readonly firstFailures = new Map<string, string>();
  /** Why each sentinel's last attempt failed, for `sourceError` in status while none is linked. */
  private readonly lastFailures = new Map<string, string>();
  private readonly refreshing = new Map<string, { again: boolean }>();
  private master: Master | undefined;
  private replicas: string[] = [];
  private sentinelPassword: string | undefined;
  private onFirstPublish: (() => void) | undefined;
  private onAllFailed: ((err: Error) => void) | undefined;

  constructor(
    private readonly config: RedisSentinelSourceConfig,
    private readonly ctx: SidekickContext,
  ) {
    this.addrs = config.sentinels.map(parseAddr);
    this.log = childLogger({ component: 'source', source: 'redis-sentinel', app: ctx.app, sidekick: ctx.name });
  }

  async run(): Promise<void> {
    secretFromEnv('passwordEnv', this.config.passwordEnv);
    this.sentinelPassword = secretFromEnv('sentinelPasswordEnv', this.config.sentinelPasswordEnv);
    const onStop = (): void => this.stop.abort();
    this.ctx.signal.addEventListener('abort', onStop, { once: true });
    const started = new Promise<void>((resolve, reject) => {
      this.onFirstPublish = resolve;
      this.onAllFailed = reject;
    });
    const links = this.addrs.map((a) => this.linkLoop(a));
    try {
      if (this.ctx.signal.aborted) return;
      await Promise.race([started, new Promise<void>((r) => this.stop.signal.addEventListener('abort', () => r()))]);
      if (!this.stop.signal.aborted) {
        await new Promise<void>((r) => this.stop.signal.addEventListener('abort', () => r(), { once: true }));
      }
    } finally {
      this.stop.abort();
      this.ctx.signal.removeEventListener('abort', onStop);
      await Promise.allSettled(links);
    }
  }

  private client(addr: Addr, commandTimeout?: number): Redis {
    const client = new Redis({
      host: addr.host,
      port: addr.port,
      password: this.sentinelPassword,
      tls: this.config.tls ? {} : undefined,
      connectTimeout: this.config.connectTimeoutMs,
      commandTimeout,
      lazyConnect: true,
      // This source owns reconnection (with a query after each): the client must not retry or queue on its own.
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      enableReadyCheck: false,
      autoResubscribe: false,
      disableClientInfo: true,
      protocol: 2,
    });
    return client;
  }

  /** One sentinel's link: connect, subscribe, query, hold (pinging) until it drops; again after a backoff. */
  private async linkLoop(addr: Addr): Promise<void> {
    const signal = this.stop.signal;
    const backoff = new RestartBackoff({ baseMs: 100, maxMs: 2000 });
    let wasUp = false;
    while (!signal.aborted) {
      const sub = this.client(addr);
      const cmd = this.client(addr, this.config.connectTimeoutMs);
      // ioredis rejects a refused or reset connection with only "Connection is closed."; the cause (`connect
      // ECONNREFUSED 10.0.0.1:26379`, `read ECONNRESET`, a TLS or auth failure) comes first as an 'error' event. The
      // last one seen on this attempt is what the failure is reported as.
      let cause: string | undefined;
      const onError = (err: Error): void => void (cause = err.message);
      sub.on('error', onError);
      cmd.on('error', onError);
      try {
        const closed = new Promise<never>((_, reject) => {
          const lost = (): void => reject(new Error('connection closed'));
          sub.once('close', lost);
          cmd.once('close', lost);
        });
        closed.catch(() => undefined);
        const what = `connecting to sentinel ${addr.key}`;
        await withDeadline(Promise.all([sub.connect(), cmd.connect()]), this.config.connectTimeoutMs, what, { signal });
        sub.on('message', (channel: string, message: string) => this.onEvent(addr.key, channel, message));
        const channels = this.config.replicas
          ? ['+switch-master', '+slave', '+sdown', '-sdown', '+convert-to-slave', '+slave-reconf-done']
          : ['+switch-master'];
        await withDeadline(sub.subscribe(...channels), this.config.connectTimeoutMs, `subscribing on ${addr.key}`, {
          signal,
        });
        // Subscribed first, queried second: a switch between the two is seen either way (linked before the query,
        // so a message that arrives meanwhile can trigger its own query).
        this.linked.set(addr.key, cmd);
        await this.query(addr.key, cmd);
        this.firstFailures.delete(addr.key);
        reportSourceError(undefined);
        backoff.started();
        if (wasUp) this.log.info({ sentinel: addr.key }, 'sentinel link restored');
        wasUp = true;
        for (;;) {
          await Promise.race([closed, sleep(HEALTH_MS, undefined, { signal })]);
          await Promise.race([closed, cmd.ping()]);
        }
      } catch (err) {
        if (signal.aborted) break;
        const why = cause ?? (err as Error).message;
        this.lastFailures.set(addr.key, why);
        if (!this.master && !this.firstFailures.has(addr.key)) this.noteFirstFailure(addr.key, why);
        if (wasUp && this.linked.has(addr.key)) {
          this.log.warn({ sentinel: addr.key, err: why }, 'sentinel link lost; using the others, reconnecting');
        } else {
          this.log.debug({ sentinel: addr.key, err: why }, 'sentinel unreachable; retrying');
        }
      } finally {
        this.linked.delete(addr.key);
        sub.disconnect();
        cmd.disconnect();
      }
      if (this.master && this.linked.size === 0 && !signal.aborted) {
        const tried = this.addrs.map((a) => `${a.key} (${this.lastFailures.get(a.key) ?? 'connecting'})`).join(', ');
        reportSourceError(
          `no sentinel reachable, still serving master ${this.master.host}:${this.master.port}; tried ${tried}`,
        );
      }
      const { delayMs } = backoff.failed();
      await sleep(delayMs, undefined, { signal }).catch(() => undefined);
    }
  }

  private noteFirstFailure(key: string, why: string): void {
    this.firstFailures.set(key, why);
    if (this.firstFailures.size < this.addrs.length) return;
    const tried = this.addrs.map((a) => `${a.key} (${this.firstFailures.get(a.key)})`).join(', ');
    this.onAllFailed?.(
      new Error(`redis-sentinel source: no sentinel could tell the master of "${this.config.name}"; tried ${tried}`),
    );
  }

  /** Asks one sentinel for the master (and its epoch, and the replicas if wanted); applies it if not older. */
  private async query(key: string, cmd: Redis): Promise<void> {
    const name = this.config.name;
    const [addr, info, replicas] = await Promise.all([
      cmd.call('SENTINEL', 'get-master-addr-by-name', name) as Promise<[string, string] | null>,
      cmd.call('SENTINEL', 'master', name).catch(() => undefined),
      this.config.replicas ? cmd.call('SENTINEL', 'replicas', name) : undefined,
    ]);
    if (!addr) throw new Error(`it does not monitor a master named "${name}"`);
    const epoch = Number(fields(info)['config-epoch'] ?? 0);
    const master: Master = { host: addr[0], port: Number(addr[1]), epoch };
    if (this.master && epoch < this.master.epoch) {
      this.log.debug({ sentinel: key, epoch, published: this.master.epoch }, 'ignoring an older config');
      return;
    }
    let list = this.replicas;
    if (Array.isArray(replicas)) {
      list = replicas
        .map(fields)
        .filter((r) => r.ip && r.port && !/s_down|o_down|disconnected/.test(r.flags ?? ''))
        .map((r) => joinHostPort(r.ip!, r.port!));
    }
    this.apply(master, list);
  }

  /** Re-queries one linked sentinel; overlapping calls collapse into one more run. Failures: the link's ping sees them. */
  private refresh(key: string): void {
    const running = this.refreshing.get(key);
    if (running) {
      running.again = true;
      return;
    }
    const state = { again: false };
    this.refreshing.set(key, state);
    void (async () => {
      try {
        do {
          state.again = false;
          const cmd = this.linked.get(key);
          if (!cmd || this.stop.signal.aborted) break;
          await this.query(key, cmd).catch((err: Error) =>
            this.log.debug({ sentinel: key, err: err.message }, 'sentinel query failed'),
          );
        } while (state.again);
      } finally {
        this.refreshing.delete(key);
      }
    })();
  }

  private onEvent(key: string, channel: string, message: string): void {
    if (channel === '+switch-master') {
      const [name, oldHost, oldPort, newHost, newPort] = message.split(' ');
      if (name !== this.config.name || !newHost || !newPort) return;
      const cur = this.master;
      const fromCurrent = cur && cur.host === oldHost && String(cur.port) === oldPort;
      const toCurrent = cur && cur.host === newHost && String(cur.port) === newPort;
      if (fromCurrent) {
        const port = Number(newPort);
        const replicas = this.replicas.filter((r) => r !== joinHostPort(newHost, port));
        this.apply({ host: newHost, port, epoch: cur.epoch + 1 }, replicas);
      }
      // Confirm (the epoch, the replicas) or, for a message that does not follow what is published, decide by epoch.
      if (!toCurrent || this.config.replicas) this.refresh(key);
      return;
    }
    // Replica events: `<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>`.
    if (message.startsWith('slave ') && message.includes(` @ ${this.config.name} `)) this.refresh(key);
  }

  private apply(master: Master, replicas: string[]): void {
    const previous = this.master;
    const moved = !previous || previous.host !== master.host || previous.port !== master.port;
    this.master = master;
    this.replicas = [...replicas].sort();
    const vars: Record<string, string> = { MASTER_HOST: master.host, MASTER_PORT: String(master.port) };
    if (this.config.replicas) vars.REPLICAS = this.replicas.join(',');
    // Publish first, then log: the workers must move to the new master without waiting for a log line.
    this.ctx.setVars(vars);
    if (moved && previous) {
      this.log.info(
        { from: joinHostPort(previous.host, previous.port), to: joinHostPort(master.host, master.port) },
        'redis master switched',
      );
    }
    this.onFirstPublish?.();
    this.onFirstPublish = undefined;
    this.onAllFailed = undefined;
  }
}
