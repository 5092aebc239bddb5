// Client side of the admin socket, used by `sidekick status` and `sidekick vars`.
import { request } from 'node:http';
import { SidekickError } from '../errors.js';

export function adminGet(socketPath: string, path: string, timeoutMs = 5000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          error?: { code?: string; message?: string };
        };
        if (res.statusCode === 200) resolve(body);
        else reject(new Error(body.error?.message ?? `admin request ${path} failed with status ${res.statusCode}`));
      });
    });
    req.on('timeout', () =>
      req.destroy(
        new SidekickError('SK_ERR_TIMEOUT', `admin request ${path} on ${socketPath} timed out after ${timeoutMs} ms`),
      ),
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err instanceof SidekickError) return reject(err);
      reject(
        new SidekickError(
          'SK_ERR_ADMIN_UNREACHABLE',
          `no running sidekick instance answered on ${socketPath} (${err.code ?? err.message})`,
          { socket: socketPath },
        ),
      );
    });
    req.end();
  });
}
