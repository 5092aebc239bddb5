// GET /healthz (liveness) and GET /readyz (readiness), answered the same way on every listener that carries them: the
// admin socket, the runtime's `metrics.listen` and the agent's `agent.metrics.listen` (README "Health endpoints").
// What "ready" means is the owner's (serve-runtime.ts, agent/supervisor/readiness.ts); this file only answers: one
// line of JSON, 200 or 503, `cache-control: no-store`, HEAD with the same status and no body.
import type { IncomingMessage, ServerResponse } from 'node:http';

/** One probe's answer. `reason` names the first unmet condition; `warning` a degraded state that is still ready. */
export interface HealthVerdict {
  ok: boolean;
  reason?: string | undefined;
  warning?: string | undefined;
}

/** What a listener asks its owner. `ready` may be async, and must not throw for a state it can describe. */
export interface HealthProbes {
  ready(): HealthVerdict | Promise<HealthVerdict>;
}

/** The body: `{"status":"ok"}`, `{"status":"ready"}` (+ `warning`), `{"status":"not_ready","reason":"…"}`. */
export function healthBody(kind: 'live' | 'ready', v: HealthVerdict): Record<string, string> {
  const status = kind === 'live' ? 'ok' : v.ok ? 'ready' : 'not_ready';
  const body: Record<string, string> = { status };
  if (!v.ok && v.reason) body.reason = oneLine(v.reason);
  if (v.ok && v.warning) body.warning = oneLine(v.warning);
  return body;
}

/** A reason is one short line: an error message with a stack or a multi-line cause stays readable in a probe log. */
function oneLine(s: string): string {
  const flat = s.replace(/\s+/g, ' ').trim();
  return flat.length > 300 ? `${flat.slice(0, 297)}...` : flat;
}

/**
 * Answers `req` if it asks for /healthz or /readyz (true), else leaves it to the caller (false). Liveness is 200 as
 * long as this process's event loop runs this code: the request being answered is the proof; a child the process
 * restarts itself (an HTTP worker, a sidekick host, the agent's worker) never fails it.
 */
export function answerHealth(req: IncomingMessage, res: ServerResponse, probes: HealthProbes | undefined): boolean {
  const path = (req.url ?? '/').split('?')[0];
  if (!probes || (path !== '/healthz' && path !== '/readyz')) return false;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(`${JSON.stringify({ status: 'error', reason: `method ${req.method} not allowed` })}\n`);
    return true;
  }
  const send = (kind: 'live' | 'ready', v: HealthVerdict): void => {
    const text = `${JSON.stringify(healthBody(kind, v))}\n`;
    res.writeHead(kind === 'live' || v.ok ? 200 : 503, {
      'content-type': 'application/json',
      'cache-control': 'no-store',
      'content-length': Buffer.byteLength(text),
    });
    res.end(req.method === 'HEAD' ? undefined : text);
  };
  if (path === '/healthz') {
    send('live', { ok: true });
    return true;
  }
  Promise.resolve()
    .then(() => probes.ready())
    .then(
      (v) => send('ready', v),
      (err: unknown) => send('ready', { ok: false, reason: `readiness check failed: ${String(err)}` }),
    );
  return true;
}
