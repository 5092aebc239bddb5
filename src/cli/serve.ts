// `sidekick serve`: placeholder, filled in by the runtime.
import { reportStartupError } from './check.js';
import { loadConfig } from '../config/load.js';

export async function serveCommand(opts: { config?: string }): Promise<number> {
  try {
    await loadConfig(opts.config);
  } catch (err) {
    return reportStartupError(err);
  }
  return 1;
}
