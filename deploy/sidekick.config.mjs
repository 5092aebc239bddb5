// /etc/sidekick/sidekick.config.mjs: the agent as a system service (deploy/sidekick-agent.service or
// deploy/supervisord.conf). The Debian package installs this file as its default config (a conffile: an upgrade never
// overwrites your edits), root:www-data 0640 so the `sidekick` user (group www-data) can read it.
// Every path is absolute: under systemd's ProtectSystem=strict only /run/sidekick and /var/lib/sidekick are writable.
// Validate as the service user: runuser -u sidekick -- sidekick check -c /etc/sidekick/sidekick.config.mjs
// Apply a change: systemctl reload sidekick-agent (SIGHUP; an invalid file is logged and the old config kept).
export default {
  admin: { socket: '/run/sidekick/admin.sock' }, // `sidekick status -c /etc/sidekick/sidekick.config.mjs`
  agent: {
    socket: '/run/sidekick/agent.sock', // the PHP and Node clients' default when /run/sidekick exists
    socketMode: 0o660,
    socketGroup: 'www-data', // PHP-FPM workers' group
    maxRecordBytes: 1048576,
    batch: { maxRecords: 100, maxDelayMs: 5000 },
    memory: { maxBytes: 67108864 },
    spool: { dir: '/var/lib/sidekick/spool', maxBytes: 1073741824, syncIntervalMs: 100 },
    // Out of the box, records stay on this host: one NDJSON file per batch in /var/lib/sidekick/out (the agent never
    // deletes them; whatever consumes them removes them). To ship them instead, replace the line with one of:
    //   exporter: { type: 'http', url: 'https://central.example.com/ingest', timeoutMs: 5000, gzip: true },
    //   exporter: { type: 'otlp', endpoint: 'http://collector:4318' },   // an OpenTelemetry Collector (docs/agent.md)
    exporter: { type: 'file', dir: '/var/lib/sidekick/out' },
    breaker: { failures: 5, halfOpenAfterMs: 60000 },
    recycle: { maxRssBytes: 268435456, maxRecords: 0, maxUptimeMs: 86400000 },
    stopTimeoutMs: 25000, // keep below TimeoutStopSec / stopwaitsecs (30 s) — see deploy/README.md
    // Prometheus text at http://127.0.0.1:9464/metrics; off by default (a taken port would stop the agent starting):
    // metrics: { listen: '127.0.0.1:9464' },
  },
};
