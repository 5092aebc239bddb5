// A real single-node etcd (Debian's /usr/bin/etcd, 3.4) for the tests: its own data dir in a temp folder, free
// loopback ports, started and stopped by pid with bounded waits, restartable on the same ports and data. Writes go
// through the v3 JSON gateway (keys and values base64), auth setup included, so etcdctl is not needed.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, tempDir } from './serve.ts';

export const ETCD_BIN = process.env.ETCD_BIN ?? '/usr/bin/etcd';

/** Why the etcd tests cannot run here, or undefined when they can. */
export function etcdMissing(): string | undefined {
  if (!existsSync(ETCD_BIN)) return `etcd is not installed (${ETCD_BIN}); apt-get install etcd-server`;
  return undefined;
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

/** The range end (base64) covering every key that starts with `prefix` (its last byte plus one; ASCII prefixes). */
function rangeEnd(prefix: string): string {
  const b = Buffer.from(prefix, 'utf8');
  b[b.length - 1]! += 1;
  return b.toString('base64');
}

export type TxnOp = { put: string; value: string } | { del: string };

export class EtcdServer {
  readonly endpoint: string;
  private child: ChildProcess | undefined;
  private token: string | undefined;

  private constructor(
    private readonly dir: { dir: string; cleanup: () => void },
    private readonly clientPort: number,
    private readonly peerPort: number,
  ) {
    this.endpoint = `http://127.0.0.1:${clientPort}`;
  }

  static async start(): Promise<EtcdServer> {
    const server = new EtcdServer(tempDir('sk-etcd-'), await freePort(), await freePort());
    await server.startProcess();
    return server;
  }

  get log(): string {
    const file = join(this.dir.dir, 'etcd.log');
    return existsSync(file) ? readFileSync(file, 'utf8').slice(-4000) : '';
  }

  /** Starts etcd on this server's ports and data dir and waits (≤ 20 s) until it answers a range request. */
  async startProcess(): Promise<void> {
    if (this.child) throw new Error('etcd is already running');
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const log = openSync(join(this.dir.dir, 'etcd.log'), 'a');
    // prettier-ignore
    const args = [
      '--name', 'sk', '--data-dir', join(this.dir.dir, 'data'),
      '--listen-client-urls', this.endpoint, '--advertise-client-urls', this.endpoint,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `sk=${peer}`,
    ];
    const child = spawn(ETCD_BIN, args, { stdio: ['ignore', log, log] });
    closeSync(log);
    this.child = child;
    child.once('exit', () => {
      if (this.child === child) this.child = undefined;
    });
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (!this.child) throw new Error(`etcd exited at start:\n${this.log}`);
      try {
        await this.call('/v3/kv/range', { key: b64('/') });
        return;
      } catch (err) {
        if (Date.now() > deadline)
          throw new Error(`etcd did not answer within 20 s: ${String(err)}\n${this.log}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** SIGTERM, then SIGKILL after 10 s; resolves once the process has exited. */
  async stopProcess(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }

  async close(): Promise<void> {
    await this.stopProcess();
    this.dir.cleanup();
  }

  /** A JSON call to the v3 gateway (with the auth token once `enableAuth` ran); throws on an error answer. */
  async call<T = Record<string, unknown>>(path: string, body: object): Promise<T> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.token) headers.authorization = this.token;
    const res = await fetch(`${this.endpoint}${path}`, {
      method: 'POST',
      headers,
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}: ${text}`);
    return JSON.parse(text) as T;
  }

  /** Puts one key; returns the new revision. */
  async put(key: string, value: string): Promise<bigint> {
    const r = await this.call<{ header: { revision: string } }>('/v3/kv/put', { key: b64(key), value: b64(value) });
    return BigInt(r.header.revision);
  }

  async del(key: string): Promise<void> {
    await this.call('/v3/kv/deleterange', { key: b64(key) });
  }

  /** Applies every op in one transaction (one revision). */
  async txn(ops: TxnOp[]): Promise<void> {
    const success = ops.map((op) =>
      'put' in op
        ? { request_put: { key: b64(op.put), value: b64(op.value) } }
        : { request_delete_range: { key: b64(op.del) } },
    );
    const r = await this.call<{ succeeded?: boolean }>('/v3/kv/txn', { success });
    if (!r.succeeded) throw new Error('txn did not succeed');
  }

  /** Adds user `name` with read access to `prefix` (and root), enables auth; later calls of this helper use root. */
  async enableAuth(name: string, password: string, prefix: string): Promise<void> {
    await this.call('/v3/auth/role/add', { name: 'root' });
    await this.call('/v3/auth/user/add', { name: 'root', password: 'rootpw' });
    await this.call('/v3/auth/user/grant', { user: 'root', role: 'root' });
    await this.call('/v3/auth/role/add', { name: 'reader' });
    const perm = { permType: 'READ', key: b64(prefix), range_end: rangeEnd(prefix) };
    await this.call('/v3/auth/role/grant', { name: 'reader', perm });
    await this.call('/v3/auth/user/add', { name, password });
    await this.call('/v3/auth/user/grant', { user: name, role: 'reader' });
    await this.call('/v3/auth/enable', {});
    const r = await this.call<{ token: string }>('/v3/auth/authenticate', { name: 'root', password: 'rootpw' });
    this.token = r.token;
  }
}
