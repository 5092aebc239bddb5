// A real Debian nginx + PHP-FPM stack for the agent tests and the B7 benchmark: everything (configs, sockets, pid
// files, logs, nginx temp paths) inside one temp dir, loopback only, both processes started here in their own process
// groups and stopped by pid (SIGTERM, bounded wait, then SIGKILL of the group). Nothing is installed or touched
// outside the temp dir: no /etc/nginx/sites-enabled, no systemd, no /run.
//
//   const stack = await startPhpStack({ agentSocket });           // one pool with the client as auto_prepend_file
//   await fetch(stack.url + 'r/1');                               // nginx → fastcgi → the page
//   stack.accessLogLines();                                       // [{ pool, status, uri }] one per request nginx logged
//   await stack.stop();
//
// Several pools (B7 runs one with the client and one without, side by side): `pools: [{ name, client }]`; each pool
// gets its own FPM socket, its own nginx server block on its own loopback port and its own access log.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  accessSync,
  constants as fsConstants,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { Agent as HttpAgent, request } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { delimiter, join, resolve } from 'node:path';
import { tmpDir, waitFor } from './agent.ts';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const PHP_CLIENT = join(ROOT, 'clients', 'php', 'sidekick-agent.php');
/** The default page: echoes a short body. */
export const PHP_FPM_PAGE = join(ROOT, 'test', 'fixtures', 'php-fpm', 'index.php');

function findExecutable(names: string[], extraDirs: string[]): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...extraDirs];
  for (const name of names)
    for (const dir of dirs) {
      const p = join(dir, name);
      try {
        accessSync(p, fsConstants.X_OK);
        return p;
      } catch {
        // not here
      }
    }
  return undefined;
}

/** php-fpm8.2 or php-fpm, on PATH or in /usr/sbin (Debian installs it there, outside a normal user's PATH). */
export const PHP_FPM_BIN = findExecutable(['php-fpm8.2', 'php-fpm'], ['/usr/sbin', '/usr/local/sbin']);
export const NGINX_BIN = findExecutable(['nginx'], ['/usr/sbin', '/usr/local/sbin']);
const FASTCGI_PARAMS = '/etc/nginx/fastcgi_params';

/**
 * Why the stack cannot run here (tests skip with it), or false. Under CI (`CI=true`) tests must not skip on it: they
 * fail instead, so a CI image without the packages cannot pass silently (.ci/run installs them).
 */
export const PHP_FPM_MISSING: string | false = (() => {
  const missing: string[] = [];
  if (!PHP_FPM_BIN) missing.push('php-fpm (apt-get install php-fpm)');
  if (!NGINX_BIN) missing.push('nginx (apt-get install nginx-light)');
  else if (!existsSync(FASTCGI_PARAMS)) missing.push(`${FASTCGI_PARAMS} (apt-get install nginx-common)`);
  return missing.length ? `not installed: ${missing.join(', ')}; nginx + PHP-FPM tests skipped` : false;
})();

/**
 * The `skip` of an nginx + PHP-FPM suite: outside CI a machine without them skips (and says why); under CI nothing
 * is skipped, so the suite's first test (`PHP_FPM_MISSING === false`) fails instead.
 */
export const PHP_FPM_SKIP: string | false = PHP_FPM_MISSING && process.env.CI !== 'true' ? PHP_FPM_MISSING : false;
if (PHP_FPM_SKIP) console.log(PHP_FPM_SKIP);

const IS_ROOT = process.getuid?.() === 0;

/** nginx modules compiled out of this build (nginx-light has them all in Debian 12; other builds may not). */
function nginxWithout(): Set<string> {
  if (!NGINX_BIN) return new Set();
  const r = spawnSync(NGINX_BIN, ['-V'], { encoding: 'utf8' });
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  return new Set([...text.matchAll(/--without-http_(\w+)_module/g)].map((m) => m[1]!));
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as AddressInfo).port;
      srv.close(() => res(port));
    });
  });
}

export interface PoolOptions {
  /** Pool name: [a-z0-9_-]+; names the FPM socket, the nginx server block and its access log. */
  name: string;
  /** Load the PHP client as auto_prepend_file (default true). */
  client?: boolean;
  /** The file to prepend instead of the repo's client (another version of it, for a same-run comparison). */
  prepend?: string;
  /** pm.max_children (pm = static). Default: the stack's `children`, else 4. */
  children?: number;
  /** The script every request runs (SCRIPT_FILENAME). Default: the stack's `page`. */
  page?: string;
  /** Extra env[...] lines for this pool, on top of the stack's (SIDEKICK_AGENT_SOCKET here overrides agentSocket). */
  env?: Record<string, string>;
}

export interface PhpStackOptions {
  /**
   * The agent's socket: env[SIDEKICK_AGENT_SOCKET] of every pool. Absent: no such line, so the client finds the socket
   * by its default rule (/run/sidekick/agent.sock when /run/sidekick exists), as on a host with the Debian package.
   */
  agentSocket?: string;
  /**
   * An `include = <file>` line in every pool (after the pool's own lines): the Debian package's one-line setup
   * (`include = /etc/sidekick/php-fpm-include.conf`). Pair it with `client: false` so the repo's client is not
   * prepended as well.
   */
  poolInclude?: string;
  /** Extra env[...] lines for every pool (FPM clears the environment: only what is listed here reaches PHP). */
  env?: Record<string, string>;
  /** pm.max_children per pool (pm = static). Default 4. */
  children?: number;
  /** The script every request runs. Default test/fixtures/php-fpm/index.php. */
  page?: string;
  /** Default: one pool named 'app' with the client. */
  pools?: PoolOptions[];
  /**
   * Start nginx and php-fpm in their own process groups (default true: a test runner's signals do not reach them, and
   * stop() kills each group). A benchmark passes false so they stay in its group, which bench/run.ts kills on timeout.
   */
  detached?: boolean;
}

export interface AccessLine {
  pool: string;
  status: number;
  uri: string;
}

export interface PhpStack {
  dir: string;
  /** Base URL (with a trailing slash) of the first pool. */
  url: string;
  /** Base URL per pool name. */
  urls: Record<string, string>;
  nginxPid: number;
  fpmPid: number;
  /** One entry per request nginx logged (all pools, or one). Read from disk at each call. */
  accessLogLines(pool?: string): AccessLine[];
  /** Pids of the php-fpm master's live children (its pool workers), read from /proc at each call (Linux). */
  workerPids(): number[];
  /** PHP's own error log (warnings, notices, fatals of the pages and of the client). */
  phpErrors(): string;
  /** php-fpm's and nginx's error logs, for failure messages. */
  logs(): string;
  /** SIGTERM both, wait (bounded), SIGKILL their process groups if still there; idempotent. Keeps the dir. */
  stop(timeoutMs?: number): Promise<void>;
  /** stop(), then remove the temp dir. */
  cleanup(): Promise<void>;
}

interface Proc {
  child: ChildProcess;
  detached: boolean;
  exited: Promise<void>;
  output(): string;
}

function launch(bin: string, args: string[], cwd: string, detached: boolean): Proc {
  const child = spawn(bin, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], detached, env: process.env });
  let out = '';
  const keep = (c: Buffer): void => {
    if (out.length < 64 * 1024) out += c.toString('utf8');
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r();
    else child.once('exit', () => r());
  });
  child.once('error', (err) => (out += `\nspawn error: ${err.message}`));
  return { child, detached, exited, output: () => out };
}

function alive(p: Proc): boolean {
  return p.child.exitCode === null && p.child.signalCode === null;
}

async function stopProc(p: Proc | undefined, timeoutMs: number): Promise<void> {
  if (!p?.child.pid) return;
  if (alive(p)) {
    try {
      process.kill(p.child.pid, 'SIGTERM'); // nginx: fast shutdown; php-fpm: terminate (children included)
    } catch {
      // gone
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([p.exited, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }
  // Whatever is left in its process group (a master that did not exit, or a worker/child it left behind); without
  // a group of its own, the master only (its children exit with it).
  try {
    if (p.detached) process.kill(-p.child.pid, 'SIGKILL');
    else if (alive(p)) process.kill(p.child.pid, 'SIGKILL');
  } catch {
    // nothing left
  }
  if (alive(p)) await Promise.race([p.exited, new Promise((r) => setTimeout(r, 2000))]);
}

/** Live (not zombie) children of `pid`, from /proc/<n>/stat (Linux). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // pid (comm) state ppid …: comm may hold spaces and parentheses, so read after the last ')'
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(ppid) === pid && state !== 'Z') out.push(Number(name));
  }
  return out.sort((a, b) => a - b);
}

/** GET over loopback without keep-alive; status or an error. Bounded. */
function probe(url: string, timeoutMs = 2000): Promise<number> {
  return new Promise((res, rej) => {
    const req = request(url, { agent: false, timeout: timeoutMs }, (r) => {
      r.resume();
      r.on('end', () => res(r.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('probe timed out')));
    req.on('error', rej);
    req.end();
  });
}

function iniQuote(v: string): string {
  if (/["\n]/.test(v)) throw new Error(`FPM config value cannot hold a quote or newline: ${JSON.stringify(v)}`);
  return `"${v}"`;
}

/** Starts php-fpm (one master, one pool per entry of `pools`) and nginx in a fresh temp dir; resolves when both serve. */
export async function startPhpStack(opts: PhpStackOptions): Promise<PhpStack> {
  if (PHP_FPM_MISSING) throw new Error(PHP_FPM_MISSING);
  const detached = opts.detached ?? true;
  const tmp = tmpDir('sk-php-');
  const dir = tmp.dir;
  const pools = (opts.pools ?? [{ name: 'app' }]).map((p) => ({
    name: p.name,
    client: p.client ?? true,
    prepend: resolve(p.prepend ?? PHP_CLIENT),
    children: p.children ?? opts.children ?? 4,
    page: resolve(p.page ?? opts.page ?? PHP_FPM_PAGE),
    env: {
      ...(opts.agentSocket === undefined ? {} : { SIDEKICK_AGENT_SOCKET: opts.agentSocket }),
      ...opts.env,
      ...p.env, // a pool's own setting wins
    } as Record<string, string>,
    socket: join(dir, `fpm-${p.name}.sock`),
    accessLog: join(dir, `access-${p.name}.log`),
    port: 0,
  }));
  for (const p of pools) {
    if (!/^[a-z0-9_-]+$/.test(p.name)) throw new Error(`pool name ${p.name}: use [a-z0-9_-]+`);
    if (!existsSync(p.page)) throw new Error(`page ${p.page} does not exist`);
    if (p.client && !existsSync(p.prepend)) throw new Error(`prepend file ${p.prepend} does not exist`);
    p.port = await freePort();
  }

  // ---- php-fpm: one master, one [pool] per entry; pm = static so every child exists before the first request.
  const fpmConf = join(dir, 'php-fpm.conf');
  const fpmLines = [
    '[global]',
    `pid = ${join(dir, 'php-fpm.pid')}`,
    `error_log = ${join(dir, 'php-fpm.log')}`,
    'daemonize = no',
    'log_level = notice',
    '',
  ];
  for (const p of pools) {
    fpmLines.push(
      `[${p.name}]`,
      ...(IS_ROOT ? ['user = root', 'group = root'] : []), // ignored (with a warning) unless the master is root
      `listen = ${p.socket}`,
      'listen.mode = 0666',
      'pm = static',
      `pm.max_children = ${p.children}`,
      'catch_workers_output = yes',
      'decorate_workers_output = no',
      // clear_env stays yes (the default): the pool's environment is exactly the env[] lines below.
      ...Object.entries(p.env).map(([k, v]) => `env[${k}] = ${iniQuote(v)}`),
      ...(p.client ? [`php_admin_value[auto_prepend_file] = ${iniQuote(p.prepend)}`] : []),
      'php_admin_flag[log_errors] = on',
      'php_admin_flag[display_errors] = off',
      'php_admin_value[error_reporting] = -1',
      `php_admin_value[error_log] = ${iniQuote(join(dir, 'php-errors.log'))}`,
      ...(opts.poolInclude === undefined ? [] : [`include = ${opts.poolInclude}`]),
      '',
    );
  }
  writeFileSync(fpmConf, fpmLines.join('\n'));

  // ---- nginx: master + 1 worker, daemon off (the pid we spawn is the master), every path inside dir.
  const without = nginxWithout();
  const temp = join(dir, 'nginx-temp');
  for (const t of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(temp, t), { recursive: true });
  const nginxConf = join(dir, 'nginx.conf');
  const servers = pools.map((p) =>
    [
      '  server {',
      `    listen 127.0.0.1:${p.port};`,
      '    server_name localhost;',
      `    access_log ${p.accessLog} sk;`,
      '    location = /_sk_nginx_ready { access_log off; return 200 "ready\\n"; }',
      '    location / {',
      `      include ${FASTCGI_PARAMS};`,
      `      fastcgi_param SCRIPT_FILENAME ${p.page};`,
      `      fastcgi_pass unix:${p.socket};`,
      '    }',
      '  }',
    ].join('\n'),
  );
  writeFileSync(
    nginxConf,
    [
      ...(IS_ROOT ? ['user root;'] : []), // workers must traverse the 0700 temp dir to reach the FPM sockets
      'daemon off;',
      'master_process on;',
      'worker_processes 1;',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'nginx-error.log')} warn;`,
      'events { worker_connections 1024; }',
      'http {',
      '  log_format sk "$status $request_uri";',
      '  access_log off;',
      `  client_body_temp_path ${join(temp, 'body')};`,
      `  proxy_temp_path ${join(temp, 'proxy')};`,
      `  fastcgi_temp_path ${join(temp, 'fastcgi')};`,
      ...(without.has('uwsgi') ? [] : [`  uwsgi_temp_path ${join(temp, 'uwsgi')};`]),
      ...(without.has('scgi') ? [] : [`  scgi_temp_path ${join(temp, 'scgi')};`]),
      '  keepalive_timeout 65;',
      '  keepalive_requests 1000000;',
      ...servers,
      '}',
      '',
    ].join('\n'),
  );

  let fpm: Proc | undefined;
  let nginx: Proc | undefined;
  let stopping: Promise<void> | undefined;
  const readText = (f: string): string => (existsSync(f) ? readFileSync(f, 'utf8') : '');
  const logs = (): string =>
    [
      `--- php-fpm (${fpmConf}) ---`,
      fpm?.output() ?? '',
      readText(join(dir, 'php-fpm.log')),
      `--- nginx (${nginxConf}) ---`,
      nginx?.output() ?? '',
      readText(join(dir, 'nginx-error.log')),
    ].join('\n');
  const stop = (timeoutMs = 5000): Promise<void> => {
    stopping ??= Promise.all([stopProc(nginx, timeoutMs), stopProc(fpm, timeoutMs)]).then(() => undefined);
    return stopping;
  };
  try {
    fpm = launch(PHP_FPM_BIN!, [...(IS_ROOT ? ['-R'] : []), '-y', fpmConf, '-F'], dir, detached);
    await waitFor(
      () => {
        if (!alive(fpm!)) throw new Error('php-fpm exited');
        return pools.every((p) => existsSync(p.socket));
      },
      'php-fpm to listen on its pool sockets',
      15_000,
    );
    nginx = launch(NGINX_BIN!, ['-p', dir, '-c', nginxConf, '-e', join(dir, 'nginx-error.log')], dir, detached);
    for (const p of pools)
      await waitFor(
        async () => {
          if (!alive(nginx!)) throw new Error('nginx exited');
          return (await probe(`http://127.0.0.1:${p.port}/_sk_nginx_ready`)) === 200;
        },
        `nginx to answer on 127.0.0.1:${p.port}`,
        15_000,
      );
  } catch (err) {
    await stop();
    const text = `${String(err)}\n${logs()}`;
    tmp.cleanup();
    throw new Error(text, { cause: err });
  }

  const urls: Record<string, string> = {};
  for (const p of pools) urls[p.name] = `http://127.0.0.1:${p.port}/`;
  return {
    dir,
    url: urls[pools[0]!.name]!,
    urls,
    nginxPid: nginx.child.pid!,
    fpmPid: fpm.child.pid!,
    accessLogLines: (pool?: string) => {
      const out: AccessLine[] = [];
      for (const p of pools) {
        if (pool !== undefined && p.name !== pool) continue;
        const lines = readText(p.accessLog).split('\n');
        lines.pop(); // after the last newline: empty, or a line nginx is still writing
        for (const line of lines) {
          const sp = line.indexOf(' ');
          if (sp <= 0) continue;
          out.push({ pool: p.name, status: Number(line.slice(0, sp)), uri: line.slice(sp + 1) });
        }
      }
      return out;
    },
    workerPids: () => childrenOf(fpm.child.pid!),
    phpErrors: () => readText(join(dir, 'php-errors.log')),
    logs,
    stop,
    cleanup: async () => {
      await stop();
      tmp.cleanup();
    },
  };
}

// ------------------------------------------------------------------------------------------------ load generator

export interface LoadOptions {
  /** Base URL with a trailing slash (PhpStack.url). */
  url: string;
  /** Path prefix of every request: request n is `<url><prefix>/<n>`, so each request (and its record) is unique. */
  prefix: string;
  /** Concurrent request loops, each on its own keep-alive connection. */
  concurrency: number;
  /** Stop after this many requests were started … */
  maxRequests: number;
  /** … or after this long, whichever comes first. */
  maxMs: number;
  /** Per-request deadline (an error when exceeded). Default 15 s. */
  requestTimeoutMs?: number;
  /** Pace: request n starts no earlier than n / ratePerSec seconds after the start (default: as fast as answered). */
  ratePerSec?: number;
  /**
   * Request n as something else than `GET <url><prefix>/<n>`: its path (starting with '/', relative to `url`), method
   * (default GET, sent without a body) and extra headers.
   */
  request?: (n: number) => { path: string; method?: string; headers?: Record<string, string> };
}

export interface LoadRun {
  /** Requests started. */
  readonly started: number;
  /** Responses received (any status). */
  readonly completed: number;
  /** Count per HTTP status. */
  readonly statuses: Map<number, number>;
  /** Transport errors (first 20 kept; `errorCount` has them all). */
  readonly errors: string[];
  readonly errorCount: number;
  /** The request paths that were answered 200. */
  readonly ok: string[];
  /** Stop starting new requests; in-flight ones finish. */
  stop(): void;
  /** Resolves once every loop has ended (count, time or stop()). */
  readonly done: Promise<void>;
  readonly ms: number;
}

/** N keep-alive loops of sequential GETs, bounded by count and time. Never throws: outcomes are counted. */
export function runLoad(opts: LoadOptions): LoadRun {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: opts.concurrency, maxFreeSockets: opts.concurrency });
  const statuses = new Map<number, number>();
  const errors: string[] = [];
  const ok: string[] = [];
  let started = 0;
  let completed = 0;
  let errorCount = 0;
  let stopped = false;
  const t0 = performance.now();
  let t1 = 0;
  const until = Date.now() + opts.maxMs;
  const timeout = opts.requestTimeoutMs ?? 15_000;
  const one = (path: string, method = 'GET', headers: Record<string, string> = {}): Promise<void> =>
    new Promise((res) => {
      const req = request(`${opts.url}${path.slice(1)}`, { agent, timeout, method, headers }, (r) => {
        r.resume();
        r.on('end', () => {
          completed++;
          const s = r.statusCode ?? 0;
          statuses.set(s, (statuses.get(s) ?? 0) + 1);
          if (s === 200) ok.push(path);
          res();
        });
        r.on('error', (err) => {
          errorCount++;
          if (errors.length < 20) errors.push(`${path}: ${err.message}`);
          res();
        });
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${timeout} ms`)));
      req.on('error', (err) => {
        errorCount++;
        if (errors.length < 20) errors.push(`${path}: ${err.message}`);
        res();
      });
      req.end();
    });
  const loop = async (): Promise<void> => {
    while (!stopped && started < opts.maxRequests && Date.now() < until) {
      const n = started++;
      if (opts.ratePerSec) {
        const wait = t0 + (n / opts.ratePerSec) * 1000 - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait)); // pacing, not synchronisation
      }
      const r = opts.request?.(n);
      await (r ? one(r.path, r.method, r.headers) : one(`/${opts.prefix}/${n}`));
    }
  };
  const done = Promise.all(Array.from({ length: opts.concurrency }, loop)).then(() => {
    t1 = performance.now();
    agent.destroy();
  });
  return {
    get started() {
      return started;
    },
    get completed() {
      return completed;
    },
    statuses,
    errors,
    get errorCount() {
      return errorCount;
    },
    ok,
    stop: () => {
      stopped = true;
    },
    done,
    get ms() {
      return (t1 || performance.now()) - t0;
    },
  };
}
