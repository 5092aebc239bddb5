// Entry point of an HTTP worker process under `sidekick serve` (a node:cluster worker).
//
// Why processes, not threads: Node 20 has no `reusePort` and worker threads cannot share a listening port, while
// node:cluster shares one listening socket across processes (the supervisor accepts and hands each connection to a
// worker round-robin). Sidekicks still run as threads, in the supervisor; their snapshots reach this process over
// IPC and are kept in a local map, so readVars is a plain in-process lookup.
//
// Order matters: install the IPC transport, receive every existing snapshot, load the app, then listen — so a
// worker that accepts connections can already serve readVars.
import cluster from 'node:cluster';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { Server as NetServer, type Socket } from 'node:net';
import { pathToFileURL } from 'node:url';
import { installServeTransport, taskTimeouts } from '../sidekicks/api.js';
import { childLogger, logCounts } from '../log/logger.js';
import { responseOfSocket } from '../common/node-internals.js';
import { describeError } from '../errors.js';
import { isSidekickMessage, type PrimaryToWorker, type WorkerToPrimary } from '../sidekicks/messages.js';

// The supervisor answers the transport's hello with this worker's settings and every existing snapshot.
const settings = await installServeTransport().ready;
const log = childLogger({ component: 'http', app: settings.app });

const mod = (await import(pathToFileURL(settings.handler).href)) as { default?: unknown };
const listener = (mod.default ?? undefined) as ((req: IncomingMessage, res: ServerResponse) => unknown) | undefined;
if (typeof listener !== 'function') {
  throw new Error(`handler ${settings.handler} has no default export request listener (got ${typeof mod.default})`);
}

let draining = false;
let handlerErrors = 0;
let handlerTimeouts = 0;

function handlerFailed(req: IncomingMessage, res: ServerResponse, err: unknown): void {
  handlerErrors++;
  log.error({ err: describeError(err), url: req.url }, 'request handler threw');
  if (res.headersSent) {
    res.destroy(); // half a response cannot be completed honestly; the client sees the connection end
    return;
  }
  res.writeHead(500, { 'content-type': 'text/plain', connection: 'close' });
  res.end('internal error\n');
}

// Responses whose handler has not sent headers yet, with their start time. A sweep once a second answers the ones
// past handlerTimeoutMs: one Map entry per request instead of a timer per request on the hot path.
const pending = new Map<ServerResponse, { started: number; url: string | undefined }>();
if (settings.handlerTimeoutMs > 0) {
  setInterval(() => {
    const cutoff = Date.now() - settings.handlerTimeoutMs;
    for (const [res, { started, url }] of pending) {
      if (res.headersSent || res.writableEnded) pending.delete(res);
      else if (started <= cutoff) {
        pending.delete(res);
        handlerTimeouts++;
        log.warn({ url, handlerTimeoutMs: settings.handlerTimeoutMs }, 'request handler did not answer in time; 503');
        res.writeHead(503, { 'content-type': 'text/plain', connection: 'close' });
        res.end('handler timeout\n');
      }
    }
  }, 1000).unref();
}

const server = createServer((req, res) => {
  // While draining, each response closes its connection, so keep-alive clients move to a live worker cleanly;
  // the request also lifts the idle deadline drain() put on its socket.
  if (draining) {
    res.setHeader('connection', 'close');
    req.socket.setTimeout(0);
  }
  try {
    const result = listener(req, res) as unknown;
    // An async handler's rejection is that request's failure, not an unhandled rejection that ends the worker.
    if (typeof (result as Promise<unknown> | undefined)?.then === 'function') {
      (result as Promise<unknown>).then(undefined, (err: unknown) => handlerFailed(req, res, err));
    }
  } catch (err) {
    handlerFailed(req, res, err);
  }
  if (settings.handlerTimeoutMs > 0 && !res.headersSent && !res.writableEnded) {
    pending.set(res, { started: Date.now(), url: req.url });
    res.once('close', () => pending.delete(res));
  }
});

server.on('error', (err) => {
  log.error({ err: describeError(err) }, 'HTTP worker could not listen');
  process.send?.({ sk: 'listen-error', message: describeError(err) } satisfies WorkerToPrimary);
  process.exit(1);
});

if (settings.listen.kind === 'unix') server.listen(settings.listen.path);
else server.listen(settings.listen.port, settings.listen.host);

/** Bounds the wait for the supervisor's answer in leave(); past it the worker exits anyway. */
const LEAVE_BACKSTOP_MS = 5000;
let leaving = false;

/**
 * Leaves the cluster without dropping a connection the supervisor is still handing over, then exits.
 *
 * Why not `process.exit()` once the server closed (issue 16, item 2): under node:cluster the supervisor (the primary)
 * accepts every connection and passes it to a worker as an IPC message carrying the socket (`newconn`,
 * lib/internal/cluster/round_robin_handle.js). Closing the server here only *sends* `close` to the primary; until the
 * primary has read it, it keeps routing new connections to this worker, and the ones already written to the IPC pipe
 * arrive after the server closed. Node's worker side answers such a late `newconn` with `accepted: false` and the
 * primary re-routes the connection to another worker (child.js onconnection, RoundRobinHandle#handoff) — but only if
 * this process is still alive to read the message. Exiting as soon as the server's close callback ran left those
 * messages unread: the primary keeps its copy of the socket open, waiting for an answer that never comes, and the
 * client's request sits unread in an ESTABLISHED connection in the supervisor for ever.
 * `cluster.worker.disconnect()` closes the ordering gap: it sends `exitedAfterDisconnect` and disconnects the IPC
 * channel only on the primary's answer. The primary answers after it read our earlier `close` (IPC is ordered), so
 * every `newconn` it sent us before that arrives ahead of the answer and is read and handed back; nothing more is
 * routed here afterwards. The server is already closed (see drain()), so disconnect() has no handle left to close and
 * does not touch idle keep-alive sockets.
 */
function leave(): void {
  if (leaving) return;
  leaving = true;
  if (!cluster.worker || !process.connected) process.exit(0); // no supervisor left to hand connections back to
  setTimeout(() => process.exit(0), LEAVE_BACKSTOP_MS).unref();
  process.once('disconnect', () => process.exit(0));
  cluster.worker.disconnect();
}

/**
 * Stop accepting (the supervisor stops routing new connections here), let in-flight requests finish, close keep-alive
 * connections after their next response or when they idle out, and leave — bounded by drainTimeoutMs.
 * net.Server#close is called directly: http.Server#close would also drop idle keep-alive connections at once, which
 * races with a client that is sending its next request on one of them (the classic reload ECONNRESET).
 */
function drain(): void {
  if (draining) return;
  draining = true;
  const deadline = setTimeout(() => {
    log.warn({ drainTimeoutMs: settings.drainTimeoutMs }, 'drain deadline reached; closing remaining connections');
    server.closeAllConnections();
    leave();
  }, settings.drainTimeoutMs);
  deadline.unref();
  NetServer.prototype.close.call(server, leave);
  // Idle keep-alive sockets get a one-second last chance (a request then is served with Connection: close);
  // busy ones close after their response. `_httpMessage` is the response in progress on a socket (none = idle).
  // A response already in progress was started before the drain, without Connection: close: left alone, its
  // keep-alive connection would idle on after it and hold the exit until keepAliveTimeout (~5 s) or drainTimeoutMs.
  // The timer ends in closeIfIdle (the server's 'timeout' listener below), which spares a socket a request reached.
  const lastChance = (socket: Socket): void => {
    if (!socket.destroyed) socket.setTimeout(1000);
  };
  for (const socket of connections) {
    const res = responseOfSocket(socket);
    if (!res) lastChance(socket);
    else if (!res.headersSent) res.setHeader('connection', 'close');
    else res.once('finish', () => lastChance(socket));
  }
}

/**
 * A socket's timer fired (keepAliveTimeout after its last response, or the drain's last chance): closes it if it is
 * still idle once the input that arrived meanwhile has been read. Node's own handling destroys it at once, from the
 * timers phase, which runs before the poll phase that reads sockets: after this process's event loop was held up past
 * the timeout (a handler's long synchronous work, such as a leak allocating 256 MiB on a loaded machine; a GC pause; a
 * descheduled process), a request the client sent on its kept-alive connection meanwhile is still unread, the
 * connection looks idle, and destroying it resets the client's request (ECONNRESET; nodejs/node#43456, open).
 * setImmediate runs after this loop iteration's poll phase: by then such a request has been read (bytesRead moved)
 * and is being served (a response in progress), and the connection stays. Its timer is re-armed by Node when the
 * response ends (keepAliveTimeout), or by drain() during a drain, so a connection kept here is closed later if idle.
 * With a 'timeout' listener on the server, Node leaves timed-out sockets to it (http.Server 'timeout' event). A socket
 * whose response is in progress is never closed here: a handler that does not answer is handlerTimeoutMs's case.
 */
function closeIfIdle(socket: Socket): void {
  const read = socket.bytesRead;
  setImmediate(() => {
    if (socket.destroyed || socket.bytesRead !== read || responseOfSocket(socket)) return;
    socket.destroy();
  });
}
server.on('timeout', closeIfIdle);

// Tracked per connection (not per request) to keep the request path lean.
const connections = new Set<Socket>();
server.on('connection', (socket: Socket) => {
  connections.add(socket);
  socket.once('close', () => connections.delete(socket));
});

process.on('message', (msg: unknown) => {
  if (!isSidekickMessage(msg)) return;
  const m = msg as PrimaryToWorker;
  if (m.sk === 'drain') drain();
  else if (m.sk === 'ping') {
    const pong: WorkerToPrimary = {
      sk: 'pong',
      id: m.id,
      rss: process.memoryUsage.rss(),
      handlerErrors,
      handlerTimeouts,
      taskTimeouts: taskTimeouts(),
      log: logCounts(),
    };
    process.send?.(pong);
  }
});
// The supervisor coordinates shutdown; a terminal's Ctrl-C reaches the whole process group, so ignore SIGINT here.
process.on('SIGINT', () => {});
process.on('SIGTERM', drain);
// If the supervisor goes away, nobody routes connections here any more: drain and leave.
process.on('disconnect', drain);
