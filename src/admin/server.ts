// The local admin socket: a tiny HTTP server on a Unix socket that `sidekick status` and `sidekick vars` query.
// Components register JSON providers under a path; nothing here knows about sidekicks or the agent.
import { createServer, type Server } from 'node:http';
import { mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { childLogger } from '../log/logger.js';
import { probeUnixSocket } from './probe.js';
import { SidekickError } from '../errors.js';

export type AdminHandler = (params: string[]) => unknown | Promise<unknown>;

export class AdminServer {
  private readonly routes = new Map<string, AdminHandler>();
  private server: Server | undefined;
  private readonly log = childLogger({ component: 'admin' });

  constructor(readonly socketPath: string) {}

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
    const server = createServer((req, res) => {
      const parts = (req.url ?? '/').split('?')[0]!.split('/').filter(Boolean).map(decodeURIComponent);
      const handler = this.routes.get(parts[0] ?? '');
      if (!handler) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'unknown route' }));
        return;
      }
      Promise.resolve()
        .then(() => handler(parts.slice(1)))
        .then(
          (body) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body)),
          (err: unknown) => {
            const e = err instanceof SidekickError ? err.toJSON() : { code: 'SK_ERR', message: String(err) };
            res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: e }));
          },
        );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.log.debug({ socket: this.socketPath }, 'admin socket listening');
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
