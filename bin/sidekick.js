#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/ (built by `npm install` via the prepare script).
import { main } from '../dist/cli/main.js';

main().catch((err) => {
  process.stderr.write(`sidekick: ${err?.stack ?? err}\n`);
  process.exit(1);
});
