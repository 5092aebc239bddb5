// Agent worker process: runs one AgentPipeline for AgentSupervisor, accepting on the socket fd it inherited.
//
// It obeys the supervisor over IPC. It also stops by itself on SIGTERM/SIGINT (systemd and terminals signal the whole
// group) and when the IPC channel closes (the supervisor died): then it stops accepting at once — so a restarted
// agent finds the socket free — and flushes quickly so the spool lock is released within a few seconds.
import type { Logger } from 'pino';
import { describeError, isSidekickError } from '../../errors.js';
import { childLogger, logCounts } from '../../log/logger.js';
import { stashPartial, takeStashedPartial } from '../handover-partials.js';
import { zeroCounters, zeroGauges, type AgentMetricsSnapshot } from '../metrics.js';
import { AgentPipeline } from './pipeline.js';
import { WORKER_LISTEN_FD, type FromWorker, type ToWorker } from '../worker-protocol.js';

const ORPHAN_STOP_MS = 3000;
const STATS_INTERVAL_MS = 1000;

function send(msg: FromWorker, handle?: unknown): Promise<void> {
  return new Promise((resolve) => {
    if (!process.connected || !process.send) return resolve();
    try {
      process.send(msg, handle as never, {}, () => resolve());
    } catch {
      resolve();
    }
  });
}

export function runWorker(): void {
  const log: Logger = childLogger({ component: 'agent', role: 'worker' });
  let pipeline: AgentPipeline | undefined;
  let statsTimer: NodeJS.Timeout | undefined;
  let ending = false;
  const early: { handle: unknown; msg: Extract<ToWorker, { t: 'conn' }> }[] = [];

  const finish = (code: number): void => {
    if (statsTimer) clearInterval(statsTimer);
    log.info({ code }, 'agent worker exiting');
    // Give the IPC channel a moment to deliver the last message, then leave. With a spool whose filesystem does not
    // answer, process.exit() would never return: libuv joins its thread-pool threads at exit, and one of them waits in
    // the hung write. SIGKILL ends the process (the kernel drops a FUSE/NFS request the filesystem has not taken yet);
    // the final counters, with what could not be written counted, went out with 'stopped' before.
    if (pipeline?.spoolAbandoned) {
      log.warn({ code }, 'spool filesystem not answering: the worker ends itself with SIGKILL');
      setTimeout(() => process.kill(process.pid, 'SIGKILL'), 50);
    } else setTimeout(() => process.exit(code), 50).unref();
    // Only while connected: on a closed channel (the supervisor died, which is what stopped us) disconnect() emits
    // ERR_IPC_DISCONNECTED as an 'error' on process, an uncaught exception (a stack on stderr, exit code 1).
    if (process.connected) process.disconnect?.();
  };

  const start = async (): Promise<void> => {
    try {
      await pipeline!.start();
    } catch (err) {
      log.error({ err }, `agent worker could not start: ${describeError(err)}`);
      await send({ t: 'fatal', code: isSidekickError(err) ? err.code : undefined, message: describeError(err) });
      finish(1);
      return;
    }
    for (const { handle, msg } of early.splice(0)) adopt(handle, msg);
    statsTimer = setInterval(() => {
      if (pipeline?.state === 'running') {
        pipeline.watchSpool();
        void send({ t: 'stats', metrics: withLogCounts(pipeline.metrics()), status: pipeline.status() });
      }
    }, STATS_INTERVAL_MS);
    statsTimer.unref();
    await send({ t: 'ready' });
  };

  const adopt = (handle: unknown, msg: Extract<ToWorker, { t: 'conn' }>): void => {
    if (!handle) return;
    if (!pipeline || pipeline.state !== 'running') {
      early.push({ handle, msg });
      return;
    }
    let partial: Buffer;
    let discarding = msg.discarding;
    try {
      partial = takeStashedPartial(pipeline.config.spool.dir, msg);
    } catch (err) {
      // Its file is gone (someone removed <spool.dir>/handover during the hand-over): skip to the next line.
      log.error({ err, file: msg.partialFile }, 'the unfinished line of a handed-over connection is lost');
      partial = Buffer.alloc(0);
      discarding = true;
    }
    try {
      pipeline.adopt(handle, partial, discarding);
    } catch (err) {
      log.error({ err }, 'could not adopt a handed-over connection');
    }
  };

  const stop = async (timeoutMs: number): Promise<void> => {
    if (ending) return;
    ending = true;
    if (pipeline) await pipeline.stop(timeoutMs).catch((err: unknown) => log.error({ err }, 'stop failed'));
    await send({ t: 'stopped', metrics: withLogCounts(pipeline?.metrics() ?? emptyMetrics()) });
    finish(0);
  };

  const handOver = async (): Promise<void> => {
    if (ending || !pipeline) return;
    ending = true;
    const sends: Promise<void>[] = [];
    await pipeline
      .handOver((conns) => {
        const spoolDir = pipeline!.config.spool.dir;
        for (const c of conns)
          sends.push(
            send({ t: 'conn', ...stashPartial(spoolDir, c.partial), discarding: c.discarding }, c.handle).then(() =>
              (c.handle as { close(): void }).close(),
            ),
          );
      })
      .catch((err: unknown) => log.error({ err }, 'hand-over failed'));
    await Promise.all(sends);
    await send({ t: 'released', metrics: withLogCounts(pipeline.metrics()) });
    finish(0);
  };

  process.on('message', (msg: ToWorker, handle: unknown) => {
    switch (msg.t) {
      case 'init':
        pipeline = new AgentPipeline({
          config: msg.config,
          listenFd: WORKER_LISTEN_FD,
          log,
          clearHandover: msg.first === true,
          ownsProcess: true,
        });
        pipeline.on('state', (state) => void send({ t: 'state', state }));
        if (msg.start) void start();
        else void send({ t: 'standby' });
        break;
      case 'start':
        if (pipeline?.state === 'new') void start();
        break;
      case 'conn':
        adopt(handle, msg);
        break;
      case 'reload':
        if (pipeline?.state === 'running')
          try {
            void send({ t: 'reloaded', restartRequired: pipeline.reload(msg.config).restartRequired });
          } catch (err) {
            log.error({ err }, 'reload failed');
          }
        break;
      case 'handover':
        void handOver();
        break;
      case 'stop':
        void stop(msg.timeoutMs);
        break;
      case 'snapshot':
        if (pipeline)
          void send({
            t: 'snapshot',
            id: msg.id,
            metrics: withLogCounts(pipeline.metrics()),
            status: pipeline.status(),
          });
        break;
    }
  });

  const selfStop = (): void => void stop(pipeline?.config.stopTimeoutMs ?? 25_000);
  process.on('SIGTERM', selfStop);
  process.on('SIGINT', selfStop);
  process.on('SIGHUP', () => undefined); // reload is the supervisor's job
  process.on('disconnect', () => {
    if (ending) return;
    log.warn('agent supervisor went away; stopping');
    void stop(ORPHAN_STOP_MS);
  });
}

/** The pipeline's counters with this process's log counts (the pipeline keeps no process-global state). */
function withLogCounts(m: AgentMetricsSnapshot): AgentMetricsSnapshot {
  const { lines, dropped } = logCounts();
  return { ...m, counters: { ...m.counters, logLines: lines, logDropped: dropped } };
}

function emptyMetrics(): AgentMetricsSnapshot {
  return { counters: zeroCounters(), gauges: zeroGauges() };
}

runWorker();
