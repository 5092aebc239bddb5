// Middleware for Node HTTP workers (plain `http` handlers, Express, Connect, …): one agent record per request.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { hostname } from 'node:os';
import type { AgentClient } from './client.js';

type RequestLike = IncomingMessage & {
  route?: { path?: unknown };
  baseUrl?: string;
  originalUrl?: string;
};

export interface AgentMiddlewareOptions {
  /** Record type; default 'node_request'. */
  type?: string;
  /** Route to report; default Express's matched route (baseUrl + route.path) or the URL path without the query. */
  route?: (req: IncomingMessage, res: ServerResponse) => string | undefined;
  /** Extra fields merged into each record (built-in fields win). */
  fields?: (req: IncomingMessage, res: ServerResponse) => Record<string, unknown> | undefined;
}

function defaultRoute(req: RequestLike): string {
  const routePath = req.route?.path;
  if (typeof routePath === 'string') return (req.baseUrl ?? '') + routePath;
  const url = req.originalUrl ?? req.url ?? '';
  const cut = url.search(/[?#]/);
  return cut === -1 ? url : url.slice(0, cut);
}

/**
 * `app.use(agentMiddleware(client))`, or call it first in a plain handler: `mw(req, res)`. Sends one record per
 * request when the response finishes (or the connection closes first: `aborted: true`):
 * `{ ts, type, route, method, status, duration_ms, host, pid, [aborted], [traceparent, tracestate], ...fields }`
 * (the W3C trace context headers when the request had them). Never throws.
 */
export function agentMiddleware(
  client: Pick<AgentClient, 'send'>,
  opts: AgentMiddlewareOptions = {},
): (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void {
  const type = opts.type ?? 'node_request';
  const host = hostname();
  const pid = process.pid;
  return function sidekickAgentMiddleware(req, res, next) {
    const ts = Date.now();
    const start = performance.now();
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      try {
        const extra = opts.fields?.(req, res);
        const record: Record<string, unknown> = {
          ...extra,
          ts,
          type,
          route: opts.route?.(req, res) ?? defaultRoute(req as RequestLike),
          method: req.method ?? null,
          status: res.statusCode,
          duration_ms: Math.round((performance.now() - start) * 1000) / 1000,
          host,
          pid,
        };
        if (!res.writableFinished) record.aborted = true;
        // W3C trace context of the incoming request: the otlp exporter's span for this record joins that trace
        const { traceparent, tracestate } = req.headers;
        if (typeof traceparent === 'string') record.traceparent = traceparent;
        if (typeof tracestate === 'string') record.tracestate = tracestate;
        client.send(record);
      } catch {
        // telemetry must never break a response
      }
    };
    res.once('finish', finish);
    res.once('close', finish);
    next?.();
  };
}
