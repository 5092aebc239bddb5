// The agent's Unix socket file: probe, bind, permissions, and clean-up that never deletes someone else's socket.
//
// Binding goes through a temporary name that is renamed over the final path once mode and group are set, so a client
// never sees a socket with the wrong permissions, and the kernel-side bind name (which Node/libuv unlinks when that
// handle closes, nodejs/node#19729) is the temporary one: closing a listener never removes the *final* path, which by
// then may belong to a newer agent. On a clean stop the owner unlinks the final path only if it is still the same
// inode it created.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { probeUnixSocket } from '../../admin/probe.js';
import { sleep } from '../../common/async.js';
import { createServerHandle, type BoundHandle } from '../../common/node-internals.js';
import { SidekickError } from '../../errors.js';

export interface SocketFileOptions {
  path: string;
  mode: number;
  group?: string | number | undefined;
}

/** Group name or id → gid. Names go through NSS (`getent group`), then /etc/group. Throws SK_ERR_CONFIG_INVALID. */
export function resolveGroup(group: string | number): number {
  if (typeof group === 'number') return group;
  if (/^\d+$/.test(group)) return Number(group);
  const parse = (text: string): number | undefined => {
    for (const line of text.split('\n')) {
      const [name, , gid] = line.split(':');
      if (name === group && gid && /^\d+$/.test(gid)) return Number(gid);
    }
    return undefined;
  };
  let gid: number | undefined;
  try {
    gid = parse(execFileSync('getent', ['group', group], { encoding: 'utf8', timeout: 2000 }));
  } catch {
    // getent missing or the group unknown to NSS: fall back to the file
  }
  if (gid === undefined) {
    try {
      gid = parse(readFileSync('/etc/group', 'utf8'));
    } catch {
      // no /etc/group
    }
  }
  if (gid === undefined)
    throw new SidekickError('SK_ERR_CONFIG_INVALID', `agent.socketGroup: unknown group "${group}"`, {
      field: 'agent.socketGroup',
    });
  return gid;
}

/**
 * Makes `path` free for a new socket: absent → fine; stale (connect refused, or not a socket) → unlinked; live → throws
 * SK_ERR_SOCKET_IN_USE. A live answer is re-probed a few times over ~1 s, because a previous agent that is shutting
 * down may still hold its listener for a moment; a socket that stays live is never stolen.
 */
export async function claimSocketPath(path: string, attempts = 5): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  for (let i = 0; ; i++) {
    const state = await probeUnixSocket(path);
    if (state === 'absent') return;
    if (state === 'stale') {
      try {
        unlinkSync(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      return;
    }
    if (i + 1 >= attempts)
      throw new SidekickError(
        'SK_ERR_SOCKET_IN_USE',
        `agent socket ${path} is in use by a running process; stop it or choose another agent.socket`,
        { socket: path },
      );
    await sleep(250);
  }
}

function tmpPathFor(path: string): string {
  return `${path}.${process.pid}.${Date.now().toString(36)}.tmp`;
}

/** Identity of a socket file we created, so we only ever unlink our own. */
export class OwnedSocketFile {
  constructor(
    readonly path: string,
    private readonly ino: number,
    private readonly dev: number,
  ) {}

  /** Re-applies mode and group (a reload that changed only those). */
  applyPermissions(mode: number, group: string | number | undefined): void {
    chmodSync(this.path, mode);
    if (group !== undefined) chownSync(this.path, -1, resolveGroup(group));
  }

  /** The path still names the socket we bound (not removed, not replaced by another file or agent). One stat. */
  isInPlace(): boolean {
    try {
      const st = statSync(this.path);
      return st.ino === this.ino && st.dev === this.dev;
    } catch {
      return false;
    }
  }

  /** Unlinks the path if it is still the socket we bound (never a newer agent's). */
  unlinkIfOurs(): void {
    try {
      const st = statSync(this.path);
      if (st.ino === this.ino && st.dev === this.dev) unlinkSync(this.path);
    } catch {
      // gone already
    }
  }
}

export type { BoundHandle };

/** A socket bound under a temporary name; `publish()` renames it to the real path once a worker is listening. */
export interface SharedSocket {
  handle: BoundHandle;
  /** Renames the socket to its final path (atomic: clients see no socket, then a listening one). */
  publish(): OwnedSocketFile;
  /** Closes it without publishing. */
  discard(): void;
}

/**
 * Binds `opts.path` in *this* process without accepting connections here: the supervisor keeps this handle so the
 * socket (and its kernel backlog) outlives every worker, and passes the fd to each worker, which calls listen() and
 * accepts. This is exactly what node:cluster's primary does for shared handles (net._createServerHandle, see
 * createServerHandle); we use the same primitive directly because cluster's own primary closes the handle when its
 * last worker exits.
 *
 * The socket is bound under a temporary name with its mode and group already set; the caller publishes it under
 * the real path after the first worker listens, so a client never meets a bound-but-not-listening socket
 * (ECONNREFUSED) during start-up. Once listening, the socket stays in the listening state while any process holds
 * it, so between two workers connections queue in the kernel backlog.
 */
export async function bindSharedSocket(opts: SocketFileOptions): Promise<SharedSocket> {
  await claimSocketPath(opts.path);
  const tmp = tmpPathFor(opts.path);
  const handle = createServerHandle(tmp);
  if (typeof handle === 'number') {
    const err = new Error(`bind ${opts.path}: errno ${handle}`) as NodeJS.ErrnoException;
    err.errno = handle;
    throw err;
  }
  const discard = (): void => {
    handle.close();
    try {
      unlinkSync(tmp);
    } catch {
      // already renamed or gone
    }
  };
  try {
    chmodSync(tmp, opts.mode);
    if (opts.group !== undefined) chownSync(tmp, -1, resolveGroup(opts.group));
  } catch (err) {
    discard();
    throw err;
  }
  return {
    handle,
    discard,
    publish: () => {
      renameSync(tmp, opts.path);
      const st = statSync(opts.path);
      return new OwnedSocketFile(opts.path, st.ino, st.dev);
    },
  };
}
