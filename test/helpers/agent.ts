// Shared helpers for the agent tests: a real `sidekick agent` process, a fake central on loopback, NDJSON clients,
// and bounded waits. Every wait has a deadline and says what it waited for.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { adminGet } from '../../src/admin/client.ts';
import { settleWithin } from '../../src/common/async.ts';
import { pidsWhere } from './proc.ts';
import type { AgentCounterValues, AgentGaugeValues } from '../../src/agent/metrics.ts';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'sidekick.js');

export function tmpDir(prefix = 'sk-agent-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Waits until `cond()` is truthy (polling), or throws naming `what` after `timeoutMs`. */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  what: string,
  timeoutMs = 15_000,
  intervalMs = 25,
): Promise<Exclude<T, false | null | undefined | 0 | ''>> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as Exclude<T, false | null | undefined | 0 | ''>;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= until)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`,
      );
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Pids of the live processes in process group `pgid` (Linux /proc; a zombie counts as gone: it holds no file, socket
 * or lock, and an orphaned one may never be reaped in a container without an init).
 */
export function liveInGroup(pgid: number): number[] {
  return pidsWhere((pid) => {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses, so read after the last ')'
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(pgrp) === pgid && state !== 'Z' && state !== 'X';
  });
}

/** Test-friendly agent config: small batches, fast retries, short breaker, everything inside `dir`. */
export function agentConfig(dir: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const base: Record<string, unknown> = {
    socket: join(dir, 'agent.sock'),
    spool: { dir: join(dir, 'spool'), syncIntervalMs: 100 },
    exporter: { type: 'file', dir: join(dir, 'out') },
    batch: { maxRecords: 50, maxDelayMs: 100 },
    retry: { initialDelayMs: 20, maxDelayMs: 200 },
    breaker: { failures: 5, halfOpenAfterMs: 300 },
    stopTimeoutMs: 10_000,
  };
  for (const [k, v] of Object.entries(overrides)) {
    const b = k === 'exporter' ? undefined : base[k]; // an exporter is replaced, not merged
    base[k] =
      b && typeof b === 'object' && v && typeof v === 'object' && !Array.isArray(v)
        ? { ...(b as object), ...(v as object) }
        : v;
  }
  return base;
}

export function writeConfig(dir: string, agent: Record<string, unknown>, name = 'sidekick.config.json'): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({ agent, admin: { socket: join(dir, 'admin.sock') } }, null, 2));
  return file;
}

export interface AgentStatus {
  state: string;
  pid: number;
  worker?: { pid: number; generation: number; state: string; reportedAt?: number };
  recycles: number;
  restarts: number;
  metrics?: { port?: number };
  counters: AgentCounterValues;
  gauges: AgentGaugeValues;
  /** The supervisor process's log lines and drops (the workers' are in counters.logLines/logDropped). */
  log?: { lines: number; dropped: number };
  pipeline?: {
    breaker?: { state: string };
    spool?: { pendingRecords: number; recoveredRecords: number; bufferedBytes: number; diskBytes: number };
  };
}

export interface AgentProcess {
  child: ChildProcess;
  pid: number;
  stderr(): string;
  logs(): Record<string, unknown>[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  status(): Promise<AgentStatus>;
  /** Sends `signal` and waits (bounded) for the exit. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL the whole process group (supervisor and worker): a crash. */
  crash(): Promise<void>;
}

/**
 * Starts `node bin/sidekick.js agent -c FILE` in its own process group. With `ready`, waits for status 'running'.
 * `wrap`: a command that execs the rest, e.g. `['prlimit', '--nofile=256:256', '--']` (the agent keeps its pid).
 * `bin`: another bin/sidekick.js, e.g. an installedCopy() that a user other than the checkout's owner can read.
 * Without `bin`, env SIDEKICK_TEST_AGENT_CMD names a `sidekick` command to run instead (an installed package's).
 */
export async function startAgent(
  configFile: string,
  opts: {
    ready?: boolean;
    env?: Record<string, string>;
    wrap?: string[];
    bin?: string;
    stderrTo?: 'pipe' | number;
  } = {},
): Promise<AgentProcess> {
  // SIDEKICK_TEST_AGENT_CMD: run another installation's `sidekick` (the Debian package's /usr/bin/sidekick, which
  // carries its own node): test/package-deb.test.ts runs agent suites against the installed agent with it.
  const installed = opts.bin ? undefined : process.env.SIDEKICK_TEST_AGENT_CMD;
  const cmd = installed ? [installed] : [process.execPath, opts.bin ?? BIN];
  const argv = [...(opts.wrap ?? []), ...cmd, 'agent', '-c', configFile];
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', opts.stderrTo ?? 'pipe'],
    detached: true,
    env: { ...process.env, SIDEKICK_LOG_LEVEL: 'info', ...opts.env },
  });
  let err = '';
  child.stderr?.on('data', (c: Buffer) => (err += c.toString('utf8')));
  child.stdout!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on('exit', (code, signal) => r({ code, signal })),
  );
  const adminSocket = join(resolve(configFile, '..'), 'admin.sock');
  const proc: AgentProcess = {
    child,
    pid: child.pid!,
    stderr: () => err,
    logs: () =>
      err
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => {
          try {
            return JSON.parse(l) as Record<string, unknown>;
          } catch {
            return {};
          }
        }),
    exited,
    status: async () => ((await adminGet(adminSocket, '/status', 3000)) as { agent: AgentStatus }).agent,
    stop: async (signal = 'SIGTERM', timeoutMs = 30_000) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const r = await settleWithin(exited, timeoutMs); // clears its timer: nothing holds the test process after
      if (!r) {
        proc.crash();
        throw new Error(`agent did not exit within ${timeoutMs} ms after ${signal}\n${err}`);
      }
      return r;
    },
    crash: async () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
      await exited;
      // The worker is in the same group and dies with it, a moment later: wait (bounded) until no live process is
      // left in the group, so nothing holds the socket or the spool lock any more.
      await waitFor(
        () => liveInGroup(child.pid!).length === 0,
        `the agent's process group ${child.pid} to be gone`,
        10_000,
      );
    },
  };
  if (opts.ready !== false) {
    await Promise.race([
      waitFor(async () => (await proc.status()).state === 'running', 'the agent to be running', 20_000, 50),
      exited.then((r) => {
        throw new Error(`agent exited during start (${r.signal ?? r.code})`);
      }),
    ]).catch((e: unknown) => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
      throw new Error(`${String(e)}\n--- agent stderr ---\n${err}`);
    });
  }
  return proc;
}

// ------------------------------------------------------------------------------------------------ fake central

export interface CentralReply {
  status: number;
  headers?: Record<string, string>;
  body?: string;
  /** Delay before answering (a slow central). */
  delayMs?: number;
  /** Destroy the connection without answering (a network error). */
  destroy?: boolean;
  /** Answer only once this settles (e.g. until other requests have arrived: requests in flight at once). */
  hold?: Promise<unknown>;
}

export interface CentralRequest {
  batchId: string;
  records: string[];
  gzip: boolean;
  contentType: string | undefined;
  at: number;
  status: number;
}

export interface FakeCentral {
  url: string;
  port: number;
  requests: CentralRequest[];
  /** Batch ids answered 2xx, in order (duplicates included). */
  deliveredIds: string[];
  /** Records of 2xx batches, in arrival order (duplicates included). */
  delivered: string[];
  /** Change the behaviour: called per request, after the body is read. */
  reply: (req: CentralRequest, n: number) => CentralReply;
  close(): Promise<void>;
}

export async function startCentral(
  reply: (req: CentralRequest, n: number) => CentralReply = () => ({ status: 200 }),
  port = 0,
): Promise<FakeCentral> {
  const central: FakeCentral = {
    url: '',
    port: 0,
    requests: [],
    deliveredIds: [],
    delivered: [],
    reply,
    close: async () => undefined,
  };
  let n = 0;
  const server: Server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      const gzip = req.headers['content-encoding'] === 'gzip';
      if (gzip) body = gunzipSync(body);
      const text = body.toString('utf8');
      const records = text.split('\n').filter((l) => l.length > 0);
      const r: CentralRequest = {
        batchId: String(req.headers['x-sidekick-batch-id'] ?? ''),
        records,
        gzip,
        contentType: req.headers['content-type'],
        at: Date.now(),
        status: 0,
      };
      const answer = central.reply(r, n++);
      r.status = answer.destroy ? -1 : answer.status;
      central.requests.push(r);
      const send = (): void => {
        if (answer.destroy) {
          req.socket.destroy();
          return;
        }
        if (answer.status >= 200 && answer.status < 300) {
          central.deliveredIds.push(r.batchId);
          central.delivered.push(...records);
        }
        res.writeHead(answer.status, answer.headers ?? {}).end(answer.body ?? '');
      };
      const later = (): void => {
        if (answer.delayMs) setTimeout(send, answer.delayMs);
        else send();
      };
      if (answer.hold) void answer.hold.then(later, later);
      else later();
    });
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  const addr = server.address() as net.AddressInfo;
  central.port = addr.port;
  central.url = `http://127.0.0.1:${addr.port}/ingest`;
  central.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return central;
}

/** What central keeps when it drops repeated X-Sidekick-Batch-Id values: records of the first 2xx per batch id. */
export function dedupedByBatchId(central: FakeCentral): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const r of central.requests) {
    if (r.status < 200 || r.status >= 300 || seen.has(r.batchId)) continue;
    seen.add(r.batchId);
    out.push(...r.records);
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ clients

/** One NDJSON record of ~`size` bytes (with its newline) with a unique key `k`. */
export function record(k: string, size = 200): string {
  const head = `{"k":"${k}","t":${Date.now()},"pad":"`;
  const pad = Math.max(0, size - head.length - 3);
  return `${head}${'x'.repeat(pad)}"}\n`;
}

/** Writes `data` on one connection and closes it; resolves once the socket is fully flushed and closed. */
export function sendOnce(socketPath: string, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath);
    s.on('error', reject);
    s.on('connect', () => s.end(data));
    s.on('close', () => resolve());
  });
}

/** A long-lived client: `write` lines, `end` when done. Resolves writes once handed to the kernel. */
export class Client {
  private readonly socket: net.Socket;
  readonly ready: Promise<void>;

  constructor(socketPath: string) {
    this.socket = net.connect(socketPath);
    this.socket.on('error', () => undefined);
    this.ready = new Promise((r, j) => {
      this.socket.once('connect', () => r());
      this.socket.once('error', j);
    });
  }

  write(data: string | Buffer): Promise<void> {
    return new Promise((r) => {
      if (!this.socket.write(data)) this.socket.once('drain', () => r());
      else r();
    });
  }

  end(): Promise<void> {
    return new Promise((r) => {
      this.socket.once('close', () => r());
      this.socket.end();
    });
  }
}

/** Sends `count` records from each of `connections` concurrent long-lived connections; returns every key sent. */
export async function sendLoad(
  socketPath: string,
  opts: { connections: number; count: number; prefix: string; size?: number; chunk?: number; pauseMs?: number },
): Promise<string[]> {
  const keys: string[] = [];
  await Promise.all(
    Array.from({ length: opts.connections }, async (_, c) => {
      const client = new Client(socketPath);
      await client.ready;
      const chunk = opts.chunk ?? 50;
      for (let i = 0; i < opts.count; i += chunk) {
        let buf = '';
        for (let j = i; j < Math.min(opts.count, i + chunk); j++) {
          const k = `${opts.prefix}-${c}-${j}`;
          keys.push(k);
          buf += record(k, opts.size ?? 200);
        }
        await client.write(buf);
        if (opts.pauseMs) await new Promise((r) => setTimeout(r, opts.pauseMs));
      }
      await client.end();
    }),
  );
  return keys;
}

export function keysOf(lines: string[]): string[] {
  return lines.map((l) => (JSON.parse(l) as { k: string }).k);
}

/** Every record line in the file exporter's output directory (final files only), in file-name (time) order. */
export function fileOutput(dir: string): { files: string[]; lines: string[] } {
  if (!existsSync(dir)) return { files: [], lines: [] };
  const names = readdirSync(dir)
    .filter((n) => n.endsWith('.ndjson'))
    .sort();
  const lines: string[] = [];
  for (const n of names)
    lines.push(
      ...readFileSync(join(dir, n), 'utf8')
        .split('\n')
        .filter((l) => l.length > 0),
    );
  return { files: names, lines };
}

/** Dead-letter files: records and sidecars. */
export function deadLetters(spoolDir: string): { records: string[]; sidecars: Record<string, unknown>[] } {
  const dir = join(spoolDir, 'dead-letter');
  if (!existsSync(dir)) return { records: [], sidecars: [] };
  const names = readdirSync(dir).sort();
  const records: string[] = [];
  const sidecars: Record<string, unknown>[] = [];
  for (const n of names) {
    if (n.startsWith('.')) continue;
    const text = readFileSync(join(dir, n), 'utf8');
    if (n.endsWith('.ndjson')) records.push(...text.split('\n').filter((l) => l.length > 0));
    else if (n.endsWith('.json')) sidecars.push(JSON.parse(text) as Record<string, unknown>);
  }
  return { records, sidecars };
}

/** Asserts-friendly summary: which sent keys are missing, and how many extra deliveries there were. */
export function balance(
  sent: string[],
  delivered: string[],
  deadLettered: string[] = [],
  dropped = 0,
): { missing: string[]; duplicates: number; unknown: string[]; ok: boolean } {
  const seen = new Map<string, number>();
  for (const k of [...delivered, ...deadLettered]) seen.set(k, (seen.get(k) ?? 0) + 1);
  const sentSet = new Set(sent);
  const missing = sent.filter((k) => !seen.has(k));
  let duplicates = 0;
  for (const v of seen.values()) duplicates += v - 1;
  const unknown = [...seen.keys()].filter((k) => !sentSet.has(k));
  return { missing, duplicates, unknown, ok: missing.length === dropped && unknown.length === 0 };
}

/** The spool's part of an agent's status (the fields the spool tests read). */
export interface SpoolView {
  pendingRecords: number;
  recoveredRecords: number;
  bufferedBytes: number;
  diskBytes: number;
  droppedRecords: number;
  diskFullDroppedRecords: number;
  diskFull: boolean;
  writeErrors: number;
  stalledMs: number;
}

export function spoolOf(s: AgentStatus): SpoolView {
  const spool = s.pipeline?.spool as SpoolView | undefined;
  assert.ok(spool, 'status has pipeline.spool');
  return spool;
}
