// The private Node.js internals Sidekick relies on, all in one place.
//
// Each is undocumented, outside Node's semver promise, yet used by Node's own libraries (node:cluster,
// child_process handle passing, node:http) and stable for many years. The rest of the code reaches them only through
// the accessors below, each saying why we need it; `checkNodeInternals()` verifies at start-up that every one still
// exists, so a Node release that drops one fails at once with SK_ERR_NODE_UNSUPPORTED instead of misbehaving later
// (a receiver that never naps, a hand-over that loses connections, a drain that waits for keep-alive timeouts).
//
// The Node agent client imports this module too: it stays free of dependencies and does not load node:http (the
// check loads it only when it runs).
import { unlinkSync } from 'node:fs';
import type { IncomingMessage as IncomingMessageType, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SidekickError } from '../errors.js';

/** The native handle behind a bound Unix socket that accepts nowhere yet (what node:cluster's primary holds). */
export interface BoundHandle {
  readonly fd: number;
  close(cb?: () => void): void;
}

/** The libuv stream wrap behind a connected net.Socket (a Pipe for a Unix socket). */
export interface StreamHandle {
  /** net.Socket's own flag: whether it believes the handle is reading (it calls readStart only when false). */
  reading: boolean;
  readStop(): number;
  readStart(): number;
  readonly fd: number;
}

type SocketInternals = net.Socket & {
  _handle: StreamHandle | null;
  _readableState?: { ended?: boolean };
  _httpMessage?: ServerResponse | null;
};

/**
 * `net._createServerHandle(path, -1, -1)`: binds a Unix socket in this process without listening or accepting, and
 * returns its handle or a negative errno. The agent supervisor keeps this handle so the socket and its kernel backlog
 * outlive every worker, and passes the fd to each worker, which listens and accepts. node:cluster's primary does the
 * same for shared handles, but closes the handle when its last worker exits, so we use the primitive directly.
 */
export function createServerHandle(path: string): BoundHandle | number {
  const create = (net as unknown as { _createServerHandle: (a: string, p: number, t: number) => BoundHandle | number })
    ._createServerHandle;
  return create(path, -1, -1);
}

/**
 * `socket._handle`: the stream wrap of a connected socket, or null (not connected yet, destroyed, or detached). The
 * agent's receiver stops and restarts reading on it (read coalescing, hand-over), which `socket.pause()` cannot do:
 * a paused socket still reads into its buffer, so the client's writes still wake the agent.
 */
export function streamHandleOf(socket: net.Socket): StreamHandle | null {
  return (socket as SocketInternals)._handle ?? null;
}

/** Takes the socket out of the poll set (readStop), and tells net.Socket so, so its next read() restarts it. */
export function stopHandleReading(handle: StreamHandle): void {
  handle.reading = false;
  handle.readStop();
}

/** Puts the socket back in the poll set, keeping net.Socket's `reading` flag true to the handle. */
export function startHandleReading(handle: StreamHandle): void {
  handle.reading = true;
  handle.readStart();
}

/**
 * Detaches the stream wrap from its net.Socket (`socket._handle = null`), as child_process does when it sends a
 * socket to another process: the socket object can then be dropped without closing the connection, and the handle
 * goes to the next agent worker. Returns the handle (null when there was none).
 */
export function takeStreamHandle(socket: net.Socket): StreamHandle | null {
  const s = socket as SocketInternals;
  const handle = s._handle ?? null;
  s._handle = null;
  return handle;
}

/** `new net.Socket({ handle })`: a socket over a handle received from another process (the hand-over's other end). */
export function socketOverHandle(handle: unknown): net.Socket {
  return new net.Socket({ handle, readable: true, writable: true } as net.SocketConstructorOpts);
}

/**
 * `socket._readableState.ended`: EOF was read from the connection, though lines may still wait in the stream's
 * buffer (`readableEnded` turns true only once they are consumed). A handle that read EOF must never be restarted:
 * a second EOF is a push after end, an error that destroys the socket with those lines still in its buffer.
 */
export function readEndSeen(socket: net.Socket): boolean {
  return socket.readableEnded || (socket as SocketInternals)._readableState?.ended === true;
}

/**
 * The OS file descriptor of a connected socket (`socket._handle.fd`), or -1 (destroyed, not connected, or not
 * exposed). The agent client writes with non-blocking write(2) on it, so that nothing is ever left pending inside
 * libuv: a pending write request keeps the process alive while a hung agent never reads.
 */
export function socketFd(socket: net.Socket): number {
  if (socket.destroyed) return -1;
  const fd = streamHandleOf(socket)?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * `socket._httpMessage` on a server-side socket: the response in progress on that connection, or undefined when
 * it is idle (a keep-alive connection between requests). An HTTP worker's drain tells the idle ones from the busy
 * ones with it; node:http itself has no public way to ask.
 */
export function responseOfSocket(socket: net.Socket): ServerResponse | undefined {
  return (socket as SocketInternals)._httpMessage ?? undefined;
}

/**
 * Verifies that every internal above still exists and behaves as the accessors expect; throws SK_ERR_NODE_UNSUPPORTED
 * naming the first one missing and `process.version`. Synchronous and cheap (one socket bound and closed, no I/O
 * waited for): call it once where a process that uses them starts.
 */
export function checkNodeInternals(): void {
  const missing = (internal: string): never => {
    throw new SidekickError(
      'SK_ERR_NODE_UNSUPPORTED',
      `Node ${process.version} lacks ${internal}, an internal Sidekick relies on; run Sidekick on a Node version it supports (see package.json engines)`,
      { internal, nodeVersion: process.version },
    );
  };
  const create = (net as unknown as { _createServerHandle?: unknown })._createServerHandle;
  if (typeof create !== 'function') missing('net._createServerHandle');

  // A real handle to inspect: a Unix socket bound in Linux's abstract namespace (no file), else in the temp dir.
  const name = `sidekick-node-check-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const path = process.platform === 'linux' ? `\0${name}` : join(tmpdir(), `${name}.sock`);
  const handle = createServerHandle(path);
  if (typeof handle === 'number') {
    const err = new Error(
      `checkNodeInternals: binding a check socket failed: errno ${handle}`,
    ) as NodeJS.ErrnoException;
    err.errno = handle;
    throw err;
  }
  try {
    const stream = handle as unknown as Partial<StreamHandle>;
    if (typeof stream.readStop !== 'function' || typeof stream.readStart !== 'function')
      missing('readStop()/readStart() on a stream handle');
    if (typeof stream.fd !== 'number') missing('the fd property of a stream handle');
    // The hand-over's round trip: wrap the handle in a socket, as the adopting worker does, and take it back.
    const socket = new net.Socket({ handle, readable: false, writable: false } as net.SocketConstructorOpts);
    if (streamHandleOf(socket) !== (handle as unknown)) missing("net.Socket's handle option or its _handle property");
    takeStreamHandle(socket);
    socket.destroy();
    if (typeof (socket as SocketInternals)._readableState?.ended !== 'boolean')
      missing("a readable stream's _readableState.ended");
  } finally {
    handle.close();
    if (process.platform !== 'linux') {
      try {
        unlinkSync(path);
      } catch {
        // libuv unlinked it on close
      }
    }
  }

  // node:http records the response in progress on its socket; the same call the server makes, on a bare socket.
  const require = createRequire(import.meta.url);
  const http = require('node:http') as {
    ServerResponse: new (req: IncomingMessageType) => ServerResponse;
    IncomingMessage: new (socket: net.Socket) => IncomingMessageType;
  };
  const bare = new net.Socket();
  const res = new http.ServerResponse(new http.IncomingMessage(bare));
  const assign = (res as unknown as { assignSocket?: (s: net.Socket) => void }).assignSocket;
  if (typeof assign !== 'function') missing('ServerResponse.assignSocket()');
  res.assignSocket(bare);
  const seen = responseOfSocket(bare);
  res.detachSocket(bare);
  bare.destroy();
  if (seen !== res) missing('the _httpMessage property node:http sets on a server socket');
}
