// The http source in library mode (sidekick threads of this process) against local servers the test runs:
// Server-Sent Events followed (pushes, a bad event kept out, a dropped stream and a silent one reconnected with
// Last-Event-ID), polling with ETag (304: nothing published; a change: published), an outage ridden out on the last
// snapshot, bodies that are not a JSON object kept out, and boot failures that say why.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { configure, getVars, peekVars, shutdown } from 'sidekick-runtime';
import { ENTRYPOINT, freePort, waitFor } from './helpers/serve.ts';
import { recordVars as record, varsWhere } from './helpers/vars.ts';

// One server for every route; state per route, mutated by the tests.
const sse = { doc: '{"a":"1","n":2,"obj":{"x":true},"nil":null}', open: new Set<http.ServerResponse>(), connects: 0 };
const lastEventIds: (string | undefined)[] = [];
const silent = { connects: 0 };
const poll = { doc: '{"mode":"a"}', requests: 0, notModified: 0, auth: [] as (string | undefined)[] };
const bad = { body: '{"v":"1"}', served: 0 };
let eventId = 0;

const etagOf = (body: string): string => `"${createHash('sha1').update(body).digest('hex').slice(0, 16)}"`;

function handler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  if (path === '/sse') {
    assert.match(req.headers.accept ?? '', /text\/event-stream/);
    sse.connects++;
    lastEventIds.push(req.headers['last-event-id'] as string | undefined);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
    res.write(`retry: 100\n: hello\n\nid: ${++eventId}\ndata: ${sse.doc}\n\n`);
    sse.open.add(res);
    res.on('close', () => sse.open.delete(res));
  } else if (path === '/silent') {
    // One event, then nothing, not even a comment: the source must take the stream as dead and reconnect.
    silent.connects++;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`data: {"connects":"${silent.connects}"}\n\n`);
  } else if (path === '/poll') {
    poll.requests++;
    poll.auth.push(req.headers.authorization);
    const etag = etagOf(poll.doc);
    if (req.headers['if-none-match'] === etag) {
      poll.notModified++;
      res.writeHead(304, { etag }).end();
    } else {
      res.writeHead(200, { 'content-type': 'application/json', etag }).end(poll.doc);
    }
  } else if (path === '/bad') {
    bad.served++;
    res.writeHead(200, { 'content-type': 'application/json' }).end(bad.body);
  } else {
    res.writeHead(404).end();
  }
}

const server = http.createServer(handler);
let base = '';
// The outage route lives on its own port, so it can go down and come back.
let outagePort = 0;
let outageServer: http.Server | undefined;
let outageDoc = '{"up":"1"}';
const SSE_LINE = (data: string) => `id: ${++eventId}\ndata: ${data}\n\n`;

function listen(s: net.Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve((s.address() as net.AddressInfo).port));
  });
}
function close(s: http.Server | net.Server): Promise<void> {
  if (s instanceof http.Server) s.closeAllConnections();
  return new Promise((resolve) => s.close(() => resolve()));
}
const startOutageServer = () => {
  outageServer = http.createServer((_req, res) => res.writeHead(200).end(outageDoc));
  return listen(outageServer, outagePort);
};

before(async () => {
  base = `http://127.0.0.1:${await listen(server)}`;
  outagePort = await startOutageServer();
  const closedPort = await freePort(); // nothing listens there: connections are refused
  process.env.SK_TEST_HTTP_TOKEN = 'Bearer s3cret'; // read by the sidekick thread (its env is a copy of ours)
  const src = (url: string, extra: Record<string, unknown> = {}) => ({
    start: 'lazy',
    source: { type: 'http', url, intervalMs: 200, timeoutMs: 1000, ...extra },
  });
  configure({
    app: 'src-http',
    entrypoint: ENTRYPOINT, // library mode needs one even when every sidekick used is a source
    maxBootFailures: 2,
    stopGraceMs: 2000,
    // LibraryOptions does not type `source` yet; the runtime validates it with the config schema.
    declare: {
      sse: src(`${base}/sse`, { intervalMs: 5000 }),
      silent: src(`${base}/silent`, { intervalMs: 150 }),
      poll: src(`${base}/poll?token=not-logged`, { headersFromEnv: { authorization: 'SK_TEST_HTTP_TOKEN' } }),
      bad: src(`${base}/bad`),
      outage: src(`http://127.0.0.1:${outagePort}/`),
      refused: src(`http://127.0.0.1:${closedPort}/flags?token=not-logged`),
      noenv: src(`${base}/poll`, { headersFromEnv: { authorization: 'SK_TEST_UNSET_VAR' } }),
    } as Record<string, { start: 'lazy' }>,
  });
});

after(async () => {
  await shutdown();
  for (const res of sse.open) res.destroy();
  await close(server);
  if (outageServer) await close(outageServer);
});

test('SSE: the stream is followed, a bad event is kept out, a dropped stream is reconnected', async () => {
  const first = await getVars('sse', { timeout: 10_000 });
  assert.deepEqual(
    { ...first },
    { a: '1', n: '2', obj: '{"x":true}', nil: '' },
    'strings as is, null as "", others as JSON',
  );
  assert.equal(sse.connects, 1);
  const rec = record('sse');
  const push = (doc: string) => [...sse.open].forEach((res) => res.write(SSE_LINE(doc)));

  push('{"a":"2"}');
  await varsWhere('sse', (v) => v.a === '2', 'a pushed event');
  push('not json');
  push('["an","array"]');
  push('{"a":"3"}');
  await varsWhere('sse', (v) => v.a === '3', 'the event after two bad ones');
  assert.deepEqual(
    rec.seen.map((v) => ({ ...v })),
    [{ a: '2' }, { a: '3' }],
    'each good event is one snapshot, bad ones publish nothing',
  );

  // The server drops the stream: the source reconnects (after the server's retry: 100), with Last-Event-ID.
  const lastId = eventId;
  for (const res of sse.open) res.destroy();
  sse.doc = '{"a":"4"}';
  await varsWhere('sse', (v) => v.a === '4', 'the full object sent on reconnect');
  assert.equal(sse.connects, 2);
  assert.equal(lastEventIds[0], undefined);
  assert.equal(lastEventIds[1], String(lastId), 'Last-Event-ID: the last id received');
  push('{"a":"5"}');
  await varsWhere('sse', (v) => v.a === '5', 'a push on the new stream');
  rec.stop();
});

test('SSE: a stream silent for 2 × intervalMs is taken as dead and reconnected', async () => {
  const first = await getVars('silent', { timeout: 10_000 });
  assert.equal(first.connects, '1');
  await varsWhere('silent', (v) => Number(v.connects) >= 3, 'two reconnects after silent streams', 10_000);
});

test('polling with ETag: a 304 publishes nothing, a change is published; headers from env are sent', async () => {
  const first = await getVars('poll', { timeout: 10_000 });
  assert.deepEqual({ ...first }, { mode: 'a' });
  assert.equal(poll.auth[0], 'Bearer s3cret', 'headersFromEnv.authorization sent');
  const rec = record('poll');
  const before304 = poll.notModified;
  await waitFor('three 304 answers', () => poll.notModified >= before304 + 3, { timeoutMs: 10_000 });
  assert.equal(rec.seen.length, 0, 'no publish on 304');
  poll.doc = '{"mode":"b","count":3}';
  const next = await varsWhere('poll', (v) => v.mode === 'b', 'the changed document');
  assert.deepEqual({ ...next }, { mode: 'b', count: '3' });
  assert.deepEqual(rec.seen.length, 1);
  rec.stop();
});

test('a body that is not a JSON object keeps the last snapshot; a good one is published again', async () => {
  const first = await getVars('bad', { timeout: 10_000 });
  assert.deepEqual({ ...first }, { v: '1' });
  const rec = record('bad');
  for (const body of ['not json {', '[1,2,3]', '"a string"', 'null']) {
    bad.body = body;
    const served = bad.served;
    await waitFor(`the bad body ${body} served twice`, () => bad.served >= served + 2, { timeoutMs: 10_000 });
    assert.equal(peekVars('bad'), first, `still the last good snapshot after ${body}`);
  }
  bad.body = '{"v":"2"}';
  await varsWhere('bad', (v) => v.v === '2', 'the good body after the bad ones');
  assert.equal(rec.seen.length, 1, 'nothing published in between');
  rec.stop();
});

test('an outage is ridden out on the last snapshot, then the source catches up', async () => {
  const first = await getVars('outage', { timeout: 10_000 });
  assert.deepEqual({ ...first }, { up: '1' });
  await close(outageServer!);
  // Down: connections to the port are reset (counted, so the test knows the source kept trying).
  let resets = 0;
  const resetter = net.createServer((sock) => {
    resets++;
    sock.resetAndDestroy();
  });
  await listen(resetter, outagePort);
  await waitFor('three attempts during the outage', () => resets >= 3, { timeoutMs: 10_000 });
  assert.equal(peekVars('outage'), first, 'the last snapshot is kept');
  await close(resetter);
  outageDoc = '{"up":"2"}';
  await startOutageServer();
  await varsWhere('outage', (v) => v.up === '2', 'the document after the outage');
});

test('failures before the first publish fail the boot with a clear message', async () => {
  await assert.rejects(getVars('refused', { timeout: 15_000 }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_BOOT_FAILED');
    assert.match(err.message, /http source http:\/\/127\.0\.0\.1:\d+\/flags: fetch failed: .*ECONNREFUSED/);
    assert.equal(err.message.split('http source').length, 2, `the source named once: ${err.message}`);
    assert.doesNotMatch(err.message, /not-logged/, 'the query string (it may hold a token) is not in messages');
    return true;
  });
  await assert.rejects(getVars('noenv', { timeout: 15_000 }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_BOOT_FAILED');
    assert.match(err.message, /headersFromEnv\.authorization: environment variable SK_TEST_UNSET_VAR is not set/);
    return true;
  });
});
