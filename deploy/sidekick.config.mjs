// Example /etc/sidekick/sidekick.config.mjs for the agent as a system service (deploy/sidekick-agent.service or
// deploy/supervisord.conf). Every path is absolute: under systemd's ProtectSystem=strict only /run/sidekick and
// /var/lib/sidekick are writable. Validate with: sidekick check -c /etc/sidekick/sidekick.config.mjs
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
    exporter: { type: 'http', url: 'http://127.0.0.1:4318/ingest', timeoutMs: 5000, gzip: true },
    // or keep records on this host: exporter: { type: 'file', dir: '/var/lib/sidekick/out' },
    breaker: { failures: 5, halfOpenAfterMs: 60000 },
    recycle: { maxRssBytes: 268435456, maxRecords: 0, maxUptimeMs: 86400000 },
    stopTimeoutMs: 25000, // keep below TimeoutStopSec / stopwaitsecs (30 s) — see deploy/README.md
    metrics: { listen: '127.0.0.1:9464' },
  },
};
