// `sidekick agent [-c FILE]`: run only the telemetry agent (the config's `agent` section).
//
// Exit statuses: 0 after a graceful stop (SIGTERM/SIGINT), 78 when the config is invalid at start (the field is named),
// 1 when the agent cannot start (socket in use by a live process, spool locked, …). SIGHUP reloads the config; an
// invalid file is logged and the agent keeps running on the previous one.
import { agentConfigOf, loadConfig, type LoadedConfig } from '../config/load.js';
import type { AgentConfig } from '../config/schema.js';
import { describeError, isSidekickError } from '../errors.js';
import { AgentSupervisor } from '../agent/supervisor/supervisor.js';
import { childLogger } from '../log/logger.js';
import { checkNodeInternals } from '../common/node-internals.js';
import { reportStartupError } from './check.js';
import { Coalesced } from '../common/coalesce.js';

export async function agentCommand(opts: { config?: string }): Promise<number> {
  let loaded: LoadedConfig;
  try {
    checkNodeInternals(); // the agent's worker runs on this same Node binary
    loaded = await loadConfig(opts.config);
    agentConfigOf(loaded.config);
  } catch (err) {
    return reportStartupError(err);
  }
  const log = childLogger({ component: 'agent' });
  // Standalone, the agent serves `sidekick status` on the config's admin socket itself.
  const supervisor = new AgentSupervisor({
    config: agentConfigOf(loaded.config),
    adminSocket: loaded.config.admin.socket,
    configFile: loaded.file,
    log,
  });
  // Signals that arrive while starting are honoured once the start settles.
  let stopRequested = false;
  let started = false;
  const onStop = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'stopping');
    stopRequested = true;
    if (started) void supervisor.stop();
  };
  /** SIGHUP: load and validate the file first; an invalid one is logged and the agent keeps its config. */
  const reload = async (): Promise<void> => {
    let next: AgentConfig;
    try {
      next = agentConfigOf((await loadConfig(loaded.file)).config);
    } catch (err) {
      log.error(
        { code: isSidekickError(err) ? err.code : undefined },
        `reload rejected, still running on the previous config: ${describeError(err)}`,
      );
      return;
    }
    await supervisor.reload(next);
  };
  // One reload at a time, each reading the file when it starts: SIGHUPs during one become exactly one more after it.
  // Run side by side, two reloads could read the file out of order (the older edit applied last) and both compare
  // against the same previous config while the first was still applying it.
  const reloads = new Coalesced(
    () => reload().catch((err: unknown) => log.error({ err: describeError(err) }, 'reload failed')),
    (first) =>
      log.info(
        first
          ? 'reload requested while one runs; queued: one more reload follows it, reading the config then'
          : 'reload requested while one runs; joins the reload already queued',
      ),
  );
  const onHup = (): void => {
    if (!started) return;
    log.info({ signal: 'SIGHUP' }, 'reloading config');
    void reloads.request();
  };
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);
  process.on('SIGHUP', onHup);
  try {
    try {
      await supervisor.start();
    } catch (err) {
      return reportStartupError(err);
    }
    started = true;
    if (stopRequested) void supervisor.stop();
    await supervisor.done;
    return 0;
  } finally {
    process.off('SIGTERM', onStop);
    process.off('SIGINT', onStop);
    process.off('SIGHUP', onHup);
  }
}
