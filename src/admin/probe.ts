// Is a Unix socket path served by a live process? Used before unlinking a socket file we did not create:
// a live socket is never stolen (connect succeeds), a stale one (ECONNREFUSED) or a non-socket path may be replaced.
import { connect } from 'node:net';
import { existsSync } from 'node:fs';

export type ProbeResult = 'absent' | 'live' | 'stale';

export function probeUnixSocket(path: string, timeoutMs = 1000): Promise<ProbeResult> {
  if (!existsSync(path)) return Promise.resolve('absent');
  return new Promise((resolve) => {
    const sock = connect(path);
    const done = (r: ProbeResult): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    // A live but hung owner may not accept in time; treat that as live too: never steal.
    const timer = setTimeout(() => done('live'), timeoutMs);
    sock.once('connect', () => done('live'));
    sock.once('error', (err: NodeJS.ErrnoException) =>
      done(err.code === 'ECONNREFUSED' || err.code === 'ENOTSOCK' ? 'stale' : 'live'),
    );
  });
}
