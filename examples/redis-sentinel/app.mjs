// Every request counts a visit on the current master. readVars('redis') is a synchronous in-process read, so the
// master is looked up per request at no cost; a failover changes it within milliseconds in every worker.
import { Redis } from 'ioredis';
import { onVars, readVars } from 'sidekick-runtime';

// One connection per master address. When the master moves, the old connection is closed: the old master is now a
// replica (writes there fail with READONLY) or gone.
const connections = new Map();
function master() {
  const { MASTER_HOST: host, MASTER_PORT: port } = readVars('redis');
  const key = `${host}:${port}`;
  let redis = connections.get(key);
  if (!redis) {
    redis = new Redis({ host, port: Number(port), password: process.env.REDIS_PASSWORD, maxRetriesPerRequest: 1 });
    redis.on('error', () => {}); // failed commands answer 503 below
    connections.set(key, redis);
  }
  return { key, redis };
}
onVars('redis', ({ MASTER_HOST, MASTER_PORT }) => {
  for (const [key, redis] of connections) {
    if (key !== `${MASTER_HOST}:${MASTER_PORT}`) {
      redis.disconnect();
      connections.delete(key);
    }
  }
});

export default async function (req, res) {
  const { key, redis } = master();
  try {
    const visits = await redis.incr('visits');
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`visit ${visits}, written to ${key} (replicas: ${readVars('redis').REPLICAS || 'none'})\n`);
  } catch (err) {
    res.writeHead(503, { 'content-type': 'text/plain' });
    res.end(`could not write to ${key}: ${err.message}\n`);
  }
}
