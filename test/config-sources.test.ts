// The `source` field of a declared sidekick: validated with errors naming the field, exclusive with `entrypoint`,
// no shared entrypoint needed, relative file paths resolved against the config's folder.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { loadConfig } from '../src/config/load.ts';

const dir = mkdtempSync(join(tmpdir(), 'sk-config-sources-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function load(declare: Record<string, unknown>) {
  const file = join(dir, `c${Math.random().toString(36).slice(2)}.json`);
  const app = { name: 'a', listen: 0, handler: './h.mjs', sidekicks: { declare } };
  writeFileSync(file, JSON.stringify({ apps: [app] }));
  return loadConfig(file);
}

test('a declared source needs no entrypoint; a relative file path resolves against the config folder', async () => {
  const loaded = await load({ flags: { start: 'boot', source: { type: 'file', path: './flags.json' } } });
  const decl = loaded.config.apps[0]!.sidekicks.declare.flags!;
  assert.deepEqual(decl.source, { type: 'file', path: join(dir, 'flags.json'), debounceMs: 50 });
});

test('source errors name the field; source and entrypoint are exclusive; secrets come by env var name', async () => {
  await assert.rejects(
    load({ r: { source: { type: 'redis-sentinel', sentinels: ['nohost'], name: 'm' } } }),
    (err: Error & { code?: string }) =>
      err.code === 'SK_ERR_CONFIG_INVALID' &&
      /apps\[0\]\.sidekicks\.declare\.r\.source\.sentinels\[0\]/.test(err.message),
  );
  await assert.rejects(
    load({ x: { entrypoint: './x.mjs', source: { type: 'file', path: './f.json' } } }),
    /either a source or an entrypoint/,
  );
  await assert.rejects(
    load({
      h: { source: { type: 'http', url: 'http://127.0.0.1:1/', headersFromEnv: { authorization: 'not a name' } } },
    }),
    /headersFromEnv/,
  );
  await assert.rejects(load({ u: { source: { type: 'nope' } } }), /source\.type|type/);
});

test('library mode: configure({ declare }) with only a built-in source needs no entrypoint', async () => {
  const { configure, getVars, shutdown } = await import('sidekick-runtime');
  const file = join(dir, 'only-source.json');
  writeFileSync(file, JSON.stringify({ GREETING: 'hi', PORT: 8080 }));
  configure({ app: 'src-only', declare: { cfg: { start: 'boot', source: { type: 'file', path: file } } } });
  try {
    assert.deepEqual({ ...(await getVars('cfg', { timeout: 10_000 })) }, { GREETING: 'hi', PORT: '8080' });
  } finally {
    await shutdown();
  }
});

test('code wraps a built-in source: sources.file(...) with its own setVars adds a computed key; bad options name the field', async () => {
  const { configure, getVars, onVars, shutdown } = await import('sidekick-runtime');
  const file = join(dir, 'wrapped.json');
  writeFileSync(file, JSON.stringify({ name: 'ada' }));
  process.env.SK_WRAP_FILE = file;
  const entrypoint = new URL('./fixtures/sources/wrap-file.mjs', import.meta.url).pathname;
  configure({ app: 'wrap', entrypoint });
  try {
    assert.deepEqual({ ...(await getVars('w', { timeout: 10_000 })) }, { name: 'ada', NAME_UPPER: 'ADA' });
    const next = new Promise<Record<string, string>>((resolve) => {
      const off = onVars('w', (v) => {
        off();
        resolve({ ...v });
      });
    });
    writeFileSync(file, JSON.stringify({ name: 'grace' }));
    const deadline = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error('no publish in 10 s')), 10_000).unref(),
    );
    assert.deepEqual(await Promise.race([next, deadline]), { name: 'grace', NAME_UPPER: 'GRACE' });
  } finally {
    await shutdown();
  }
  const { sources } = await import('sidekick-runtime');
  const ctx = { signal: new AbortController().signal } as Parameters<ReturnType<typeof sources.file>>[0];
  await assert.rejects(sources.file({ path: '' })(ctx), /sources\.file\(\): path/);
});
