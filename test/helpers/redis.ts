// A real Redis Sentinel group for tests and benchmarks: one master, one replica and three sentinels (quorum 2), each
// its own redis-server / redis-sentinel process on a free loopback port, with its config, data and log in a temp dir.
// Nothing of the system's Redis services is used. Every process is stopped by its pid (stop(); SIGKILL as a fallback).
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort, waitFor } from './serve.ts';

export const REDIS_SERVER = '/usr/bin/redis-server';
export const REDIS_SENTINEL = '/usr/bin/redis-sentinel';

/** Why the Sentinel tests cannot run here (a binary is missing), or undefined when they can. */
export function redisMissing(): string | undefined {
  for (const bin of [REDIS_SERVER, REDIS_SENTINEL]) {
    try {
      accessSync(bin, constants.X_OK);
    } catch {
      return `${bin} not found (apt-get install redis-server redis-sentinel; .ci/run does)`;
    }
  }
  return undefined;
}

export interface RedisNode {
  kind: 'server' | 'sentinel';
  port: number;
  conf: string;
  log: string;
  proc: ChildProcess;
  exited: Promise<void>;
  alive(): boolean;
}

export interface SentinelGroup {
  name: string;
  dir: string;
  /** By role at start; after a failover the roles differ (ask masterPort()). */
  servers: RedisNode[];
  sentinels: RedisNode[];
  /** 'host:port' of each sentinel, for a `redis-sentinel` source config. */
  sentinelAddrs: string[];
  /** Kills one node by its pid (SIGKILL) and waits for it to exit. */
  kill(node: RedisNode): Promise<void>;
  /** Starts a stopped node again on the same port with the same (sentinel-rewritten) config. */
  restart(node: RedisNode): Promise<RedisNode>;
  stop(): Promise<void>;
  /** The log tails, for assertion messages. */
  logs(n?: number): string;
}

function startNode(kind: 'server' | 'sentinel', port: number, conf: string, log: string): RedisNode {
  const proc = spawn(kind === 'server' ? REDIS_SERVER : REDIS_SENTINEL, [conf], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return {
    kind,
    port,
    conf,
    log,
    proc,
    exited,
    alive: () => proc.exitCode === null && proc.signalCode === null,
  };
}

/** One command on a fresh connection, bounded by `timeoutMs`; the connection is closed either way. */
export async function redisCall(port: number, args: string[], timeoutMs = 2000): Promise<unknown> {
  const client = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    enableReadyCheck: false,
    disableClientInfo: true,
    protocol: 2,
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await client.call(args[0]!, ...args.slice(1));
  } finally {
    client.disconnect();
  }
}

/** A flat `[k1, v1, …]` reply as an object. */
export function fieldsOf(reply: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (Array.isArray(reply)) for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = String(reply[i + 1]);
  return out;
}

/** INFO replication of a server as an object (role, master_link_status, …). */
export async function replicationInfo(port: number): Promise<Record<string, string>> {
  const text = String(await redisCall(port, ['INFO', 'replication']));
  return Object.fromEntries(
    text
      .split('\r\n')
      .filter((l) => l.includes(':'))
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]),
  );
}

export async function startSentinelGroup({
  name = 'mymaster',
  downAfterMs = 1000,
  failoverTimeoutMs = 2000,
}: { name?: string; downAfterMs?: number; failoverTimeoutMs?: number } = {}): Promise<SentinelGroup> {
  const dir = mkdtempSync(join(tmpdir(), 'sk-redis-'));
  const nodes: RedisNode[] = [];
  const serverConf = (port: number, replicaOf?: number): string => {
    const data = join(dir, `server-${port}`);
    mkdirSync(data);
    const conf = join(data, 'redis.conf');
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${data}`,
        `logfile ${join(data, 'redis.log')}`,
        'daemonize no',
        'save ""',
        'appendonly no',
        'repl-diskless-sync yes',
        'repl-diskless-sync-delay 0',
        ...(replicaOf ? [`replicaof 127.0.0.1 ${replicaOf}`] : []),
        '',
      ].join('\n'),
    );
    return conf;
  };
  const sentinelConf = (port: number, masterPort: number): string => {
    const data = join(dir, `sentinel-${port}`);
    mkdirSync(data);
    const conf = join(data, 'sentinel.conf');
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${data}`,
        `logfile ${join(data, 'sentinel.log')}`,
        'daemonize no',
        `sentinel monitor ${name} 127.0.0.1 ${masterPort} 2`,
        `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
        `sentinel failover-timeout ${name} ${failoverTimeoutMs}`,
        `sentinel parallel-syncs ${name} 1`,
        '',
      ].join('\n'),
    );
    return conf;
  };
  const group: SentinelGroup = {
    name,
    dir,
    servers: [],
    sentinels: [],
    sentinelAddrs: [],
    kill: async (node) => {
      if (node.alive()) node.proc.kill('SIGKILL');
      await node.exited;
    },
    restart: async (node) => {
      const again = startNode(node.kind, node.port, node.conf, node.log);
      nodes.push(again);
      const list = node.kind === 'server' ? group.servers : group.sentinels;
      list[list.indexOf(node)] = again;
      await waitPing(again);
      return again;
    },
    stop: async () => {
      for (const n of nodes) if (n.alive()) n.proc.kill('SIGTERM');
      const all = Promise.all(nodes.map((n) => n.exited));
      if (!(await Promise.race([all.then(() => true), sleep(5000).then(() => false)]))) {
        for (const n of nodes) if (n.alive()) n.proc.kill('SIGKILL');
        await Promise.race([all, sleep(5000)]);
      }
      rmSync(dir, { recursive: true, force: true });
    },
    logs: (n = 1500) =>
      nodes
        .filter((node, i) => nodes.findIndex((o) => o.port === node.port) === i)
        .map((node) => {
          let text = '';
          try {
            text = readFileSync(node.log, 'utf8').slice(-n);
          } catch {
            // not written yet
          }
          return `--- ${node.kind} ${node.port} ---\n${text}`;
        })
        .join('\n'),
  };
  try {
    const masterPort = await freePort();
    const replicaPort = await freePort();
    for (const [port, of] of [
      [masterPort, undefined],
      [replicaPort, masterPort],
    ] as const) {
      const conf = serverConf(port, of);
      const node = startNode('server', port, conf, join(dir, `server-${port}`, 'redis.log'));
      nodes.push(node);
      group.servers.push(node);
      await waitPing(node);
    }
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const conf = sentinelConf(port, masterPort);
      const node = startNode('sentinel', port, conf, join(dir, `sentinel-${port}`, 'sentinel.log'));
      nodes.push(node);
      group.sentinels.push(node);
      group.sentinelAddrs.push(`127.0.0.1:${port}`);
      await waitPing(node);
    }
    await waitSettled(group, masterPort, replicaPort);
    return group;
  } catch (err) {
    const logs = group.logs();
    await group.stop();
    throw new Error(`${(err as Error).message}\n${logs}`, { cause: err });
  }
}

async function waitPing(node: RedisNode): Promise<void> {
  await waitFor(
    `${node.kind} on port ${node.port} to answer PING`,
    async () => {
      if (!node.alive()) throw new Error(`${node.kind} on port ${node.port} exited; see ${node.log}`);
      return (await redisCall(node.port, ['PING'], 500)) === 'PONG';
    },
    { timeoutMs: 10_000, intervalMs: 50 },
  );
}

/** The master's port as the first sentinel that answers sees it. */
export async function masterPort(group: SentinelGroup): Promise<number> {
  for (const s of group.sentinels) {
    if (!s.alive()) continue;
    try {
      const reply = (await redisCall(s.port, ['SENTINEL', 'get-master-addr-by-name', group.name])) as string[];
      return Number(reply[1]);
    } catch {
      // try the next
    }
  }
  throw new Error('no sentinel answered');
}

/**
 * Waits until every live sentinel agrees that `master` is the master, knows the other live sentinels and sees
 * `replica` as a healthy replica, and the replica's link to the master is up: the group can fail over.
 */
export async function waitSettled(
  group: SentinelGroup,
  master: number,
  replica: number,
  timeoutMs = 30_000,
): Promise<void> {
  const live = (): RedisNode[] => group.sentinels.filter((s) => s.alive());
  await waitFor(
    `sentinels to agree on master ${master} with healthy replica ${replica}`,
    async () => {
      const info = await replicationInfo(replica);
      if (info.role !== 'slave' || info.master_port !== String(master) || info.master_link_status !== 'up') {
        return false;
      }
      for (const s of live()) {
        const m = fieldsOf(await redisCall(s.port, ['SENTINEL', 'master', group.name]));
        if (m.port !== String(master) || /down|failover/.test(m.flags ?? '')) return false;
        if (Number(m['num-other-sentinels']) < live().length - 1) return false;
        const replicas = ((await redisCall(s.port, ['SENTINEL', 'replicas', group.name])) as unknown[]).map(fieldsOf);
        const r = replicas.find((x) => x.port === String(replica));
        if (!r || /down|disconnected/.test(r.flags ?? '') || r['master-link-status'] !== 'ok') return false;
      }
      return true;
    },
    { timeoutMs, intervalMs: 200 },
  );
}

/** A subscriber on every sentinel recording `+switch-master` for `name` with the time it arrived (first per switch). */
export async function watchSwitches(
  group: SentinelGroup,
  now: () => number,
): Promise<{ switches: { at: number; from: number; to: number }[]; close(): void }> {
  const switches: { at: number; from: number; to: number }[] = [];
  const clients = group.sentinels.map(
    (s) =>
      new Redis({
        host: '127.0.0.1',
        port: s.port,
        lazyConnect: true,
        connectTimeout: 2000,
        enableReadyCheck: false,
        disableClientInfo: true,
        protocol: 2,
      }),
  );
  for (const c of clients) {
    c.on('error', () => undefined);
    c.on('message', (_ch: string, message: string) => {
      const at = now();
      const [n, , oldPort, , newPort] = message.split(' ');
      if (n !== group.name) return;
      const from = Number(oldPort);
      const to = Number(newPort);
      // Each sentinel announces the same switch: keep the first.
      const last = switches[switches.length - 1];
      if (last && last.from === from && last.to === to) return;
      switches.push({ at, from, to });
    });
  }
  await Promise.all(
    clients.map(async (c) => {
      await c.connect();
      await c.subscribe('+switch-master');
    }),
  );
  return { switches, close: () => clients.forEach((c) => c.disconnect()) };
}
