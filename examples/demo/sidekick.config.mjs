// `npm start` runs this: one app with two HTTP workers, two sidekicks, and the telemetry agent.
export default {
  apps: [
    {
      name: 'demo',
      listen: process.env.PORT ?? '127.0.0.1:8080',
      handler: './app.mjs',
      workers: 2,
      sidekicks: {
        // "clock" is code (sidekicks.mjs); "flags" is the built-in file source: flags.json, watched and published on
        // every save (a half-saved or invalid file keeps the last good snapshot).
        entrypoint: './sidekicks.mjs',
        declare: {
          flags: { start: 'boot', source: { type: 'file', path: './flags.json' } },
          clock: { start: 'boot', every: '1s' },
        },
      },
    },
  ],
  admin: { socket: './var/admin.sock' },
  // The telemetry agent on its embedded default exporter: NDJSON files in ./var/out (try `tail -f var/out/*`).
  agent: {
    socket: './var/agent.sock',
    spool: { dir: './var/spool' },
    exporter: { type: 'file', dir: './var/out' },
    batch: { maxRecords: 100, maxDelayMs: 1000 },
  },
};
