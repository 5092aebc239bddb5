// The etcd source: the keys under `prefix` as vars (the key without the prefix → the value as UTF-8), through etcd's
// v3 JSON gateway (POST /v3/kv/range, /v3/watch; keys and values base64), so no client library is loaded.
//
// Revision-consistent: a range read at revision R is published, then a watch from R + 1 applies each watch
// response's events (PUT, DELETE) and publishes one snapshot per response, so the events of one transaction (one
// revision, never split across responses) arrive together. A compacted watch re-reads at once; a lost stream (it
// ends, the endpoint stops answering, or a status probe after 10 s of silence fails) re-reads and re-watches on the
// next endpoint after a backoff (200 ms doubling to 5 s), keeping the last snapshot meanwhile. With usernameEnv and
// passwordEnv, each session starts with /v3/auth/authenticate and sends the token.
// Before the first publish, a session that fails on every endpoint throws (a boot failure, retried by the runtime).
import { sleep } from '../common/async.js';
import type { EtcdSourceConfig } from '../config/sources.js';
import { RateLimitedLog, type Logger } from '../log/logger.js';
import type { SidekickContext } from '../sidekicks/context.js';
import type { SourceMain } from './index.js';
import { reportSourceError } from './report.js';
import {
  Backoff,
  envSecret,
  Exchange,
  explain,
  readLines,
  readText,
  safeUrl,
  sourceLogger,
  withExchange,
} from './net.js';

const REQUEST_TIMEOUT_MS = 5000;
/** A watch silent this long has its endpoint probed (/v3/maintenance/status); a failed probe ends the session. */
const PROBE_AFTER_MS = 10_000;

interface Kv {
  key?: string;
  value?: string;
}
interface Header {
  revision?: string;
}
interface RangeResponse {
  header?: Header;
  kvs?: Kv[];
}
interface WatchResult {
  header?: Header;
  created?: boolean;
  canceled?: boolean;
  compact_revision?: string;
  cancel_reason?: string;
  events?: { type?: string; kv?: Kv }[];
}
interface Credentials {
  name: string;
  password: string;
}

export function createSource(config: EtcdSourceConfig): SourceMain {
  return (ctx) => new EtcdFollower(config, ctx).run();
}

/** The smallest key after every key that starts with `prefix` (etcd's clientv3.GetPrefixRangeEnd). */
export function prefixRangeEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // all 0xff: every key from prefix on
}

const b64 = (b: Buffer): string => b.toString('base64');

class EtcdFollower {
  private readonly prefix: Buffer;
  private readonly rangeEnd: Buffer;
  private readonly what: string;
  private readonly log: Logger;
  private readonly warn: RateLimitedLog;
  private readonly backoff = new Backoff(200, 5000);
  private vars = new Map<string, string>();
  private published = false;
  private endpoint = 0;

  constructor(
    private readonly config: EtcdSourceConfig,
    private readonly ctx: SidekickContext,
  ) {
    this.prefix = Buffer.from(config.prefix, 'utf8');
    this.rangeEnd = prefixRangeEnd(this.prefix);
    this.what = `etcd source (prefix "${config.prefix}")`;
    this.log = sourceLogger(ctx, 'etcd');
    this.warn = new RateLimitedLog(this.log);
  }

  async run(): Promise<void> {
    const creds = this.credentials();
    const { signal } = this.ctx;
    const { endpoints } = this.config;
    const bootErrors: string[] = [];
    while (!signal.aborted) {
      const endpoint = endpoints[this.endpoint]!;
      try {
        await this.session(endpoint, creds); // returns when its watch was compacted: re-read at once
      } catch (err) {
        if (signal.aborted) return;
        const message = `${safeUrl(endpoint)}: ${explain(err)}`;
        this.endpoint = (this.endpoint + 1) % endpoints.length;
        if (!this.published) {
          bootErrors.push(message);
          if (bootErrors.length >= endpoints.length) {
            throw new Error(`${this.what}: ${bootErrors.join('; ')}`, { cause: err });
          }
          continue;
        }
        const delay = this.backoff.next();
        this.warn.warn(
          { err: message, retryInMs: delay },
          'etcd source: read or watch failed; keeping the last snapshot',
        );
        reportSourceError(`${this.what}: ${message}`);
        await sleep(delay, signal);
      }
    }
  }

  private credentials(): Credentials | undefined {
    const { usernameEnv, passwordEnv } = this.config;
    if (!usernameEnv && !passwordEnv) return undefined;
    if (!usernameEnv || !passwordEnv) throw new Error(`${this.what}: usernameEnv and passwordEnv go together`);
    return {
      name: envSecret(usernameEnv, `${this.what}: usernameEnv`),
      password: envSecret(passwordEnv, `${this.what}: passwordEnv`),
    };
  }

  /** One read + watch on one endpoint. Returns when the watch was compacted; throws when the stream is lost. */
  private async session(endpoint: string, creds: Credentials | undefined): Promise<void> {
    const token = creds
      ? (await this.call<{ token?: string }>(endpoint, '/v3/auth/authenticate', creds, undefined)).token
      : undefined;
    const range = await this.call<RangeResponse>(
      endpoint,
      '/v3/kv/range',
      { key: b64(this.prefix), range_end: b64(this.rangeEnd) },
      token,
    );
    this.vars = new Map();
    for (const kv of range.kvs ?? []) this.vars.set(this.name(kv), this.value(kv));
    this.publish();
    const revision = BigInt(range.header?.revision ?? '0');
    await this.watch(endpoint, token, revision + 1n);
  }

  private async watch(endpoint: string, token: string | undefined, from: bigint): Promise<void> {
    const ex = new Exchange(this.ctx.signal);
    ex.arm(REQUEST_TIMEOUT_MS, () => new Error(`/v3/watch: no answer within ${REQUEST_TIMEOUT_MS} ms`));
    let lastChunk = Date.now();
    let probing = false;
    const probe = setInterval(() => {
      if (probing || Date.now() - lastChunk < PROBE_AFTER_MS) return;
      probing = true;
      this.call(endpoint, '/v3/maintenance/status', {}, token).then(
        () => (probing = false),
        (err: unknown) => ex.controller.abort(new Error(`the watch went silent and ${explain(err)}`)),
      );
    }, PROBE_AFTER_MS / 2);
    try {
      const body = {
        create_request: { key: b64(this.prefix), range_end: b64(this.rangeEnd), start_revision: `${from}` },
      };
      const res = await fetch(new URL('/v3/watch', endpoint), this.init(body, token, ex.signal));
      if (!res.ok) throw new Error(`/v3/watch: HTTP ${res.status}: ${(await readText(res, 4096)).slice(0, 300)}`);
      ex.disarm(); // the stream's life is unbounded; the probe watches it
      for await (const line of readLines(res.body!, () => (lastChunk = Date.now()))) {
        if (line.trim() === '') continue;
        const msg = JSON.parse(line) as { result?: WatchResult; error?: { message?: string } | string };
        if (msg.error) throw new Error(`/v3/watch: ${typeof msg.error === 'string' ? msg.error : msg.error.message}`);
        const result = msg.result;
        if (!result) continue;
        if (result.canceled) {
          if (result.compact_revision && result.compact_revision !== '0') {
            this.log.info({ compactRevision: result.compact_revision }, 'etcd watch compacted; reading again');
            return;
          }
          throw new Error(`the watch was canceled: ${result.cancel_reason ?? 'no reason given'}`);
        }
        if (result.created) {
          this.backoff.reset();
          reportSourceError(undefined);
        }
        if (!result.events?.length) continue;
        for (const event of result.events) {
          const kv = event.kv ?? {};
          if (event.type === 'DELETE') this.vars.delete(this.name(kv));
          else this.vars.set(this.name(kv), this.value(kv)); // PUT is the enum's zero value: JSON omits it
        }
        this.publish();
      }
      throw new Error('the watch stream ended');
    } catch (err) {
      throw ex.signal.aborted && ex.signal.reason instanceof Error ? ex.signal.reason : err;
    } finally {
      clearInterval(probe);
      ex.close();
    }
  }

  /** A unary JSON call; an answer other than 200, or with an `error` field, throws with etcd's message. */
  private call<T>(endpoint: string, path: string, body: object, token: string | undefined): Promise<T> {
    return withExchange(this.ctx.signal, REQUEST_TIMEOUT_MS, path, async (ex) => {
      const res = await fetch(new URL(path, endpoint), this.init(body, token, ex.signal));
      const text = await readText(res);
      let parsed: { error?: unknown; message?: string } & T;
      try {
        parsed = JSON.parse(text) as typeof parsed;
      } catch {
        throw new Error(`${path}: HTTP ${res.status}, not JSON: ${text.slice(0, 200)}`);
      }
      if (!res.ok || parsed.error !== undefined) {
        const why = parsed.message ?? (typeof parsed.error === 'string' ? parsed.error : JSON.stringify(parsed.error));
        throw new Error(`${path}: ${why} (HTTP ${res.status})`);
      }
      return parsed;
    });
  }

  private init(body: object, token: string | undefined, signal: AbortSignal): RequestInit {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (token) headers.authorization = token;
    return { method: 'POST', body: JSON.stringify(body), headers, signal };
  }

  private name(kv: Kv): string {
    return Buffer.from(kv.key ?? '', 'base64')
      .subarray(this.prefix.length)
      .toString('utf8');
  }

  private value(kv: Kv): string {
    return Buffer.from(kv.value ?? '', 'base64').toString('utf8');
  }

  /** Publishes the current map; a snapshot setVars refuses (too large) throws before the first publish, else logged. */
  private publish(): void {
    try {
      this.ctx.setVars(Object.fromEntries(this.vars));
      this.published = true;
    } catch (err) {
      if (!this.published) throw err;
      this.warn.warn({ err: explain(err) }, 'etcd source: snapshot refused; keeping the last one');
    }
  }
}
