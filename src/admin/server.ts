// The local admin socket: a tiny HTTP server on a Unix socket that `sidekick status` and `sidekick vars` query.
// Components register JSON providers under a path; nothing here knows about sidekicks or the agent.
import { listenHttp, type HttpListener } from '../common/http-listen.js';
import { mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { childLogger } from '../log/logger.js';
import { probeUnixSocket } from './probe.js';
import { SidekickError, errorToData, type ErrorCode } from '../errors.js';
import { answerHealth, type HealthProbes } from '../common/health.js';

/** HTTP status for the errors a handler is expected to throw; any other error is a 500. */
const STATUS_OF: Partial<Record<ErrorCode, number>> = { SK_ERR_NOT_READY: 404, SK_ERR_INVALID_NAME: 400 };

export type AdminHandler = (params: string[]) => unknown | Promise<unknown>;

export class AdminServer {
  private readonly routes = new Map<string, AdminHandler>();
  private listener: HttpListener | undefined;
  private readonly log = childLogger({ component: 'admin' });

  /** `health`: answers GET /healthz and /readyz here too (`curl --unix-socket`, `sidekick health`). */
  constructor(
    readonly socketPath: string,
    private readonly health?: HealthProbes,
  ) {}

  /** `route('status', fn)` serves GET /status; `route('vars', fn)` also serves GET /vars/a/b with params ['a','b']. */
  route(name: string, handler: AdminHandler): void {
    this.routes.set(name, handler);
  }

  async start(): Promise<void> {
    mkdirSync(dirname(this.socketPath), { recursive: true });
    if ((await probeUnixSocket(this.socketPath)) === 'live') {
      throw new SidekickError(
        'SK_ERR_SOCKET_IN_USE',
        `admin socket ${this.socketPath} is in use by a running instance`,
        {
          socket: this.socketPath,
        },
      );
    }
    try {
      unlinkSync(this.socketPath);
    } catch {
      // absent: nothing to clean
    }
    this.listener = await listenHttp({ kind: 'unix', path: this.socketPath }, (req, res) => {
      if (answerHealth(req, res, this.health)) return;
      const reply = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      };
      const parts = (req.url ?? '/').split('?')[0]!.split('/').filter(Boolean).map(decodeURIComponent);
      const handler = this.routes.get(parts[0] ?? '');
      if (!handler) {
        const err = new SidekickError('SK_ERR_ADMIN_ROUTE', `no admin route ${JSON.stringify(req.url ?? '/')}`, {
          routes: [...this.routes.keys()],
        });
        reply(404, { error: err.toJSON() });
        return;
      }
      Promise.resolve()
        .then(() => handler(parts.slice(1)))
        .then(
          (body) => reply(200, body),
          (err: unknown) => {
            if (!(err instanceof SidekickError)) {
              this.log.error({ err: errorToData(err), url: req.url }, 'admin handler failed');
              const internal = new SidekickError(
                'SK_ERR_INTERNAL',
                `admin ${req.url ?? '/'} failed: ${errorToData(err).message}`,
              );
              reply(500, { error: internal.toJSON() });
              return;
            }
            reply(STATUS_OF[err.code] ?? 500, { error: err.toJSON() });
          },
        );
    });
    this.log.debug({ socket: this.socketPath }, 'admin socket listening');
  }

  async stop(): Promise<void> {
    const listener = this.listener;
    this.listener = undefined;
    await listener?.close();
  }
}
