// The etcd source in library mode against a real etcd on loopback (test/helpers/etcd.ts): puts and deletes under the
// prefix reach the vars and keys outside it do not, a multi-key transaction arrives as one snapshot, a restart of
// etcd is ridden out on the last snapshot, auth by user and password from env vars, boot failures that say why; and
// against a fake gateway, a compacted watch makes the source read again. Skipped when etcd is not installed (fails
// under CI=true, which installs it).
import assert from 'node:assert/strict';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { configure, getVars, peekVars, shutdown, type Vars } from 'sidekick-runtime';
import { EtcdServer, etcdMissing } from './helpers/etcd.ts';
import { ENTRYPOINT, freePort, waitFor } from './helpers/serve.ts';
import { recordVars as record, varsWhere } from './helpers/vars.ts';

const missing = etcdMissing();
if (missing && process.env.CI === 'true') throw new Error(`CI=true: ${missing}`);
const skip = missing ? `skipped: ${missing}` : false;

const plain = (v: Vars | undefined) => ({ ...v });
const b64 = (s: string) => Buffer.from(s).toString('base64');

let etcd: EtcdServer;
let secured: EtcdServer;

// A fake gateway whose watch is canceled as compacted: the source must read again (and see the newer value).
const fake = { ranges: 0, watches: 0 };
const fakeServer = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    if (req.url === '/v3/kv/range') {
      fake.ranges++;
      const value = fake.ranges === 1 ? 'old' : 'new';
      const body = { header: { revision: String(4 + fake.ranges) }, kvs: [{ key: b64('/c/k'), value: b64(value) }] };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    } else if (req.url === '/v3/watch') {
      fake.watches++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write(`${JSON.stringify({ result: { header: { revision: '5' }, created: true } })}\n`);
      if (fake.watches === 1) {
        res.write(`${JSON.stringify({ result: { canceled: true, compact_revision: '7' } })}\n`);
      }
    } else {
      res.writeHead(404).end('{"error":"no such route","message":"no such route","code":12}');
    }
  });
});

before(async () => {
  if (skip) return;
  [etcd, secured] = await Promise.all([EtcdServer.start(), EtcdServer.start()]);
  await etcd.put('/app/a', '1');
  await etcd.put('/apps/x', 'outside: shares the string "/app" but not the prefix "/app/"');
  await etcd.put('/other/z', 'outside');
  await secured.put('/sec/token', 't0p');
  await secured.enableAuth('reader', 'r3ad', '/sec/');
  await new Promise<void>((resolve) => fakeServer.listen(0, '127.0.0.1', () => resolve()));
  const fakeUrl = `http://127.0.0.1:${(fakeServer.address() as AddressInfo).port}`;
  const closed = [`http://127.0.0.1:${await freePort()}`, `http://127.0.0.1:${await freePort()}`];
  process.env.SK_TEST_ETCD_USER = 'reader';
  process.env.SK_TEST_ETCD_PASSWORD = 'r3ad';
  process.env.SK_TEST_ETCD_BAD_PASSWORD = 'wrong';
  const src = (endpoints: string[], prefix: string, extra: Record<string, unknown> = {}) => ({
    start: 'lazy',
    source: { type: 'etcd', endpoints, prefix, ...extra },
  });
  const auth = { usernameEnv: 'SK_TEST_ETCD_USER', passwordEnv: 'SK_TEST_ETCD_PASSWORD' };
  configure({
    app: 'src-etcd',
    entrypoint: ENTRYPOINT, // library mode needs one even when every sidekick used is a source
    maxBootFailures: 2,
    stopGraceMs: 2000,
    // LibraryOptions does not type `source` yet; the runtime validates it with the config schema.
    declare: {
      app: src([etcd.endpoint], '/app/'),
      secured: src([secured.endpoint], '/sec/', auth),
      badpw: src([secured.endpoint], '/sec/', { ...auth, passwordEnv: 'SK_TEST_ETCD_BAD_PASSWORD' }),
      down: src(closed, '/app/'),
      compacted: src([fakeUrl], '/c/'),
    } as Record<string, { start: 'lazy' }>,
  });
});

after(async () => {
  if (skip) return;
  await shutdown();
  fakeServer.closeAllConnections();
  await new Promise((resolve) => fakeServer.close(resolve));
  await Promise.all([etcd.close(), secured.close()]);
});

test('puts and deletes under the prefix reach the vars; keys outside it do not', { skip }, async () => {
  assert.deepEqual(plain(await getVars('app', { timeout: 15_000 })), { a: '1' });
  await etcd.put('/app/b', 'héllo ✓ \u0000 end');
  await varsWhere('app', (v) => v.b !== undefined, 'the put of /app/b');
  assert.deepEqual(plain(peekVars('app')), { a: '1', b: 'héllo ✓ \u0000 end' }, 'values as UTF-8');
  await etcd.del('/app/a');
  assert.deepEqual(plain(await varsWhere('app', (v) => !('a' in v), 'the delete of /app/a')), {
    b: 'héllo ✓ \u0000 end',
  });
  const rec = record('app');
  await etcd.put('/apps/y', 'outside');
  await etcd.put('/other/y', 'outside');
  await etcd.put('/app/c', '3');
  await varsWhere('app', (v) => v.c === '3', 'the put of /app/c');
  assert.deepEqual(
    rec.seen.map(plain),
    [{ b: 'héllo ✓ \u0000 end', c: '3' }],
    'puts outside the prefix publish nothing and are not vars',
  );
  rec.stop();
});

test('a multi-key transaction arrives as one snapshot', { skip }, async () => {
  await getVars('app', { timeout: 15_000 });
  const rec = record('app');
  await etcd.txn([{ put: '/app/t1', value: 'one' }, { put: '/app/t2', value: 'two' }, { del: '/app/b' }]);
  const after = await varsWhere('app', (v) => v.t2 === 'two', 'the transaction');
  assert.deepEqual(plain(after), { c: '3', t1: 'one', t2: 'two' });
  assert.equal(rec.seen.length, 1, `one snapshot for one transaction, saw ${JSON.stringify(rec.seen)}`);
  rec.stop();
});

test('a restart of etcd is ridden out on the last snapshot, then followed again', { skip }, async () => {
  const last = await getVars('app', { timeout: 15_000 });
  await etcd.stopProcess();
  // While it is down its port resets connections, counted: the source must keep trying (with backoff) meanwhile.
  let attempts = 0;
  const resetter = net.createServer((sock) => {
    attempts++;
    sock.resetAndDestroy();
  });
  await new Promise<void>((resolve) => resetter.listen(Number(new URL(etcd.endpoint).port), '127.0.0.1', resolve));
  await waitFor('two reconnect attempts while etcd is down', () => attempts >= 2, { timeoutMs: 10_000 });
  await new Promise((resolve) => resetter.close(resolve));
  assert.equal(peekVars('app'), last, 'kept while etcd is down');
  await etcd.startProcess();
  assert.equal(peekVars('app'), last, 'kept across the restart (same data, nothing changed)');
  await etcd.put('/app/after', 'restart');
  await etcd.del('/app/c');
  const now = await varsWhere('app', (v) => v.after === 'restart' && !('c' in v), 'changes after the restart');
  assert.deepEqual(plain(now), { t1: 'one', t2: 'two', after: 'restart' });
});

test('auth: user and password from env vars; a wrong password fails the boot saying so', { skip }, async () => {
  assert.deepEqual(plain(await getVars('secured', { timeout: 15_000 })), { token: 't0p' });
  await secured.put('/sec/more', 'yes');
  await varsWhere('secured', (v) => v.more === 'yes', 'a put seen through an authenticated watch');
  await assert.rejects(getVars('badpw', { timeout: 15_000 }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_BOOT_FAILED');
    assert.match(err.message, /etcd source \(prefix "\/sec\/"\): .*authentication failed/);
    assert.doesNotMatch(err.message, /wrong/, 'the password is not in the message');
    return true;
  });
});

test('a source whose every endpoint is down fails the boot naming each', { skip }, async () => {
  await assert.rejects(getVars('down', { timeout: 15_000 }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_BOOT_FAILED');
    assert.match(err.message, /127\.0\.0\.1:\d+\/: fetch failed: connect ECONNREFUSED.*; .*ECONNREFUSED/);
    return true;
  });
});

test('a compacted watch makes the source read again', { skip }, async () => {
  const first = await getVars('compacted', { timeout: 15_000 });
  assert.ok(first.k === 'old' || first.k === 'new');
  await varsWhere('compacted', (v) => v.k === 'new', 'the value read again after compaction');
  await waitFor('the second watch', () => fake.watches >= 2, { timeoutMs: 10_000 });
  assert.equal(fake.ranges, 2, 'one read per watch');
  assert.equal(fake.watches, 2);
});
