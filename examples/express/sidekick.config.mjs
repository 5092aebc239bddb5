export default {
  apps: [
    {
      name: 'express-demo',
      listen: '127.0.0.1:8081',
      handler: './app.mjs',
      sidekicks: { entrypoint: './sidekicks.mjs' },
    },
  ],
};
