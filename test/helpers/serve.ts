// Shared helpers for the end-to-end tests: temp dirs and configs, free loopback ports, a real `sidekick serve` process
// (started, polled until ready through its admin socket, stopped with a deadline, and always cleaned up by pid),
// HTTP GET, a bounded keep-alive load generator, CLI and child-node runners, and the fixtures' events.log.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { pidsWhere } from './proc.ts';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = join(ROOT, 'bin', 'sidekick.js');
export const FIXTURES = join(ROOT, 'test', 'fixtures', 'serve');
export const ENTRYPOINT = join(FIXTURES, 'sidekicks.mjs');
export const HANDLER = join(FIXTURES, 'app.mjs');

/** Environment for child processes: this process's, minus what would confuse them. */
export function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('NODE_TEST') || k.startsWith('SIDEKICK_')) delete env[k];
  delete env.NODE_OPTIONS;
  for (const [k, v] of Object.entries(extra)) if (v === undefined) delete env[k];
  return { ...env, ...Object.fromEntries(Object.entries(extra).filter(([, v]) => v !== undefined)) };
}

export function tempDir(prefix = 'sk-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A loopback port that was free a moment ago (cluster workers cannot listen on port 0: they must share one port). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Polls `probe` until it returns a value other than undefined/false, or throws when the deadline passes. */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  { timeoutMs = 15_000, intervalMs = 25 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// events.log written by the fixtures: `<ms> <app> <name> <generation> <event...>`

export interface EventLine {
  ts: number;
  app: string;
  name: string;
  generation: string;
  event: string;
}

export function readEvents(dir: string): EventLine[] {
  const file = join(dir, 'events.log');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [ts, app, name, generation, ...rest] = line.split(' ');
      return { ts: Number(ts), app: app!, name: name!, generation: generation!, event: rest.join(' ') };
    });
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
  pid: number | undefined;
}

export function httpGet(
  port: number,
  path: string,
  { agent, timeoutMs = 30_000 }: { agent?: http.Agent | false; timeoutMs?: number } = {},
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: agent ?? false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        const pid = res.headers['x-pid'] ? Number(res.headers['x-pid']) : undefined;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8'), pid });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

export async function getJson<T = Record<string, unknown>>(
  port: number,
  path: string,
): Promise<T & { _status: number }> {
  const r = await httpGet(port, path);
  let parsed: T;
  try {
    parsed = JSON.parse(r.text) as T;
  } catch {
    throw new Error(`GET ${path}: status ${r.status}, not JSON: ${r.text.slice(0, 300)}`);
  }
  return Object.assign(parsed as object, { _status: r.status }) as T & { _status: number };
}

export interface LoadFailure {
  at: number;
  error: string;
  /** The worker pid that last answered on this failed request's socket (undefined: a fresh connection). */
  socketPid: number | undefined;
}

export interface LoadResult {
  total: number;
  ok: number;
  statuses: Record<number, number>;
  failures: LoadFailure[];
  /** The first few bodies of responses other than 200 (up to 300 chars each), to say why in an assertion message. */
  errorBodies: string[];
  /** Responses per worker pid. */
  byPid: Map<number, number>;
  /** First and last response time per pid. */
  spanByPid: Map<number, { first: number; last: number }>;
  elapsedMs: number;
}

export interface LoadHandle {
  /** The counts so far (live; final once `done` resolves). */
  result: LoadResult;
  /** Ends the loops after their current request. */
  stop(): void;
  done: Promise<LoadResult>;
}

/**
 * A bounded load generator: `concurrency` loops over one keep-alive agent, each sending GET `path` back to back,
 * until `maxRequests` in total, `maxMs` elapsed, or stop(). Counts statuses and failures (network errors; a status
 * other than 200 is counted in `statuses`, not as a failure). `newConnections`: every request on a connection of its
 * own (`Connection: close`), as clients without keep-alive do; a request nobody answers fails at `requestTimeoutMs`.
 */
export function startLoad({
  port,
  path = '/hello',
  concurrency = 8,
  maxRequests = 100_000,
  maxMs = 5_000,
  requestTimeoutMs = 10_000,
  newConnections = false,
}: {
  port: number;
  path?: string;
  concurrency?: number;
  maxRequests?: number;
  maxMs?: number;
  requestTimeoutMs?: number;
  newConnections?: boolean;
}): LoadHandle {
  const agent = new http.Agent({ keepAlive: !newConnections, maxSockets: concurrency });
  const socketPid = new WeakMap<net.Socket, number>();
  const result: LoadResult = {
    total: 0,
    ok: 0,
    statuses: {},
    failures: [],
    errorBodies: [],
    byPid: new Map(),
    spanByPid: new Map(),
    elapsedMs: 0,
  };
  const started = Date.now();
  let stopped = false;
  let issued = 0;

  const one = (): Promise<void> =>
    new Promise((resolve) => {
      let socket: net.Socket | undefined;
      const headers = newConnections ? { connection: 'close' } : {};
      const req = http.get({ host: '127.0.0.1', port, path, agent, headers, timeout: requestTimeoutMs }, (res) => {
        const pid = res.headers['x-pid'] ? Number(res.headers['x-pid']) : undefined;
        if (res.statusCode !== 200 && result.errorBodies.length < 5) {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => result.errorBodies.push(`${res.statusCode}: ${body.slice(0, 300)}`));
        } else {
          res.resume();
        }
        res.on('error', (err) => fail(err));
        res.on('end', () => {
          const now = Date.now();
          result.total++;
          result.statuses[res.statusCode ?? 0] = (result.statuses[res.statusCode ?? 0] ?? 0) + 1;
          if (res.statusCode === 200) result.ok++;
          if (pid !== undefined) {
            if (socket) socketPid.set(socket, pid);
            result.byPid.set(pid, (result.byPid.get(pid) ?? 0) + 1);
            const span = result.spanByPid.get(pid);
            if (span) span.last = now;
            else result.spanByPid.set(pid, { first: now, last: now });
          }
          resolve();
        });
      });
      let failed = false;
      const fail = (err: Error): void => {
        if (failed) return;
        failed = true;
        result.total++;
        result.failures.push({
          at: Date.now(),
          error: `${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`.trim(),
          socketPid: socket ? socketPid.get(socket) : undefined,
        });
        resolve();
      };
      req.on('socket', (s) => (socket = s));
      req.on('timeout', () => req.destroy(new Error(`request timed out after ${requestTimeoutMs} ms`)));
      req.on('error', fail);
    });

  const loop = async (): Promise<void> => {
    while (!stopped && issued < maxRequests && Date.now() - started < maxMs) {
      issued++;
      await one();
    }
  };
  const done = Promise.all(Array.from({ length: concurrency }, loop)).then(() => {
    agent.destroy();
    result.elapsedMs = Date.now() - started;
    return result;
  });
  return { result, stop: () => (stopped = true), done };
}

// ---------------------------------------------------------------------------------------------------------------
// Child processes

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `node args…` to completion, killed (by its pid) if it outlives `timeoutMs`. */
export function runNode(
  args: string[],
  { cwd = ROOT, env = {}, timeoutMs = 30_000 }: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<RunResult & { timedOut: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** `sidekick …` (bin/sidekick.js) to completion. */
export function runCli(
  args: string[],
  opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<RunResult & { timedOut: boolean }> {
  return runNode([BIN, ...args], opts);
}

/**
 * Pids of live processes whose environment has SK_TEST_DIR=`dir`: every process a test started with that dir
 * (a serve supervisor, its HTTP workers, a CLI run). Linux /proc; returns [] where it cannot look.
 */
export function processesOfTestDir(dir: string): number[] {
  const needle = `\0SK_TEST_DIR=${dir}\0`;
  return pidsWhere((pid) => `\0${readFileSync(`/proc/${pid}/environ`, 'latin1')}`.includes(needle));
}

// ---------------------------------------------------------------------------------------------------------------
// Admin socket

export function adminGet<T = unknown>(socketPath: string, path: string, timeoutMs = 5_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) return reject(new Error(`admin ${path}: status ${res.statusCode}: ${text}`));
        try {
          resolve(JSON.parse(text) as T);
        } catch (err) {
          reject(err as Error);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`admin ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

export interface SidekickStatusJson {
  app: string;
  name: string;
  state: string;
  ready: boolean;
  generation: number;
  bootFailures: number;
  crashes: number;
  lastError?: string;
}

export interface AppStatusJson {
  name: string;
  workers: { pid: number; state: string; rss?: number; log?: { lines: number; dropped: number } }[];
  workerRestarts: number;
  unresponsiveKills: number;
  recycles: number;
  handlerErrors: number;
  handlerTimeouts: number;
  logDropped: number;
  sidekicks: SidekickStatusJson[];
}

export interface StatusJson {
  pid: number;
  reloads: number;
  /** The supervisor process's log lines and drops. */
  log: { lines: number; dropped: number };
  apps: AppStatusJson[];
}

// ---------------------------------------------------------------------------------------------------------------
// `sidekick serve`

export interface AppSpec {
  name: string;
  port?: number;
  workers: number;
  handler?: string;
  drainTimeoutMs?: number;
  sidekicks?: Record<string, unknown>;
  /** Further app fields, as in the config file (handlerTimeoutMs, unresponsiveMs, recycle, …). */
  extra?: Record<string, unknown>;
}

/** Config sections beside `apps`: `admin` fields join the admin socket; the others (`agent`, …) are taken as given. */
export interface ServeConfigExtra {
  admin?: Record<string, unknown>;
  agent?: Record<string, unknown>;
  [section: string]: unknown;
}

/**
 * Writes `<dir>/sidekick.config.json` for `apps` (ports picked if missing); returns its path and the ports.
 * `admin` adds fields to the admin section (`{ showValues: true }`); its socket stays `<dir>/admin.sock`.
 * Other sections (`agent: {…}`) are written as given.
 */
export async function writeServeConfig(
  dir: string,
  apps: AppSpec[],
  { admin = {}, ...sections }: ServeConfigExtra = {},
): Promise<{ file: string; ports: Record<string, number>; adminSocket: string }> {
  const ports: Record<string, number> = {};
  const config = {
    ...sections,
    apps: [] as unknown[],
    admin: { ...admin, socket: join(dir, 'admin.sock') },
  };
  for (const app of apps) {
    const port = app.port ?? (await freePort());
    ports[app.name] = port;
    config.apps.push({
      name: app.name,
      listen: `127.0.0.1:${port}`,
      handler: app.handler ?? HANDLER,
      workers: app.workers,
      ...(app.drainTimeoutMs !== undefined ? { drainTimeoutMs: app.drainTimeoutMs } : {}),
      sidekicks: { entrypoint: ENTRYPOINT, ...app.sidekicks },
      ...app.extra,
    });
  }
  const file = join(dir, 'sidekick.config.json');
  writeFileSync(file, JSON.stringify(config, null, 2));
  return { file, ports, adminSocket: config.admin.socket };
}

/**
 * An `agent` config section for serve whose breaker opens at the first failed export and stays open (central is down:
 * nothing listens on `deadPort`); records sent to `socket` trigger it.
 */
export function breakerOpeningAgent(dir: string, socket: string, deadPort: number): Record<string, unknown> {
  return {
    socket,
    spool: { dir: join(dir, 'spool'), syncIntervalMs: 100 },
    exporter: { type: 'http', url: `http://127.0.0.1:${deadPort}/ingest`, timeoutMs: 1_000 },
    batch: { maxRecords: 10, maxDelayMs: 100 },
    retry: { initialDelayMs: 50, maxDelayMs: 200 },
    breaker: { failures: 1, halfOpenAfterMs: '10m' },
    stopTimeoutMs: 2_000,
  };
}

export class ServeProcess {
  readonly proc: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** Every HTTP worker pid ever seen in a status (killed in cleanup if one outlives the supervisor). */
  readonly seenPids = new Set<number>();

  constructor(
    readonly configFile: string,
    readonly adminSocket: string,
    readonly expectedWorkers: Record<string, number>,
    env: Record<string, string>,
    /** The test's temp dir (also SK_TEST_DIR of every process this serve starts). */
    readonly dir: string,
    /** The CLI arguments; `['serve']` alone finds the config in `dir` (the working directory). */
    args: string[] = ['serve', '-c', configFile],
    /** Its stderr: a pipe read into `stderr` (default), or a file descriptor of the test's (a FIFO). */
    stderrTo: 'pipe' | number = 'pipe',
  ) {
    this.proc = spawn(process.execPath, [BIN, ...args], {
      cwd: dir,
      env: childEnv(env),
      stdio: ['ignore', 'pipe', stderrTo],
    });
    this.proc.stdout!.on('data', (c: Buffer) => (this.stdout += c.toString('utf8')));
    this.proc.stderr?.on('data', (c: Buffer) => (this.stderr += c.toString('utf8')));
    this.exited = new Promise((resolve) =>
      this.proc.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve({ code, signal });
      }),
    );
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** The last `n` characters of the logs, for assertion messages. */
  logs(n = 4000): string {
    return `--- stderr ---\n${this.stderr.slice(-n)}\n--- stdout ---\n${this.stdout.slice(-1000)}`;
  }

  async status(): Promise<StatusJson> {
    const s = await adminGet<StatusJson>(this.adminSocket, '/status');
    for (const app of s.apps) for (const w of app.workers) if (w.pid) this.seenPids.add(w.pid);
    return s;
  }

  app(status: StatusJson, name: string): AppStatusJson {
    const app = status.apps.find((a) => a.name === name);
    if (!app) throw new Error(`no app ${name} in status`);
    return app;
  }

  sidekick(status: StatusJson, app: string, name: string): SidekickStatusJson | undefined {
    return this.app(status, app).sidekicks.find((s) => s.name === name);
  }

  /**
   * Polls status until every app has exactly its configured number of workers, all `listening`, and `extra` (if
   * given) accepts the status. Fails early if the process exits.
   */
  async waitReady(
    extra?: (s: StatusJson) => boolean,
    { timeoutMs = 30_000, what = 'all HTTP workers listening' }: { timeoutMs?: number; what?: string } = {},
  ): Promise<StatusJson> {
    return waitFor(
      what,
      async () => {
        if (this.exitInfo) {
          throw new Error(`serve exited early (${JSON.stringify(this.exitInfo)})\n${this.logs()}`);
        }
        const s = await this.status();
        const ok = Object.entries(this.expectedWorkers).every(([name, n]) => {
          const app = s.apps.find((a) => a.name === name);
          return app && app.workers.length === n && app.workers.every((w) => w.state === 'listening');
        });
        return ok && (!extra || extra(s)) ? s : undefined;
      },
      { timeoutMs, intervalMs: 50 },
    ).catch((err: Error) => {
      if (err.message.includes('serve exited early')) throw err;
      throw new Error(`${err.message}\n${this.logs()}`);
    });
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.exitInfo) this.proc.kill(sig);
  }

  /** Sends `sig` (SIGTERM by default) and waits for the exit, up to `timeoutMs`. */
  async stop(
    sig: NodeJS.Signals = 'SIGTERM',
    timeoutMs = 20_000,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.signal(sig);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`serve did not exit within ${timeoutMs} ms of ${sig}\n${this.logs()}`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Cleanup for `after`/`finally`: kill (by pid) the supervisor and any worker it left behind. Never throws. */
  async kill(): Promise<void> {
    if (!this.exitInfo) {
      this.proc.kill('SIGKILL');
      await Promise.race([this.exited, sleep(5_000)]);
    }
    // Workers notice the lost IPC channel and drain; do not leave one behind if it did not.
    await sleep(50);
    for (const pid of new Set([...this.seenPids, ...processesOfTestDir(this.dir)])) {
      let cmdline: string;
      try {
        cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        continue; // gone
      }
      if (!/worker-main|host-main|sidekick/.test(cmdline)) continue; // pid reused: not ours
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // raced with its exit
      }
    }
  }
}

/** Starts `sidekick serve -c <config>` with SK_TEST_DIR=dir; call waitReady() next, and kill() in cleanup. */
export async function startServe(
  dir: string,
  apps: AppSpec[],
  env: Record<string, string> = {},
  configExtra: ServeConfigExtra = {},
  { stderrTo = 'pipe' }: { stderrTo?: 'pipe' | number } = {},
): Promise<{ serve: ServeProcess; ports: Record<string, number>; configFile: string }> {
  const { file, ports, adminSocket } = await writeServeConfig(dir, apps, configExtra);
  const serve = new ServeProcess(
    file,
    adminSocket,
    Object.fromEntries(apps.map((a) => [a.name, a.workers])),
    { SIDEKICK_LOG_LEVEL: 'info', ...env, SK_TEST_DIR: dir },
    dir,
    ['serve', '-c', file],
    stderrTo,
  );
  return { serve, ports, configFile: file };
}
