// /healthz and /readyz (README "Health endpoints", docs/agent.md "Health endpoints"), on the admin socket and on the
// metrics listeners, as a Kubernetes probe, a load balancer or `sidekick health` sees them:
// - serve: not ready until its `start: 'boot'` sidekick publishes (the reason names it), ready after; not ready from
//   SIGTERM on while it drains (held open by a sidekick that holds its stop); alive throughout;
// - the agent alone: ready once its socket accepts; still ready with its breaker open (a warning says so); not ready
//   once its socket file is removed, and while its spool cannot be written (a read-only bind mount, root only);
// - the decision over states hard to produce end to end (disk full, starting, stopping): agentReadiness() directly.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { unlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { test } from 'node:test';
import { freePort, runCli, startServe, tempDir, waitFor } from './helpers/serve.ts';
import { record, sendOnce } from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';
import { agentReadiness, type AgentReadinessView } from '../src/agent/supervisor/readiness.ts';

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  body: Record<string, string> | undefined;
}

type Where = { socketPath: string } | { port: number };

function probe(where: Where, path: string, method: 'GET' | 'HEAD' = 'GET'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const target = 'port' in where ? { host: '127.0.0.1', port: where.port } : where;
    const req = http.request({ ...target, path, method, agent: false, timeout: 5_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: Record<string, string> | undefined;
        try {
          body = text ? (JSON.parse(text) as Record<string, string>) : undefined;
        } catch {
          body = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** The shape every answer has: one JSON line, no caching. */
function assertShape(a: Answer, what: string): void {
  assert.equal(a.headers['content-type'], 'application/json', `${what}: content-type`);
  assert.equal(a.headers['cache-control'], 'no-store', `${what}: cache-control`);
  assert.ok(a.text.endsWith('\n') && !a.text.slice(0, -1).includes('\n'), `${what}: one line: ${a.text}`);
}

async function assertAlive(where: Where, what: string): Promise<void> {
  const a = await probe(where, '/healthz');
  assert.equal(a.status, 200, `${what} /healthz: ${a.text}`);
  assert.deepEqual(a.body, { status: 'ok' });
  assertShape(a, `${what} /healthz`);
}

test('serve: not ready until the boot sidekick publishes (reason names it), ready after; admin socket and metrics.listen', async () => {
  const tmp = tempDir('sk-health-');
  const metricsPort = await freePort();
  const { serve, configFile } = await startServe(
    tmp.dir,
    [{ name: 'shop', workers: 2, sidekicks: { declare: { 'gate.boot': { start: 'boot' } } } }],
    {},
    { metrics: { listen: `127.0.0.1:${metricsPort}` } },
  );
  const admin = { socketPath: serve.adminSocket };
  const metrics = { port: metricsPort };
  try {
    await serve.waitReady();
    // Until start() has every worker listening the reason is "starting"; then the gated sidekick is the first unmet.
    const held = await waitFor('/readyz to name the unpublished boot sidekick', async () => {
      const a = await probe(admin, '/readyz');
      return a.body?.reason?.startsWith('app shop: sidekick gate.boot') ? a : undefined;
    });
    assert.equal(held.status, 503);
    assert.equal(held.body?.status, 'not_ready');
    assert.match(held.body?.reason ?? '', /^app shop: sidekick gate\.boot has not published \(/);
    assertShape(held, 'admin /readyz (not ready)');
    const viaMetrics = await probe(metrics, '/readyz');
    assert.equal(viaMetrics.status, 503, viaMetrics.text);
    assert.deepEqual(viaMetrics.body, held.body, 'the same answer on metrics.listen');
    assertShape(viaMetrics, 'metrics /readyz (not ready)');
    const head = await probe(metrics, '/readyz', 'HEAD');
    assert.equal(head.status, 503);
    assert.equal(head.text, '', 'HEAD: no body');
    await assertAlive(admin, 'admin (boot sidekick not published)');
    await assertAlive(metrics, 'metrics (boot sidekick not published)');
    const cliHeld = await runCli(['health', '--ready', '-c', configFile], { timeoutMs: 15_000 });
    assert.equal(cliHeld.code, 1, `sidekick health --ready while not ready: ${cliHeld.stderr}`);
    assert.match(cliHeld.stdout, /"reason":"app shop: sidekick gate\.boot has not published/);

    writeFileSync(join(tmp.dir, 'gate'), '');
    const ready = await waitFor('/readyz 200 after the publish', async () => {
      const a = await probe(admin, '/readyz');
      return a.status === 200 ? a : undefined;
    });
    assert.deepEqual(ready.body, { status: 'ready' });
    assertShape(ready, 'admin /readyz (ready)');
    const readyViaMetrics = await probe(metrics, '/readyz');
    assert.equal(readyViaMetrics.status, 200, readyViaMetrics.text);
    assert.deepEqual(readyViaMetrics.body, { status: 'ready' });
    await assertAlive(admin, 'admin (ready)');
    await assertAlive(metrics, 'metrics (ready)');
    const cliReady = await runCli(['health', '--ready', '-c', configFile], { timeoutMs: 15_000 });
    assert.equal(cliReady.code, 0, cliReady.stderr);
    assert.equal(cliReady.stdout, '{"status":"ready"}\n');
    const cliAlive = await runCli(['health', '-c', configFile], { timeoutMs: 15_000 });
    assert.equal(cliAlive.code, 0, cliAlive.stderr);
    assert.equal(cliAlive.stdout, '{"status":"ok"}\n');
    // /metrics is still what it was on that listener
    const other = await probe(metrics, '/nope');
    assert.equal(other.status, 404);
  } finally {
    await serve.kill();
    tmp.cleanup();
  }
});

test('serve: /readyz answers 503 "stopping" from SIGTERM on while it drains; /healthz stays 200; exit 0', async () => {
  const tmp = tempDir('sk-health-stop-');
  const metricsPort = await freePort();
  const { serve } = await startServe(
    tmp.dir,
    [{ name: 'shop', workers: 1, sidekicks: { declare: { 'holdstop.h': { start: 'boot' } } } }],
    {},
    { metrics: { listen: `127.0.0.1:${metricsPort}` } },
  );
  const admin = { socketPath: serve.adminSocket };
  const metrics = { port: metricsPort };
  try {
    await serve.waitReady();
    await waitFor('ready before the stop', async () => (await probe(admin, '/readyz')).status === 200);
    serve.signal('SIGTERM');
    // The holdstop sidekick holds the stop (after the HTTP workers drained) until release-stop exists.
    const stopping = await waitFor('/readyz 503 stopping', async () => {
      const a = await probe(admin, '/readyz');
      return a.status === 503 && a.body?.reason?.startsWith('stopping') ? a : undefined;
    });
    assert.equal(stopping.body?.status, 'not_ready');
    const viaMetrics = await probe(metrics, '/readyz');
    assert.equal(viaMetrics.status, 503, viaMetrics.text);
    assert.match(viaMetrics.body?.reason ?? '', /^stopping/);
    await assertAlive(admin, 'admin (stopping)');
    await assertAlive(metrics, 'metrics (stopping)');
    assert.equal(serve.exitInfo, undefined, 'still draining when asked');
    writeFileSync(join(tmp.dir, 'release-stop'), '');
    const exit = await serve.stop('SIGTERM', 30_000);
    assert.equal(exit.code, 0, serve.logs());
  } finally {
    await serve.kill();
    tmp.cleanup();
  }
});

test('agent alone: ready once the socket accepts; breaker open is still ready with a warning; socket removed is not', async (t) => {
  const scope = agentScope(t);
  const [metricsPort, deadPort] = [await freePort(), await scope.deadPort()];
  scope.writeConfig({
    metrics: { listen: `127.0.0.1:${metricsPort}` },
    exporter: { type: 'http', url: `http://127.0.0.1:${deadPort}/ingest`, timeoutMs: 1_000 },
    batch: { maxRecords: 5, maxDelayMs: 50 },
    breaker: { failures: 1, halfOpenAfterMs: '10m' },
  });
  const agent = await scope.startAgent();
  const admin = { socketPath: join(scope.dir, 'admin.sock') };
  const metrics = { port: metricsPort };
  for (const where of [admin, metrics]) {
    const a = await probe(where, '/readyz');
    assert.equal(a.status, 200, a.text);
    assert.deepEqual(a.body, { status: 'ready' });
    assertShape(a, '/readyz');
    await assertAlive(where, 'agent');
  }
  // central is down: the first failed export opens the breaker
  await sendOnce(scope.sock, Array.from({ length: 10 }, (_, i) => record(`b${i}`)).join(''));
  await waitFor('the breaker open', async () => (await agent.status()).pipeline?.breaker?.state === 'open', {
    timeoutMs: 15_000,
  });
  for (const where of [admin, metrics]) {
    const a = await probe(where, '/readyz');
    assert.equal(a.status, 200, `breaker open is still ready: ${a.text}`);
    assert.equal(a.body?.status, 'ready');
    assert.match(a.body?.warning ?? '', /^breaker open: central is failing; records are spooled/);
  }
  // Someone removed the socket file: clients cannot connect any more, though the process runs on.
  unlinkSync(scope.sock);
  const gone = await probe(metrics, '/readyz');
  assert.equal(gone.status, 503, gone.text);
  assert.match(gone.body?.reason ?? '', /^socket .* was removed or replaced/);
  await assertAlive(metrics, 'agent (socket removed)');
  const exit = await agent.stop();
  assert.equal(exit.code, 0);
});

test('agent alone: not ready while the spool cannot be written (read-only bind mount), ready again after', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root for a read-only bind mount');
    return;
  }
  const scope = agentScope(t);
  const spoolDir = join(scope.dir, 'spool');
  const deadPort = await scope.deadPort();
  // central down: every record stays in the spool, so new ones need new segments (16 KiB each)
  scope.writeConfig({
    spool: { dir: spoolDir, segmentBytes: 16 * 1024 },
    exporter: { type: 'http', url: `http://127.0.0.1:${deadPort}/ingest`, timeoutMs: 1_000 },
    batch: { maxRecords: 20, maxDelayMs: 50 },
    breaker: { failures: 1, halfOpenAfterMs: '10m' },
  });
  await scope.startAgent();
  const admin = { socketPath: join(scope.dir, 'admin.sock') };
  let mounted = false;
  try {
    execFileSync('mount', ['--bind', spoolDir, spoolDir], { stdio: 'pipe' });
    mounted = true;
    execFileSync('mount', ['-o', 'remount,bind,ro', spoolDir], { stdio: 'pipe' });
    let n = 0;
    const held = await waitFor(
      '/readyz 503: spool not writable',
      async () => {
        // ~40 KB per round: the write segment fills and the roll to a new one fails (EROFS)
        await sendOnce(scope.sock, Array.from({ length: 200 }, () => record(`r${n++}`)).join(''));
        const a = await probe(admin, '/readyz');
        return a.status === 503 ? a : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    assert.match(held.body?.reason ?? '', /^spool .* not writable: .*EROFS/, held.text);
    await assertAlive(admin, 'agent (spool read-only)');
    // lazy: the agent may hold files it opened (to read) through the mount; new path operations see the disk again
    execFileSync('umount', ['-l', spoolDir], { stdio: 'pipe' });
    mounted = false;
    const back = await waitFor(
      '/readyz 200 once writable',
      async () => {
        const a = await probe(admin, '/readyz');
        return a.status === 200 ? a : undefined;
      },
      { timeoutMs: 20_000 },
    );
    assert.equal(back.body?.status, 'ready');
  } finally {
    if (mounted) execFileSync('umount', ['-l', spoolDir], { stdio: 'pipe' });
  }
});

test('agentReadiness: the order of conditions, and what stays ready', () => {
  const base: AgentReadinessView = {
    stopping: false,
    started: true,
    socket: '/run/sidekick/agent.sock',
    socketInPlace: true,
    worker: 'ready',
    breaker: 'closed',
    spool: { dir: '/var/spool/sidekick', diskFull: false, writeError: undefined },
  };
  assert.deepEqual(agentReadiness(base), { ok: true, warning: undefined });
  assert.match(agentReadiness({ ...base, stopping: true }).reason!, /^stopping/);
  assert.match(agentReadiness({ ...base, started: false }).reason!, /^starting: no worker has accepted/);
  const full = agentReadiness({
    ...base,
    spool: { dir: '/var/spool/sidekick', diskFull: true, writeError: 'ENOSPC: no space left on device, write' },
  });
  assert.equal(full.ok, false);
  assert.match(full.reason!, /^spool \/var\/spool\/sidekick: disk full/, 'disk full named before the raw error');
  const open = agentReadiness({ ...base, breaker: 'open', worker: 'starting' });
  assert.equal(open.ok, true, 'breaker open and a worker being replaced stay ready');
  assert.match(open.warning!, /^breaker open: .*; worker being replaced/);
  assert.equal(agentReadiness({ ...base, spool: undefined }).ok, true, 'before the first worker report: ready');
  // stopping wins over everything else
  assert.match(agentReadiness({ ...base, stopping: true, socketInPlace: false }).reason!, /^stopping/);
});
