// Client side of the admin socket, used by `sidekick status`, `sidekick vars` and `sidekick health`.
import { request } from 'node:http';
import { SidekickError, errorFromData, type ErrorData } from '../errors.js';

/** GET `path` on the admin socket: its status and body, whatever the status; rejects only if nothing answered. */
export function adminRequest(
  socketPath: string,
  path: string,
  timeoutMs = 5000,
): Promise<{ status: number | undefined; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }));
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

export async function adminGet(socketPath: string, path: string, timeoutMs = 5000): Promise<unknown> {
  const res = await adminRequest(socketPath, path, timeoutMs);
  let body: { error?: ErrorData } | undefined;
  try {
    body = JSON.parse(res.text) as { error?: ErrorData };
  } catch {
    body = undefined;
  }
  if (res.status === 200 && body !== undefined) return body;
  // The server's error keeps its catalogued code (SK_ERR_NOT_READY for an unknown snapshot, …).
  if (body?.error?.message) throw errorFromData(body.error);
  throw new SidekickError(
    'SK_ERR_ADMIN_UNREACHABLE',
    `admin request ${path} on ${socketPath} answered status ${res.status} without a readable body`,
    { socket: socketPath, status: res.status },
  );
}
