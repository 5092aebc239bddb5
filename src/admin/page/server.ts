// The live status page (`admin.http`): one self-contained HTML page and a Server-Sent Events stream that pushes it
// the picture. The server samples `status()` once a second and sends a `status` event only when the picture changed,
// sends each lifecycle event as it happens, and the whole picture (with recent rate history and events) on connect.
// No polling from the browser, no build step, nothing fetched from elsewhere: it works offline.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { withDeadline } from '../../common/async.js';
import { listenHttp, type HttpListener } from '../../common/http-listen.js';
import type { LifecycleEvent, LifecycleLog } from '../../common/lifecycle.js';
import type { ListenAddress } from '../../config/schema.js';
import { SidekickError, describeError } from '../../errors.js';
import { RateLimitedLog, childLogger } from '../../log/logger.js';
import { probeUnixSocket } from '../probe.js';
import { PageAuth } from './auth.js';
import { PAGE_CSP, PAGE_HTML } from './html.js';
import { RateHistory, ViewBuilder, type CurrentVars } from './view.js';

/** Concurrent event streams; one more gets 503 (each holds a socket and a share of every push). */
export const MAX_PAGE_CLIENTS = 16;
const SAMPLE_MS = 1000;
/** A status() that takes longer (the agent's worker stuck, say) is given up; the next tick tries again. */
const SAMPLE_DEADLINE_MS = 5000;
/** A comment line this often keeps idle streams open through proxies and lets a dead client be noticed. */
const KEEPALIVE_MS = 15_000;
/** A client that lets this much pile up unread is cut off (its browser reconnects and gets the full picture). */
const MAX_UNSENT_BYTES = 4 * 1024 * 1024;

export interface StatusPageOptions {
  listen: ListenAddress;
  token?: string | undefined;
  /**
   * `admin.showValues` as the running config says now: read for every picture, so a reload that turns it off masks
   * the page at once (the same rule as `sidekick vars`).
   */
  showValues: () => boolean;
  /** The whole instance's status (ServeRuntime.status()). */
  status: () => Promise<unknown>;
  lifecycle: LifecycleLog;
  /** A sidekick's latest snapshot (name 'agent': the agent's vars). */
  vars: CurrentVars;
  maxClients?: number;
}

export class StatusPageServer {
  private listener: HttpListener | undefined;
  private readonly auth: PageAuth;
  private readonly views: ViewBuilder;
  private readonly history = new RateHistory();
  /** Streams that get every push. */
  private readonly clients = new Set<ServerResponse>();
  /** Streams waiting for their first picture (they count against the cap). */
  private readonly connecting = new Set<ServerResponse>();
  private readonly log = childLogger({ component: 'status-page' });
  private readonly sampleFailures = new RateLimitedLog(this.log, 1, 60_000);
  private timer: NodeJS.Timeout | undefined;
  private sampling: Promise<void> | undefined;
  /**
   * The last picture sent: `{"at":…,"view":…}` and the view's JSON alone (what "changed" compares), and whether it
   * holds values.
   */
  private latest: { at: number; viewJson: string; showValues: boolean } | undefined;
  private lastKeepalive = 0;
  private stopped = false;
  private readonly onLifecycle = (e: LifecycleEvent): void => this.broadcast('lifecycle', JSON.stringify(e));

  constructor(private readonly opts: StatusPageOptions) {
    this.auth = new PageAuth(opts.token);
    this.views = new ViewBuilder(opts.showValues, opts.vars);
  }

  /** The bound TCP port (the real one when the config said port 0). */
  port(): number | undefined {
    return this.listener?.port();
  }

  get clientCount(): number {
    return this.clients.size;
  }

  async start(): Promise<void> {
    const address = this.opts.listen;
    if (address.kind === 'unix') await clearStaleSocket(address.path);
    try {
      this.listener = await listenHttp(address, (req, res) => this.handle(req, res));
    } catch (err) {
      throw new SidekickError('SK_ERR_LISTEN', `admin.http.listen ${describeAddress(address)}: ${describeError(err)}`, {
        field: 'admin.http.listen',
      });
    }
    this.opts.lifecycle.on('event', this.onLifecycle);
    this.timer = setInterval(() => void this.sample(), SAMPLE_MS);
    this.timer.unref();
    void this.sample();
    const where = address.kind === 'unix' ? address.path : `http://${address.host}:${this.port()}/`;
    this.log.info({ listen: where, token: this.auth.required }, 'status page listening');
  }

  /** Ends every event stream and closes the listener. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.opts.lifecycle.off('event', this.onLifecycle);
    for (const res of [...this.clients, ...this.connecting]) res.end();
    this.clients.clear();
    this.connecting.clear();
    await this.listener?.close();
  }

  /** One sample of status(): pushed to every stream when the picture changed. Never two at once. */
  private sample(): Promise<void> {
    this.sampling ??= this.doSample().finally(() => (this.sampling = undefined));
    return this.sampling;
  }

  private async doSample(): Promise<void> {
    let raw: unknown;
    try {
      raw = await withDeadline(this.opts.status(), SAMPLE_DEADLINE_MS, 'status page sample');
    } catch (err) {
      if (!this.stopped) this.sampleFailures.warn({ err: describeError(err) }, 'status page: no status this second');
      return;
    }
    if (this.stopped) return;
    const at = Date.now();
    this.history.add(raw, at);
    const view = this.views.build(raw, at);
    const viewJson = JSON.stringify(view);
    const changed = viewJson !== this.latest?.viewJson;
    this.latest = { at, viewJson, showValues: view.showValues };
    if (changed) this.broadcast('status', envelope(at, viewJson));
    else if (at - this.lastKeepalive >= KEEPALIVE_MS) {
      this.lastKeepalive = at;
      for (const res of this.clients) this.write(res, ': keepalive\n\n');
    }
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    if (req.method !== 'GET' && req.method !== 'HEAD') return plain(res, 405, 'method not allowed', { allow: 'GET' });
    if (!this.hostAllowed(req)) return plain(res, 403, 'unexpected Host header');
    const url = new URL(req.url ?? '/', 'http://status.invalid');
    if (url.pathname === '/' && url.searchParams.has('token')) {
      if (!this.auth.acceptsQueryToken(url.searchParams.get('token')!)) return unauthorized(res);
      // The cookie carries the session from now on; the redirect takes the token out of the address bar.
      res.writeHead(303, { location: '/', 'set-cookie': this.auth.cookieHeader() }).end();
      return;
    }
    if (!this.auth.allows(req)) return unauthorized(res);
    switch (url.pathname) {
      case '/':
        res.writeHead(200, {
          'content-type': 'text/html; charset=utf-8',
          'content-security-policy': PAGE_CSP,
        });
        res.end(req.method === 'HEAD' ? undefined : PAGE_HTML);
        return;
      case '/events':
        void this.openStream(req, res);
        return;
      case '/status.json':
        void this.currentJson().then(
          (body) => res.writeHead(200, { 'content-type': 'application/json' }).end(body),
          () => plain(res, 503, 'no status yet'),
        );
        return;
      default:
        plain(res, 404, 'not found');
    }
  }

  /**
   * On a loopback address, only loopback Host names: a page on another site that rebinds its DNS name to 127.0.0.1
   * must not be able to read this one.
   */
  private hostAllowed(req: IncomingMessage): boolean {
    const address = this.opts.listen;
    if (address.kind !== 'tcp' || !isLoopback(address.host)) return true;
    const host = (req.headers.host ?? '').replace(/:\d+$/, '').toLowerCase();
    return host === 'localhost' || host === '[::1]' || /^127(\.\d{1,3}){3}$/.test(host);
  }

  private async currentJson(): Promise<string> {
    await this.freshEnough();
    if (!this.latest) throw new Error('no status yet');
    return envelope(this.latest.at, this.latest.viewJson);
  }

  /**
   * Samples when there is no picture yet, or when the last one was built under another `admin.showValues` than the
   * config says now (a reload changed it since): a request never gets values the config no longer allows. Twice at
   * most: a sample already under way may have been built before the change.
   */
  private async freshEnough(): Promise<void> {
    for (let i = 0; i < 2; i++) {
      if (this.latest && this.latest.showValues === this.opts.showValues()) return;
      await this.sample();
      if (!this.latest) return; // no status this second: the caller says so
    }
  }

  private async openStream(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.clients.size + this.connecting.size >= (this.opts.maxClients ?? MAX_PAGE_CLIENTS)) {
      plain(res, 503, 'too many status page clients', { 'retry-after': '10' });
      return;
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    if (req.method === 'HEAD') return void res.end();
    const drop = (): void => {
      this.connecting.delete(res);
      this.clients.delete(res);
    };
    req.once('close', drop);
    res.once('close', drop);
    res.write('retry: 2000\n\n');
    // The full picture first (the view, the last minutes of rates, the recent lifecycle events), and only then the
    // pushes: a stream joins the broadcast in the same turn as its hello is written, so it misses nothing between.
    this.connecting.add(res);
    await this.freshEnough();
    if (!this.connecting.delete(res)) return; // closed meanwhile, or stop() ended it
    const view = this.latest ? this.latest.viewJson : 'null';
    const at = this.latest?.at ?? Date.now();
    const history = JSON.stringify(this.history.all());
    const events = JSON.stringify(this.opts.lifecycle.recent());
    this.write(res, frame('hello', `{"at":${at},"view":${view},"history":${history},"events":${events}}`));
    this.clients.add(res);
  }

  private broadcast(event: string, data: string): void {
    const text = frame(event, data);
    for (const res of this.clients) this.write(res, text);
  }

  private write(res: ServerResponse, text: string): void {
    if (res.writableLength > MAX_UNSENT_BYTES) {
      this.log.warn('status page client is not reading its event stream; disconnecting it');
      this.clients.delete(res);
      res.destroy();
      return;
    }
    res.write(text);
  }
}

const SECURITY_HEADERS: Record<string, string> = {
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

function envelope(at: number, viewJson: string): string {
  return `{"at":${at},"view":${viewJson}}`;
}

/** One SSE message; JSON has no raw newlines, so `data` is one line. */
function frame(event: string, data: string): string {
  return `event: ${event}\ndata: ${data}\n\n`;
}

function plain(res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...headers }).end(`${text}\n`);
}

function unauthorized(res: ServerResponse): void {
  plain(res, 401, 'a valid token is required: open /?token=<admin.http.token>, or send Authorization: Bearer', {
    'www-authenticate': 'Bearer realm="sidekick status"',
  });
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

function describeAddress(a: ListenAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `${a.host}:${a.port}`;
}

/** A socket file left by a previous run is replaced; one a live process serves is not stolen. */
async function clearStaleSocket(path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  const state = await probeUnixSocket(path);
  if (state === 'live')
    throw new SidekickError('SK_ERR_LISTEN', `admin.http.listen unix:${path} is in use by a live process`, {
      field: 'admin.http.listen',
    });
  if (state === 'stale') unlinkSync(path);
}
