// The demo's sidekick entrypoint: one module dispatching by name (like FrankenPHP's sidekick_entrypoint).
// Only "clock" is code; "flags" is declared as a built-in file source in sidekick.config.mjs and needs none.
import { setVars } from 'sidekick-runtime';

const sidekicks = {
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
