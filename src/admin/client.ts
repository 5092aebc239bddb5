// Client side of the admin socket, used by `sidekick status` and `sidekick vars`.
import { request } from 'node:http';
import { SidekickError, errorFromData, type ErrorData } from '../errors.js';

export function adminGet(socketPath: string, path: string, timeoutMs = 5000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let body: { error?: ErrorData } | undefined;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error?: ErrorData };
        } catch {
          body = undefined;
        }
        if (res.statusCode === 200 && body !== undefined) return resolve(body);
        // The server's error keeps its catalogued code (SK_ERR_NOT_READY for an unknown snapshot, …).
        if (body?.error?.message) return reject(errorFromData(body.error));
        reject(
          new SidekickError(
            'SK_ERR_ADMIN_UNREACHABLE',
            `admin request ${path} on ${socketPath} answered status ${res.statusCode} without a readable body`,
            { socket: socketPath, status: res.statusCode },
          ),
        );
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
