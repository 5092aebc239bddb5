// The breaker turns profiling off on PHP-FPM hosts (issue: "The breaker turns profiling off on PHP hosts too"), with
// the real neighbours: Debian's nginx + php-fpm (4 children, the client as auto_prepend_file), `sidekick agent` with
// the http exporter, a fake central on loopback. The page answers what `\Sidekick\Agent::profilingEnabled()` says in
// that worker; every worker (pid) must report the agent's state within a bounded time:
// central fails → breaker opens → false everywhere; central recovers → breaker closes → true everywhere;
// `agent.profiling.sampleRate: 0` by SIGHUP → false everywhere, and the records say `sampled: false`; agent stopped →
// false everywhere (it cannot be reached); started again → true. Once per client variant (test/helpers/php-ext.ts).
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  agentConfig,
  startAgent,
  startCentral,
  tmpDir,
  waitFor,
  type AgentProcess,
  type FakeCentral,
} from './helpers/agent.ts';
import { PHP_CLIENT_VARIANTS } from './helpers/php-ext.ts';
import { PHP_FPM_SKIP, startPhpStack, type PhpStack } from './helpers/php-fpm.ts';
import { PHP_ONE_RUN } from './helpers/ci-split.ts';

// Skipped outside CI without php-fpm/nginx, and in .ci/run's Node 24 run.
const SKIP = PHP_FPM_SKIP || PHP_ONE_RUN;
const CHILDREN = 4;
const PAGE = join(import.meta.dirname, 'fixtures', 'php-fpm', 'profiling.php');

function get(url: string): Promise<{ pid: number; profiling: boolean }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        try {
          resolve(JSON.parse(body) as { pid: number; profiling: boolean });
        } catch (err) {
          reject(new Error(`not JSON (${res.statusCode}): ${body.slice(0, 200)} (${String(err)})`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('request timed out after 10 s')));
    req.on('error', reject);
    req.end();
  });
}

for (const variant of PHP_CLIENT_VARIANTS)
  describe(`profilingEnabled() on PHP-FPM follows the agent [${variant.name}]`, { skip: SKIP || variant.skip }, () => {
    test('the client variant is available (CI builds the extension)', () => assert.equal(variant.missing, false));
    const tmp = tmpDir('sk-fpm-prof-');
    let central: FakeCentral;
    let agent: AgentProcess;
    let stack: PhpStack;
    let failing = false;
    const socket = join(tmp.dir, 'agent.sock');
    const configFile = join(tmp.dir, 'sidekick.config.json');
    const writeAgentConfig = (sampleRate: number): void => {
      const cfg = agentConfig(tmp.dir, {
        socket,
        exporter: { type: 'http', url: central.url, timeoutMs: 10_000, gzip: false },
        batch: { maxRecords: 10, maxDelayMs: 50 },
        breaker: { failures: 3, halfOpenAfterMs: 1000 },
        profiling: { sampleRate },
      });
      writeFileSync(configFile, JSON.stringify({ agent: cfg, admin: { socket: join(tmp.dir, 'admin.sock') } }));
    };

    /**
     * Sends rounds of 8 concurrent requests until every one of the pool's children has answered `expected` in one
     * round-robin of observations (each pid's latest answer), bounded in time. Returns the pids seen.
     */
    async function everyWorkerSays(expected: boolean, what: string): Promise<number[]> {
      const latest = new Map<number, boolean>();
      await waitFor(
        async () => {
          const answers = await Promise.all(Array.from({ length: 8 }, () => get(stack.url)));
          for (const a of answers) latest.set(a.pid, a.profiling);
          return latest.size >= CHILDREN && [...latest.values()].every((v) => v === expected);
        },
        `every PHP-FPM worker to report profilingEnabled() === ${expected} (${what}); latest: ${JSON.stringify([...latest])}`,
        30_000,
        50,
      );
      return [...latest.keys()];
    }

    before(async () => {
      central = await startCentral(() => (failing ? { status: 503 } : { status: 200 }));
      writeAgentConfig(1);
      agent = await startAgent(configFile, { ready: true });
      stack = await startPhpStack({ agentSocket: socket, children: CHILDREN, page: PAGE, extension: variant.so });
    });
    after(async () => {
      await stack?.stop();
      if (agent && agent.child.exitCode === null) await agent.stop().catch(() => agent.crash());
      await central?.close();
      tmp.cleanup();
    });

    test('healthy: every worker profiles', async () => {
      const pids = await everyWorkerSays(true, 'breaker closed');
      assert.equal(pids.length, CHILDREN);
    });

    test('central fails → breaker opens → false in every worker; central back → breaker closes → true again', async () => {
      failing = true;
      await waitFor(async () => {
        await Promise.all(Array.from({ length: 8 }, () => get(stack.url))); // records to export, so exports fail
        return (await agent.status()).pipeline?.breaker?.state === 'open';
      }, 'the breaker to open while central answers 503');
      await everyWorkerSays(false, 'breaker open');
      failing = false;
      await waitFor(async () => {
        await get(stack.url);
        return (await agent.status()).pipeline?.breaker?.state === 'closed';
      }, 'the breaker to close once central answers 200');
      await everyWorkerSays(true, 'breaker closed again');
      assert.equal(stack.phpErrors(), '', 'the client printed nothing to PHP’s error log');
    });

    test('agent.profiling.sampleRate changed by SIGHUP reaches every worker; records say whether they were sampled', async () => {
      writeAgentConfig(0);
      agent.child.kill('SIGHUP');
      await everyWorkerSays(false, 'sampleRate 0');
      await Promise.all(Array.from({ length: 8 }, (_, i) => get(`${stack.url}sampled-check/${i}`)));
      const records = await waitFor(() => {
        const mine = central.delivered
          .map((l) => JSON.parse(l) as { route?: string; sampled?: boolean })
          .filter((r) => r.route?.startsWith('/sampled-check/'));
        return mine.length >= 8 && mine;
      }, 'the records of the 8 sampled-check requests at central');
      assert.ok(
        records.every((r) => r.sampled === false),
        `every record says sampled: false (${JSON.stringify(records.slice(0, 3))})`,
      );
      writeAgentConfig(1);
      agent.child.kill('SIGHUP');
      await everyWorkerSays(true, 'sampleRate 1');
    });

    test('agent down → false in every worker (it cannot be reached); agent back → true', async () => {
      assert.equal((await agent.stop()).code, 0);
      await everyWorkerSays(false, 'agent stopped');
      agent = await startAgent(configFile, { ready: true });
      await everyWorkerSays(true, 'agent running again');
    });
  });
