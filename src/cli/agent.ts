// `sidekick agent`: placeholder until the agent lands (issue 3).
import { reportStartupError } from './check.js';
import { loadConfig } from '../config/load.js';

export async function agentCommand(opts: { config?: string }): Promise<number> {
  try {
    await loadConfig(opts.config);
  } catch (err) {
    return reportStartupError(err);
  }
  process.stderr.write('sidekick: the agent is not built yet\n');
  return 1;
}
