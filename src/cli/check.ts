// `sidekick check`: validate a config. Exit 0 when valid; 78 with the bad field named otherwise.
import { loadConfig } from '../config/load.js';
import { EXIT_CONFIG, isSidekickError } from '../errors.js';

export async function checkCommand(opts: { config?: string }): Promise<number> {
  try {
    const { file, config } = await loadConfig(opts.config);
    const sidekicks = config.apps.reduce((n, a) => n + Object.keys(a.sidekicks.declare).length, 0);
    process.stdout.write(
      `${file}: OK (${config.apps.length} app(s), ${sidekicks} declared sidekick(s), agent ${config.agent ? 'on' : 'off'})\n`,
    );
    return 0;
  } catch (err) {
    return reportStartupError(err);
  }
}

/** Prints a startup error to stderr and returns the exit status: 78 for config problems, 1 otherwise. */
export function reportStartupError(err: unknown): number {
  if (isSidekickError(err) && err.code.startsWith('SK_ERR_CONFIG')) {
    process.stderr.write(`sidekick: ${err.message}\n`);
    return EXIT_CONFIG;
  }
  process.stderr.write(`sidekick: ${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}
