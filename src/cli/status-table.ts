// `sidekick status` for a person: the admin socket's status JSON turned into a compact, aligned summary (one line per
// HTTP worker and per sidekick, one block for the agent), like `pm2 ls`. A pure function of the JSON and the time, so
// it is tested without a running instance. Every field is optional here: the CLI may talk to an older or newer
// instance than itself, and a missing field prints as `-` instead of failing.
import type { AgentStatus } from '../agent/supervisor/agent-status.js';
import type { ListenAddress } from '../config/schema.js';
import type { AppStatus } from '../serve/app-supervisor.js';
import type { ServeStatus } from '../serve/serve-runtime.js';
import {
  ago,
  bytes,
  duration,
  num,
  oneLine,
  paint,
  perSec,
  table,
  withParts,
  type Cell,
  type Style,
} from './format.js';

/** T with every field optional, all the way down. */
type Loose<T> = T extends (infer U)[] ? Loose<U>[] : T extends object ? { [K in keyof T]?: Loose<T[K]> } : T;

/** GET /status: a `sidekick serve` instance's (ServeStatus), or `{agent}` from `sidekick agent`. */
export type StatusJson = ServeStatus;
type AppStatusJson = AppStatus;

export type LooseStatus = Loose<StatusJson>;

const GOOD = new Set(['listening', 'running', 'ready', 'closed']);
const BAD = new Set(['failed', 'stopped', 'dead', 'open', 'exited']);

/** Green for healthy states, red for failed ones, yellow for everything in between (starting, backoff, draining…). */
function stateStyle(state: string | undefined): Style | undefined {
  if (state === undefined) return undefined;
  return GOOD.has(state) ? 'ok' : BAD.has(state) ? 'bad' : 'warn';
}

/** A counter that should be zero: yellow when it is not. */
function counter(n: number | undefined): Cell {
  return { text: num(n), style: n ? 'warn' : undefined };
}

function listenText(listen: Loose<ListenAddress> | undefined): string {
  if (!listen) return '-';
  const l = listen as { kind?: string; host?: string; port?: number; path?: string };
  return l.kind === 'unix' ? `unix:${l.path ?? '?'}` : `${l.host ?? '?'}:${l.port ?? '?'}`;
}

/** `label value  label value …`, the values painted. */
function pairs(items: [label: string, value: Cell][], color: boolean): string {
  return items
    .map(([label, value]) => {
      const v = typeof value === 'string' ? { text: value } : value;
      return `${paint(label, 'dim', color)} ${paint(v.text, v.style, color)}`;
    })
    .join('  ');
}

function appBlock(app: Loose<AppStatusJson>, now: number, color: boolean): string[] {
  const workers = app.workers ?? [];
  const lines = [
    `${paint(`app ${app.name ?? '?'}`, 'bold', color)}  ${listenText(app.listen)}  ${workers.length} worker${workers.length === 1 ? '' : 's'}`,
  ];
  if (workers.length) {
    lines.push(
      ...table(
        ['PID', 'STATE', 'UPTIME', 'RSS'],
        workers.map((w) => {
          const started = w.startedAt ? Date.parse(w.startedAt) : NaN;
          return [
            num(w.pid),
            { text: w.state ?? '-', style: stateStyle(w.state) },
            Number.isNaN(started) ? '-' : duration(now - started),
            bytes(w.rss),
          ];
        }),
        { indent: '  ', color },
      ),
    );
  }
  lines.push(
    `  ${pairs(
      [
        ['worker restarts', counter(app.workerRestarts)],
        ['unresponsive kills', counter(app.unresponsiveKills)],
        ['recycles', num(app.recycles)],
        ['handler errors', counter(app.handlerErrors)],
        ['handler timeouts', counter(app.handlerTimeouts)],
        ['task timeouts', counter(app.taskTimeouts)],
        // only once it happened: stderr was not drained (README "Logs")
        ...(app.logDropped ? [['log lines dropped', counter(app.logDropped)] as [string, Cell]] : []),
      ],
      color,
    )}`,
  );
  const host = app.sidekickHost;
  if (host) {
    lines.push(
      `  ${pairs(
        [
          ['sidekick host', num(host.pid)],
          ['state', { text: host.state ?? '-', style: stateStyle(host.state) }],
          ['rss', bytes(host.rss)],
          ['host restarts', counter(host.restarts)],
          ...(host.lastExit ? ([['last exit', { text: host.lastExit, style: 'warn' }]] as [string, Cell][]) : []),
          ...(host.log?.dropped ? ([['log lines dropped', counter(host.log.dropped)]] as [string, Cell][]) : []),
        ],
        color,
      )}`,
    );
  }
  const sidekicks = app.sidekicks ?? [];
  if (!sidekicks.length) {
    lines.push('  no sidekicks running');
    return lines;
  }
  lines.push('');
  lines.push(
    ...table(
      [
        'SIDEKICK',
        'STATE',
        'READY',
        'GEN',
        'CRASHES',
        'BOOT FAILURES',
        'RESTARTS',
        'LAST PUBLISH',
        'KEYS',
        'BYTES',
        'PUBLISHES',
      ],
      sidekicks.map((s) => [
        s.name ?? '?',
        { text: s.state ?? '-', style: stateStyle(s.state) },
        s.ready === undefined ? '-' : { text: s.ready ? 'yes' : 'no', style: s.ready ? undefined : 'warn' },
        num(s.generation),
        counter(s.crashes),
        counter(s.bootFailures),
        withParts(s.restarts),
        ago(s.publishedAt, now),
        num(s.keys),
        bytes(s.bytes),
        num(s.publishes),
      ]),
      { indent: '  ', color },
    ),
  );
  for (const s of sidekicks) {
    const tasks = taskLine(s, color);
    if (tasks) lines.push(`  ${s.name ?? '?'}: ${tasks}`);
    // A source whose data is bad right now (it keeps serving its last good snapshot): what to fix, in red.
    if (s.sourceError)
      lines.push(`  ${s.name ?? '?'}: ${paint(`source error: ${oneLine(s.sourceError)}`, 'bad', color)}`);
    if (!s.lastError) continue;
    const style: Style = s.state === 'running' ? 'dim' : 'bad';
    lines.push(`  ${s.name ?? '?'}: ${paint(`last error: ${oneLine(s.lastError)}`, style, color)}`);
  }
  return lines;
}

/** A sidekick's tasks, once it was sent any (or is a pool): its threads, what they do, how long tasks take. */
function taskLine(s: Loose<AppStatusJson['sidekicks'][number]>, color: boolean): string | undefined {
  const p = s.pool;
  const t = s.tasks;
  if (!p || (!t?.sent && (p.threads ?? 1) <= 1)) return undefined;
  const d = p.durations;
  const mean = d?.count
    ? `${((d.sum ?? 0) / d.count) * 1000 < 1 ? '<1' : Math.round(((d.sum ?? 0) / d.count) * 1000)} ms`
    : '-';
  return pairs(
    [
      ['tasks: threads', num(p.threads)],
      ['busy', num(p.busy)],
      ['queued', num(p.queued)],
      ['sent', num(t?.sent)],
      ['failed', counter(t?.failed)],
      ['cancelled', num(t?.cancelled)],
      ['thread crashes', counter(p.crashes)],
      ['mean run', mean],
    ],
    color,
  );
}

function agentBlock(a: Loose<AgentStatus>, now: number, color: boolean): string[] {
  const p = a.pipeline;
  const c = a.counters;
  const g = a.gauges;
  const head: [string, Cell][] = [['pid', num(a.pid)]];
  if (a.worker) head.push(['worker', `${num(a.worker.pid)} (gen ${num(a.worker.generation)})`]);
  if (a.startedAt !== undefined) head.push(['up', duration(now - a.startedAt)]);
  head.push(['restarts', counter(a.restarts)], ['recycles', num(a.recycles)]);
  if (p?.exporter) head.push(['exporter', `${p.exporter.type ?? '?'} ${p.exporter.target ?? ''}`.trim()]);
  const lines = [
    `${paint('agent', 'bold', color)}  ${paint(a.state ?? '-', stateStyle(a.state), color)}  ${pairs(head, color)}`,
  ];
  const rows: [string, string][] = [];

  const breaker = p?.breaker?.state;
  let breakerText = paint(breaker ?? 'unknown', stateStyle(breaker ?? 'unknown'), color);
  if (breaker === 'open' && p?.breaker?.retryInMs) breakerText += ` (next try in ${duration(p.breaker.retryInMs)})`;
  if (p?.lastExportError?.message) {
    const when = p.lastExportError.at !== undefined ? ` ${ago(p.lastExportError.at, now)}` : '';
    breakerText += `  ${paint(`last export error${when}: ${oneLine(p.lastExportError.message)}`, 'warn', color)}`;
  }
  rows.push(['breaker', breakerText]);

  let spool = `${num(g?.spoolRecords)} records  ${bytes(g?.spoolBytes)}`;
  if (p?.spool?.diskFull) spool += `  ${paint('disk full', 'bad', color)}`;
  if (p?.spool?.dirLost)
    spool += `  ${paint(`directory removed while running ${p.spool.dirLost}× (recreated)`, 'warn', color)}`;
  if (g?.spillPendingBytes)
    spool += `  spill ${bytes(g.spillPendingBytes)} pending (oldest ${g.spillOldestSeconds ?? 0}s)`;
  rows.push(['spool', spool]);

  let clients = `${num(g?.openConnections)} connected`;
  if (p?.clients) {
    const { profiling, sampleRate, reason } = p.clients;
    clients += `  profiling ${profiling === undefined ? '-' : profiling ? 'on' : 'off'}`;
    if (profiling && sampleRate !== undefined && sampleRate < 1) clients += ` (sample rate ${sampleRate})`;
    if (reason && reason !== 'ok') clients += ` (${reason})`;
  }
  rows.push(['clients', clients]);

  rows.push([
    'rate',
    `received ${perSec(a.rates?.receivedPerSec)}  exported ${perSec(a.rates?.exportedPerSec)}` +
      paint(`  (total received ${num(c?.received)}, exported ${num(c?.exported)})`, 'dim', color),
  ]);

  const dropped = withParts(c?.dropped);
  rows.push([
    'lost',
    pairs(
      [
        ['dropped', { text: dropped, style: dropped !== '0' && dropped !== '-' ? 'warn' : undefined }],
        // by reason when the agent reports them (rejected, otlp_partial, unmappable); older agents: the total
        ['dead-lettered', c?.deadLetteredBy ? withParts(c.deadLetteredBy) : counter(c?.deadLettered)],
        ['client drops', counter(c?.clientDropped)],
        ...(c?.logDropped ? [['log lines dropped', counter(c.logDropped)] as [string, Cell]] : []),
      ],
      color,
    ),
  ]);

  if (p?.exporter?.type === 'otlp' && c?.otlp) {
    const o = c.otlp;
    rows.push([
      'otlp',
      `spans ${num(o.spans)}  rejected logs ${num(o.rejectedLogs)}, spans ${num(o.rejectedSpans)}` +
        paint(`  (values truncated ${num(o.truncated)}, flattened ${num(o.flattened)})`, 'dim', color),
    ]);
  }

  if (a.replay) {
    const r = a.replay;
    const eta = r.etaSeconds === undefined ? 'unknown (nothing exported yet)' : duration(r.etaSeconds * 1000);
    rows.push([
      'replay',
      paint(`${num(r.backlogRecords)} records left at ${perSec(r.exportedPerSec)}, ETA ${eta}`, 'warn', color),
    ]);
  }
  const width = Math.max(...rows.map(([label]) => label.length));
  for (const [label, value] of rows) lines.push(`  ${paint(label.padEnd(width), 'dim', color)}  ${value}`);
  return lines;
}

/** The human summary of a status JSON at time `now` (ms since the epoch); ends with a newline. */
export function formatStatus(status: LooseStatus, now: number, { color = false }: { color?: boolean } = {}): string {
  const blocks: string[][] = [];
  if (status.apps) {
    const head: [string, Cell][] = [
      ['pid', num(status.pid)],
      ['up', status.uptimeMs === undefined ? '-' : duration(status.uptimeMs)],
      ['reloads', num(status.reloads)],
    ];
    if (status.config) head.push(['config', status.config]);
    if (status.log?.dropped) head.push(['log lines dropped', counter(status.log.dropped)]);
    blocks.push([`${paint('sidekick serve', 'bold', color)}  ${pairs(head, color)}`]);
    for (const app of status.apps) blocks.push(appBlock(app, now, color));
  }
  if (status.agent) blocks.push(agentBlock(status.agent, now, color));
  if (!blocks.length) blocks.push(['nothing to show: the instance reported no apps and no agent']);
  return `${blocks.map((b) => b.join('\n')).join('\n\n')}\n`;
}
