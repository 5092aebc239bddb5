// `sidekick serve`: run the apps of a config until SIGTERM/SIGINT (graceful stop, exit 0); SIGHUP reloads.
import { loadConfig } from '../config/load.js';
import { ServeRuntime } from '../serve/serve-runtime.js';
import { childLogger } from '../log/logger.js';
import { describeError } from '../errors.js';
import { checkNodeInternals } from '../common/node-internals.js';
import { reportStartupError } from './check.js';

export async function serveCommand(opts: { config?: string }): Promise<number> {
  const log = childLogger({ component: 'serve' });
  let runtime: ServeRuntime;
  try {
    checkNodeInternals(); // HTTP workers and the agent run on this same Node binary
    const loaded = await loadConfig(opts.config);
    runtime = new ServeRuntime(loaded);
    await runtime.start();
  } catch (err) {
    return reportStartupError(err);
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'stopping: draining HTTP workers, then sidekicks');
      runtime.stop().then(
        () => {
          log.info('stopped');
          resolve(0);
        },
        (err: unknown) => {
          log.error({ err: describeError(err) }, 'stop failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => {
      log.info('SIGHUP: reloading');
      runtime.reload().catch((err: unknown) => log.error({ err: describeError(err) }, 'reload failed'));
    });
  });
}
