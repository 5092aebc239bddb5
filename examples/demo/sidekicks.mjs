// The demo's sidekick entrypoint: one module dispatching by name (like FrankenPHP's sidekick_entrypoint).
// "flags" watches flags.json and publishes its string fields as vars; every HTTP worker sees the change at once.
import { readFile } from 'node:fs/promises';
import { watch } from 'node:fs';
import { setVars } from 'sidekick';

const FLAGS_FILE = new URL('./flags.json', import.meta.url);

async function publishFlags(log) {
  try {
    const parsed = JSON.parse(await readFile(FLAGS_FILE, 'utf8'));
    const vars = {};
    for (const [k, v] of Object.entries(parsed)) vars[k] = typeof v === 'string' ? v : JSON.stringify(v);
    setVars(vars);
  } catch (err) {
    // A half-saved or invalid file keeps the last good snapshot; the next save publishes again.
    log(`flags.json not applied: ${err.message}`);
  }
}

const sidekicks = {
  async flags({ signal }) {
    const log = (msg) => process.stderr.write(`[flags] ${msg}\n`);
    await publishFlags(log);
    // Watch the directory, not the file: editors save by rename, which would orphan a watch on the old inode.
    const watcher = watch(new URL('.', FLAGS_FILE), (_event, file) => {
      if (file === 'flags.json') void publishFlags(log);
    });
    signal.addEventListener('abort', () => watcher.close());
  },
  // Declared with `every: '1s'` in the config: called on that schedule, never overlapping.
  clock() {
    setVars({ now: new Date().toISOString() });
  },
};

export default async function dispatch(ctx) {
  const run = sidekicks[ctx.name];
  if (!run) throw new Error(`unknown sidekick "${ctx.name}"`);
  await run(ctx);
}
