// The demo app: a plain Node request listener (an Express app works the same way, see examples/express).
// Vars are read synchronously on every request; getVars only waits the very first time.
import { getVars, peekVars, readVars } from 'sidekick-runtime';
import { createAgentClient, agentMiddleware } from 'sidekick-runtime/client';

// Telemetry: one record per request to the local agent (see the `agent` section of the config); the records land
// as NDJSON files in examples/demo/var/out. Sending never blocks or throws, even when the agent is down.
const agent = createAgentClient({ socket: new URL('./var/agent.sock', import.meta.url).pathname });
const recordRequest = agentMiddleware(agent);

await getVars(['flags', 'clock'], { timeout: 10_000 }).catch(() => undefined);

export default function handler(req, res) {
  // The agent publishes its own state as vars: skip telemetry while its breaker is open. peekVars is the
  // non-throwing read: undefined until the first publish.
  if (peekVars('agent')?.PROFILING_ENABLED !== '0') recordRequest(req, res);
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
