// The demo app: a plain Node request listener (an Express app works the same way, see examples/express).
// Vars are read synchronously on every request; getVars only waits the very first time.
import { getVars, readVars } from 'sidekick';

await getVars(['flags', 'clock'], { timeout: 10_000 }).catch(() => undefined);

export default function handler(req, res) {
  let flags, clock;
  try {
    flags = readVars('flags');
    clock = readVars('clock');
  } catch (err) {
    res.writeHead(503, { 'content-type': 'text/plain' }).end(`${err.message}\n`);
    return;
  }
  if (req.url === '/vars') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ flags, clock }, null, 2) + '\n');
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(`${flags.greeting}\n${flags.banner}\nserved by pid ${process.pid} at ${clock.now}\n`);
}
