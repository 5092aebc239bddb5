// The private Node internals Sidekick relies on (src/common/node-internals.ts), each used for real: a socket bound
// without listening, reading stopped and restarted on a connected Unix socket, a handle taken from one socket and
// adopted by another, EOF seen while paused, writes on a raw fd, the response in progress on an HTTP connection; and
// the start-up check passes. Run it on every Node version we support (CI: 20 and 24).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, statSync, writeSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { sleep } from '../src/common/async.ts';
import {
  checkNodeInternals,
  createServerHandle,
  readEndSeen,
  responseOfSocket,
  socketFd,
  socketOverHandle,
  startHandleReading,
  stopHandleReading,
  streamHandleOf,
  takeStreamHandle,
} from '../src/common/node-internals.ts';
import { isSidekickError } from '../src/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'sk-internals-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/** A listening Unix socket server and one connected pair: `client` (ours) and `peer` (the server's side). */
async function pair(): Promise<{ client: net.Socket; peer: net.Socket; close: () => Promise<void> }> {
  const server = net.createServer();
  const path = join(dir, `p${n++}.sock`);
  server.listen(path);
  await once(server, 'listening');
  const accepted = once(server, 'connection');
  const client = net.createConnection({ path });
  await once(client, 'connect');
  const [peer] = (await accepted) as [net.Socket];
  return {
    client,
    peer,
    close: async () => {
      client.destroy();
      peer.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail('condition not met in time');
    await sleep(5);
  }
}

test('checkNodeInternals passes on this Node, fast', () => {
  const start = performance.now();
  checkNodeInternals();
  checkNodeInternals(); // twice: nothing is left bound
  assert.ok(performance.now() - start < 500, `took ${performance.now() - start} ms`);
});

test('createServerHandle binds a Unix socket without listening; clients are refused until a server listens on it', async () => {
  const path = join(dir, `bound${n++}.sock`);
  const handle = createServerHandle(path);
  assert.notEqual(typeof handle, 'number', `bind failed: errno ${String(handle)}`);
  if (typeof handle === 'number') return;
  assert.ok(handle.fd >= 0);
  assert.ok(statSync(path).isSocket());
  const refused = net.createConnection({ path });
  const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
  assert.equal(err.code, 'ECONNREFUSED');

  // What a worker does with the fd the supervisor passes it: listen on it and accept.
  const server = net.createServer((s) => s.end('hi\n'));
  server.listen({ fd: handle.fd });
  await once(server, 'listening');
  const client = net.createConnection({ path });
  const [data] = (await once(client, 'data')) as [Buffer];
  assert.equal(data.toString(), 'hi\n');
  client.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  handle.close();
  await until(() => !existsSync(path)); // libuv unlinks the bound name when the handle closes

  const failed = createServerHandle(join(dir, 'no-such-dir', 'x.sock'));
  assert.equal(typeof failed, 'number', 'a bind error comes back as a negative errno');
  assert.ok((failed as number) < 0);
});

test('streamHandleOf + stopHandleReading: nothing is read (not even into the buffer) until startHandleReading', async () => {
  const { client, peer, close } = await pair();
  const handle = streamHandleOf(peer);
  assert.ok(handle);
  assert.equal(typeof handle.fd, 'number');
  peer.pause();
  stopHandleReading(handle);
  client.write('one\n');
  await sleep(100);
  assert.equal(peer.readableLength, 0, 'a stopped handle leaves the data in the kernel');
  const got: Buffer[] = [];
  peer.on('data', (c: Buffer) => got.push(c));
  startHandleReading(handle);
  peer.resume();
  await until(() => Buffer.concat(got).toString() === 'one\n');
  assert.equal(streamHandleOf(new net.Socket()), null, 'an unconnected socket has no handle');
  await close();
});

test('takeStreamHandle + socketOverHandle: a connection moves to a new socket object and goes on there', async () => {
  const { client, peer, close } = await pair();
  const handle = streamHandleOf(peer)!;
  stopHandleReading(handle);
  assert.equal(takeStreamHandle(peer), handle);
  assert.equal(streamHandleOf(peer), null);
  peer.removeAllListeners();
  peer.on('error', () => undefined);
  peer.destroy(); // without its handle: the connection stays open
  const adopted = socketOverHandle(handle);
  const got: Buffer[] = [];
  adopted.on('data', (c: Buffer) => got.push(c));
  client.write('after the move\n');
  await until(() => Buffer.concat(got).toString() === 'after the move\n');
  adopted.destroy();
  await close();
});

test('readEndSeen: EOF read while lines still wait in a paused stream', async () => {
  const { client, peer, close } = await pair();
  peer.pause();
  assert.equal(readEndSeen(peer), false);
  client.end('last\n');
  await until(() => readEndSeen(peer));
  assert.equal(peer.readableEnded, false, "'end' is not emitted before the buffered line is consumed");
  assert.equal((peer.read() as Buffer).toString(), 'last\n');
  await close();
});

test('socketFd: write(2) on the fd reaches the peer; -1 once destroyed or before connecting', async () => {
  const { client, peer, close } = await pair();
  const fd = socketFd(client);
  assert.ok(fd >= 0);
  const got: Buffer[] = [];
  peer.on('data', (c: Buffer) => got.push(c));
  assert.equal(writeSync(fd, 'raw\n'), 4);
  await until(() => Buffer.concat(got).toString() === 'raw\n');
  assert.equal(socketFd(new net.Socket()), -1);
  client.destroy();
  assert.equal(socketFd(client), -1);
  await close();
});

test('responseOfSocket: the response in progress on a connection, undefined while it idles between requests', async () => {
  let inHandler: { same: boolean } | undefined;
  let socket: net.Socket | undefined;
  const server = http.createServer((req, res) => {
    socket = req.socket;
    inHandler = { same: responseOfSocket(req.socket) === res };
    res.end('ok');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const agent = new http.Agent({ keepAlive: true });
  const body = await new Promise<string>((resolve, reject) => {
    http
      .get({ port, host: '127.0.0.1', agent }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(text));
      })
      .on('error', reject);
  });
  assert.equal(body, 'ok');
  assert.deepEqual(inHandler, { same: true });
  assert.ok(socket && !socket.destroyed, 'the keep-alive connection is still open');
  await until(() => responseOfSocket(socket!) === undefined);
  agent.destroy();
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

test('checkNodeInternals names what is missing and the Node version (SK_ERR_NODE_UNSUPPORTED)', () => {
  const netInternals = net as unknown as { _createServerHandle: unknown };
  const saved = netInternals._createServerHandle;
  netInternals._createServerHandle = undefined;
  try {
    assert.throws(checkNodeInternals, (err: unknown) => {
      assert.ok(isSidekickError(err, 'SK_ERR_NODE_UNSUPPORTED'));
      assert.match(err.message, /net\._createServerHandle/);
      assert.ok(err.message.includes(process.version));
      assert.deepEqual(err.details, { internal: 'net._createServerHandle', nodeVersion: process.version });
      return true;
    });
  } finally {
    netInternals._createServerHandle = saved;
  }
  checkNodeInternals();
});
