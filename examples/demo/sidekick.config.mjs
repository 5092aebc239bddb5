// `npm start` runs this: one app with two HTTP workers and two sidekicks.
export default {
  apps: [
    {
      name: 'demo',
      listen: process.env.PORT ?? '127.0.0.1:8080',
      handler: './app.mjs',
      workers: 2,
      sidekicks: {
        entrypoint: './sidekicks.mjs',
        declare: { flags: { start: 'boot' }, clock: { start: 'boot', every: '1s' } },
      },
    },
  ],
  admin: { socket: './var/admin.sock' },
};
