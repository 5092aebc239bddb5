// The file source, for real: files in a temp folder changed the ways editors and deployers change them, read by the
// runtime in library mode (sidekicks declared with `source: { type: 'file', … }`), seen through getVars/onVars.
// Covers: JSON/YAML/.env and the value mapping; in-place write, write-to-temp + rename, vim's backup-and-rename,
// a Kubernetes ConfigMap `..data` swap (file and folder), delete then re-create, invalid content kept out, a burst
// of writes, a folder merged in name order, a bad first load as a boot failure; and, under `sidekick serve`, a bad
// file or a deleted one after the first publish shown as `sourceError` in status. Every wait is bounded (onVars or
// a status probe, each with a deadline); no sleep stands in for synchronisation.
import assert from 'node:assert/strict';
import { mkdirSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { configure, getVars, onVars, peekVars, shutdown, type LibraryOptions, type Vars } from 'sidekick-runtime';
import { ENTRYPOINT, freePort, startServe, tempDir, waitFor, type SidekickStatusJson } from './helpers/serve.ts';

const tmp = tempDir('sk-source-file-');
const dir = (name: string): string => {
  const d = join(tmp.dir, name);
  mkdirSync(d, { recursive: true });
  return d;
};
const F = {
  json: join(dir('json'), 'flags.json'),
  rename: join(dir('rename'), 'flags.json'),
  yaml: join(dir('yaml'), 'app.yaml'),
  env: join(dir('env'), '.env'),
  k8s: dir('k8s'),
  gone: join(dir('gone'), 'flags.json'),
  bad: join(dir('bad'), 'flags.json'),
  burst: join(dir('burst'), 'flags.json'),
  folder: dir('folder'),
  boot: join(dir('boot'), 'flags.json'),
};

const fileSource = (path: string, extra: Record<string, unknown> = {}) => ({
  start: 'lazy',
  source: { type: 'file', path, ...extra },
});

before(() => {
  // The declared-source form; LibraryOptions' declare type does not list `source` yet, the schema accepts it.
  const declare = {
    json: fileSource(F.json),
    rename: fileSource(F.rename),
    yaml: fileSource(F.yaml),
    env: fileSource(F.env),
    'k8s.file': fileSource(join(F.k8s, 'app.yaml')),
    'k8s.folder': fileSource(F.k8s),
    // No debounce: each write is likely read on its own, so the bad states are really seen by the source.
    gone: fileSource(F.gone, { debounceMs: 0 }),
    bad: fileSource(F.bad, { debounceMs: 0 }),
    burst: fileSource(F.burst, { debounceMs: 150 }),
    folder: fileSource(F.folder),
    boot: fileSource(F.boot),
  };
  // An entrypoint is still required by library mode; every sidekick here is a declared source.
  const options = { entrypoint: ENTRYPOINT, app: 'files', stopGraceMs: 3000, maxBootFailures: 2, declare };
  configure(options as LibraryOptions);
});

after(async () => {
  // Stop is prompt: every watcher closes when the signal aborts, well inside stopGraceMs (3 s).
  const started = Date.now();
  await shutdown();
  assert.ok(Date.now() - started < 2500, `shutdown took ${Date.now() - started} ms`);
  tmp.cleanup();
});

/** Resolves with the first snapshot of `name` that `accept` takes (the current one included), or fails at the deadline. */
function until(name: string, accept: (v: Vars) => boolean, timeoutMs = 5000): Promise<Vars> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(
        new Error(`no accepted snapshot of "${name}" within ${timeoutMs} ms; last: ${JSON.stringify(peekVars(name))}`),
      );
    }, timeoutMs);
    const off = onVars(name, (v) => {
      if (!accept(v)) return;
      clearTimeout(timer);
      off();
      resolve(v);
    });
    const now = peekVars(name);
    if (now && accept(now)) {
      clearTimeout(timer);
      off();
      resolve(now);
    }
  });
}

/** Every snapshot of `name` published from now on, for checks on what was (not) published in between. */
function record(name: string): { seen: Vars[]; stop: () => void } {
  const seen: Vars[] = [];
  const stop = onVars(name, (v) => seen.push(v));
  return { seen, stop };
}

const plain = (v: Vars | undefined): Record<string, string> => ({ ...v });

test('JSON: top-level keys, strings as they are, other values as JSON text; an in-place write publishes', async () => {
  writeFileSync(
    F.json,
    JSON.stringify({ s: 'on', n: 8080, f: 1.5, t: true, z: null, o: { a: [1, 'x'] }, arr: [1, 2], e: '' }),
  );
  const vars = await getVars('json', { timeout: 30_000 });
  assert.deepEqual(plain(vars), {
    s: 'on',
    n: '8080',
    f: '1.5',
    t: 'true',
    z: '',
    o: '{"a":[1,"x"]}',
    arr: '[1,2]',
    e: '',
  });
  const next = until('json', (v) => v.s === 'off');
  writeFileSync(F.json, '{"s":"off"}'); // truncate + write, the same inode
  assert.deepEqual(plain(await next), { s: 'off' });
});

test('write-to-temp + rename over, and vim backup-and-rename, both publish', async () => {
  writeFileSync(F.rename, '{"v":"1"}');
  await getVars('rename', { timeout: 30_000 });
  let next = until('rename', (v) => v.v === '2');
  const temp = join(tmp.dir, 'rename', '.flags.json.tmp-123');
  writeFileSync(temp, '{"v":"2"}');
  renameSync(temp, F.rename); // atomic save, and `mv new flags.json`
  await next;

  next = until('rename', (v) => v.v === '3');
  renameSync(F.rename, `${F.rename}~`); // vim with backupcopy=no: move the original aside, write anew, drop the backup
  writeFileSync(F.rename, '{"v":"3"}');
  unlinkSync(`${F.rename}~`);
  await next;
});

test('YAML and .env: parsed and mapped, updates published', async () => {
  writeFileSync(F.yaml, 'greeting: hello\nport: 8080\nenabled: false\nempty:\nlist: [a, b]\nnested:\n  k: v\n');
  assert.deepEqual(plain(await getVars('yaml', { timeout: 30_000 })), {
    greeting: 'hello',
    port: '8080',
    enabled: 'false',
    empty: '',
    list: '["a","b"]',
    nested: '{"k":"v"}',
  });
  let next = until('yaml', (v) => v.greeting === 'hi');
  writeFileSync(F.yaml, '# edited\ngreeting: hi\n');
  assert.deepEqual(plain(await next), { greeting: 'hi' });

  writeFileSync(F.env, '# comment\nDB_HOST=db.local\nexport DB_PORT=5432\nQUOTED="a b"\nREF=${DB_HOST}\n');
  assert.deepEqual(plain(await getVars('env', { timeout: 30_000 })), {
    DB_HOST: 'db.local',
    DB_PORT: '5432',
    QUOTED: 'a b',
    REF: '${DB_HOST}', // no expansion
  });
  next = until('env', (v) => v.DB_HOST === 'db2');
  writeFileSync(F.env, 'DB_HOST=db2\n');
  assert.deepEqual(plain(await next), { DB_HOST: 'db2' });
});

test('a Kubernetes ConfigMap volume: the ..data symlink swap is seen by a file and a folder source', async () => {
  // The kubelet's layout: app.yaml -> ..data/app.yaml, ..data -> ..<timestamp>/, swapped by renaming ..data_tmp.
  const stamp1 = join(F.k8s, '..2024_01_01_00_00_00.1');
  mkdirSync(stamp1);
  writeFileSync(join(stamp1, 'app.yaml'), 'mode: one\n');
  writeFileSync(join(stamp1, 'extra.json'), '{"x":"1"}');
  symlinkSync('..2024_01_01_00_00_00.1', join(F.k8s, '..data'));
  symlinkSync('..data/app.yaml', join(F.k8s, 'app.yaml'));
  symlinkSync('..data/extra.json', join(F.k8s, 'extra.json'));
  assert.deepEqual(plain(await getVars('k8s.file', { timeout: 30_000 })), { mode: 'one' });
  assert.deepEqual(plain(await getVars('k8s.folder', { timeout: 30_000 })), { mode: 'one', x: '1' });

  const file = until('k8s.file', (v) => v.mode === 'two');
  const folder = until('k8s.folder', (v) => v.mode === 'two');
  const stamp2 = join(F.k8s, '..2024_01_01_00_01_00.2');
  mkdirSync(stamp2);
  writeFileSync(join(stamp2, 'app.yaml'), 'mode: two\n');
  writeFileSync(join(stamp2, 'extra.json'), '{"x":"2"}');
  symlinkSync('..2024_01_01_00_01_00.2', join(F.k8s, '..data_tmp'));
  renameSync(join(F.k8s, '..data_tmp'), join(F.k8s, '..data'));
  rmSync(stamp1, { recursive: true });
  assert.deepEqual(plain(await file), { mode: 'two' });
  assert.deepEqual(plain(await folder), { mode: 'two', x: '2' });
});

test('deleted: the last snapshot stays; re-created: published again', async () => {
  writeFileSync(F.gone, '{"v":"before"}');
  const first = await getVars('gone', { timeout: 30_000 });
  const rec = record('gone');
  const next = until('gone', (v) => v.v === 'after');
  unlinkSync(F.gone);
  writeFileSync(F.gone, '{"v":"after"}');
  await next;
  rec.stop();
  assert.deepEqual(
    rec.seen.map((v) => v.v),
    ['after'],
    'nothing published between the delete and the re-creation',
  );
  assert.equal(first.v, 'before');
});

test('invalid JSON, a non-object and an empty file are kept out: the last good snapshot stays', async () => {
  writeFileSync(F.bad, '{"v":"good"}');
  const good = await getVars('bad', { timeout: 30_000 });
  const rec = record('bad');
  const next = until('bad', (v) => v.v === 'fixed');
  writeFileSync(F.bad, '{"v": "half-wri');
  writeFileSync(F.bad, '[1, 2]');
  writeFileSync(F.bad, '');
  // The bad contents above (each may be read) never publish; the fix does.
  writeFileSync(F.bad, '{"v":"fixed"}');
  await next;
  rec.stop();
  assert.deepEqual(
    rec.seen.map((v) => plain(v)),
    [{ v: 'fixed' }],
  );
  assert.equal(good.v, 'good', 'the snapshot object from before is untouched');
});

test('a burst of writes within debounceMs publishes once or a few times, ending on the final content', async () => {
  writeFileSync(F.burst, '{"n":"0"}');
  await getVars('burst', { timeout: 30_000 });
  const rec = record('burst');
  const last = until('burst', (v) => v.n === '50');
  for (let n = 1; n <= 50; n++) writeFileSync(F.burst, JSON.stringify({ n: String(n) }));
  await last;
  rec.stop();
  assert.ok(rec.seen.length >= 1 && rec.seen.length <= 3, `published ${rec.seen.length} times`);
  assert.equal(rec.seen.at(-1)!.n, '50');
});

test('a folder: its JSON/YAML/.env files merged in name order (the last name wins a key), others ignored', async () => {
  writeFileSync(join(F.folder, '10-base.json'), '{"a":"base","b":"base"}');
  writeFileSync(join(F.folder, '20-site.yaml'), 'b: site\nc: site\n');
  writeFileSync(join(F.folder, '.hidden.json'), '{"a":"hidden"}');
  writeFileSync(join(F.folder, 'README.txt'), 'not config');
  assert.deepEqual(plain(await getVars('folder', { timeout: 30_000 })), { a: 'base', b: 'site', c: 'site' });

  let next = until('folder', (v) => v.d === 'env');
  writeFileSync(join(F.folder, '30-last.env'), 'c=env\nd=env\n');
  assert.deepEqual(plain(await next), { a: 'base', b: 'site', c: 'env', d: 'env' });

  next = until('folder', (v) => v.d === undefined);
  unlinkSync(join(F.folder, '30-last.env')); // removing a file of a folder removes its keys
  assert.deepEqual(plain(await next), { a: 'base', b: 'site', c: 'site' });
});

test('a bad first load is a boot failure with the path and the parser message; once fixed, it starts', async () => {
  writeFileSync(F.boot, '{ nope');
  await assert.rejects(getVars('boot', { timeout: 8000 }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'SK_ERR_BOOT_FAILED', String(err));
    assert.ok(err.message.includes(F.boot) && /invalid JSON/.test(err.message), err.message);
    return true;
  });
  writeFileSync(F.boot, '{"ok":"yes"}');
  assert.equal((await getVars('boot', { timeout: 8000 })).ok, 'yes'); // the next getVars starts fresh attempts
});

test('under sidekick serve, bad content or a deleted file after the first publish shows as sourceError in status, cleared when good again', async () => {
  const sdir = dir('serve');
  const flags = join(sdir, 'flags.json');
  writeFileSync(flags, '{"v":"1"}');
  const metricsPort = await freePort();
  const { serve } = await startServe(
    sdir,
    [
      {
        name: 'web',
        workers: 1,
        sidekicks: { declare: { flags: { start: 'boot', source: { type: 'file', path: flags } } } },
      },
    ],
    {},
    { metrics: { listen: `127.0.0.1:${metricsPort}` } },
  );
  const sourceErrorGauge = async (): Promise<string | undefined> => {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    return /^sidekick_source_error\{app="web",sidekick="flags"\} (\d)$/m.exec(text)?.[1];
  };
  try {
    const flagsOf = async (): Promise<SidekickStatusJson & { sourceError?: string; publishes?: number }> =>
      serve.sidekick(await serve.status(), 'web', 'flags')!;
    await serve.waitReady((s) => serve.sidekick(s, 'web', 'flags')?.state === 'running', { timeoutMs: 8000 });
    writeFileSync(flags, '{"v": oops}');
    const bad = await waitFor('sourceError in status', async () => (await flagsOf()).sourceError, { timeoutMs: 5000 });
    assert.match(bad, /flags\.json: invalid JSON/);
    assert.equal(await sourceErrorGauge(), '1', 'sidekick_source_error is 1 on /metrics');
    const during = await flagsOf();
    assert.equal(during.state, 'running', 'the sidekick keeps running');
    assert.equal(during.ready, true);
    assert.equal(during.publishes, 1, 'the bad content was not published');
    writeFileSync(flags, '{"v":"2"}');
    await waitFor('a clean status after the fix', async () => {
      const s = await flagsOf();
      return s.sourceError === undefined && s.publishes === 2 ? s : undefined;
    });
    assert.equal(await sourceErrorGauge(), '0');
    unlinkSync(flags);
    const gone = await waitFor('sourceError for the deleted file', async () => (await flagsOf()).sourceError);
    assert.match(gone, /flags\.json does not exist/);
    assert.equal((await flagsOf()).publishes, 2, 'a deleted file publishes nothing');
    writeFileSync(flags, '{"v":"3"}');
    const back = await waitFor('a clean status after the re-creation', async () => {
      const s = await flagsOf();
      return s.sourceError === undefined && s.publishes === 3 ? s : undefined;
    });
    assert.equal(back.crashes, 0);
    assert.equal(back.bootFailures, 0);
    const exit = await serve.stop('SIGTERM', 8000);
    assert.equal(exit.code, 0);
  } finally {
    await serve.kill();
  }
});

test('parseVars / mergeInNameOrder: a key named "__proto__" stays a key (JSON, YAML, merged)', async () => {
  const { parseVars, mergeInNameOrder } = await import('../src/sources/file-parse.ts');
  const json = parseVars('a.json', '{"__proto__": "x", "b": 1}', 'json');
  assert.deepEqual(Object.entries(json), [
    ['__proto__', 'x'],
    ['b', '1'],
  ]);
  const yaml = parseVars('a.yaml', '__proto__: y\n', 'yaml');
  assert.equal(Object.getOwnPropertyDescriptor(yaml, '__proto__')?.value, 'y');
  const merged = mergeInNameOrder([
    { name: 'b.json', vars: json },
    { name: 'a.yaml', vars: yaml },
  ]);
  assert.equal(Object.getOwnPropertyDescriptor(merged, '__proto__')?.value, 'x', 'the file sorting last wins');
});
