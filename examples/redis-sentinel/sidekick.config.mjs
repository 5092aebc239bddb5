// A shop whose requests write to the current Redis master. The `redis` sidekick is the built-in redis-sentinel
// source: no code, it follows the group's master and publishes MASTER_HOST / MASTER_PORT / REPLICAS to every worker.
const sentinels = (process.env.SENTINELS ?? '127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381').split(',');

export default {
  apps: [
    {
      name: 'shop',
      listen: '127.0.0.1:8082',
      handler: './app.mjs',
      workers: 2,
      sidekicks: {
        declare: {
          redis: {
            start: 'boot',
            source: {
              type: 'redis-sentinel',
              sentinels,
              name: process.env.SENTINEL_NAME ?? 'mymaster',
              replicas: true,
            },
          },
        },
      },
    },
  ],
};
