// PHP-FPM requests become OTLP spans and log records, proven with the real neighbours: Debian's nginx and php-fpm
// (one pool, pm = static, 4 children, clients/php/sidekick-agent.php as auto_prepend_file), a real `sidekick agent`
// with the otlp exporter (http/protobuf, gzip) and the fake OpenTelemetry Collector of test/helpers/otlp.ts, which
// decodes what it receives with the official .proto files.
//
// The page (test/fixtures/php-fpm/otlp.php) answers /users/<n> 200 under Agent::route('/users/{id}'), /missing/<n>
// 404, /boom/<n> 500 (http_response_code), /fatal/<n> with an uncaught Error (PHP answers 500, the record carries
// `error`), and tags the W3C traceparent/tracestate headers when a request has them, as docs/clients.md tells apps
// to. Every request's record carries its n (tag test.n), so each span and log record maps back to one request.
//
// Checked at the collector (docs/agent.md "Send to an OpenTelemetry Collector", src/agent/exporters/otlp/mapping.ts):
// exactly one SERVER span and one LogRecord per request, none twice; the span's name, HTTP attributes, pid (one of
// the pool's workers), times (start = ts, end - start = duration_ms) and status (ERROR exactly for the 5xx); a valid
// traceparent joins the caller's trace (trace id, parent span id, flags, tracestate), an invalid one is ignored like
// an absent one (a fresh trace id, distinct per request); the LogRecord names its request's span; the resource is
// service.name php-fpm (a standalone agent's default) and host.name; and the agent's counters agree.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  agentConfig,
  startAgent,
  tmpDir,
  waitFor,
  writeConfig,
  type AgentProcess,
  type AgentStatus,
} from './helpers/agent.ts';
import { startCollector, type FakeCollector, type FlatLogRecord, type FlatSpan, type Value } from './helpers/otlp.ts';
import { PHP_FPM_MISSING, PHP_FPM_SKIP, ROOT, runLoad, startPhpStack, type PhpStack } from './helpers/php-fpm.ts';
import { PHP_ONE_RUN } from './helpers/ci-split.ts';

// Skipped outside CI without php-fpm/nginx (under CI the first test fails instead), and in .ci/run's Node 24 run.
const SKIP = PHP_FPM_SKIP || PHP_ONE_RUN;

const N = 200;
const CONCURRENCY = 8;
const CHILDREN = 4;
const PAGE = join(ROOT, 'test', 'fixtures', 'php-fpm', 'otlp.php');
const SPAN_KIND_SERVER = 2;
const STATUS_UNSET = 0;
const STATUS_ERROR = 2;
const SEVERITY_INFO = 9;
const SEVERITY_ERROR = 17;
/** Span flags beyond the W3C trace flags: the parent's remoteness is known (0x100) and it is remote (0x200). */
const HAS_IS_REMOTE = 0x100;
const IS_REMOTE = 0x200;

type Case = 'users' | 'missing' | 'boom' | 'fatal';

interface Planned {
  n: number;
  kind: Case;
  method: 'GET' | 'POST';
  path: string;
  headers: Record<string, string>;
  /** A valid traceparent sent: the span must join it. */
  parent?: { traceId: string; spanId: string; flags: number };
  /** The tracestate sent along with a valid traceparent (the span's trace_state). */
  tracestate?: string;
  /** An invalid traceparent sent: ignored, as if absent. */
  invalid?: string;
}

/**
 * Request n: a mix of cases (n % 8), methods (POST for n % 8 === 3), and trace contexts (n % 3 === 0: a valid
 * traceparent, not sampled when n % 9 === 0, with a tracestate when n is even; n % 9 of 4 or 7: an invalid one).
 */
function plan(n: number): Planned {
  const kind = (['users', 'users', 'users', 'users', 'missing', 'boom', 'fatal', 'users'] as const)[n % 8]!;
  const p: Planned = { n, kind, method: n % 8 === 3 ? 'POST' : 'GET', path: `/${kind}/${n}`, headers: {} };
  if (n % 3 === 0) {
    const parent = { traceId: randomBytes(16).toString('hex'), spanId: randomBytes(8).toString('hex') };
    const flags = n % 9 === 0 ? 0 : 1;
    p.parent = { ...parent, flags };
    p.headers.traceparent = `00-${parent.traceId}-${parent.spanId}-0${flags}`;
    if (n % 2 === 0) p.tracestate = p.headers.tracestate = `sk=t${n},other=x`;
  } else if (n % 9 === 4) {
    p.invalid = p.headers.traceparent = `00-${'0'.repeat(32)}-${randomBytes(8).toString('hex')}-01`; // all-zero trace id
  } else if (n % 9 === 7) {
    p.invalid = `ff-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01`; // version ff is invalid
    p.headers.traceparent = p.invalid;
    p.headers.tracestate = 'sk=ignored';
  }
  return p;
}

function expectedStatus(kind: Case): number {
  return kind === 'users' ? 200 : kind === 'missing' ? 404 : 500;
}

function num(v: Value | undefined, what: string): number {
  if (v && 'i' in v) return Number(v.i);
  if (v && 'd' in v) return v.d;
  throw new Error(`${what}: not a number: ${JSON.stringify(v)}`);
}

function str(v: Value | undefined, what: string): string {
  if (v && 's' in v) return v.s;
  throw new Error(`${what}: not a string: ${JSON.stringify(v)}`);
}

/** One item per test.n; throws on a record without test.n or a test.n seen twice. */
function byRequest<T extends FlatSpan | FlatLogRecord>(items: T[], what: string): Map<number, T> {
  const out = new Map<number, T>();
  for (const it of items) {
    const n = num(it.attributes['test.n'], `${what} test.n`);
    assert.ok(!out.has(n), `request ${n} has one ${what}, not two`);
    out.set(n, it);
  }
  return out;
}

function batchKey(attrs: FlatSpan['attributes']): string {
  return `${str(attrs['sidekick.batch.id'], 'sidekick.batch.id')}#${num(attrs['sidekick.batch.index'], 'index')}`;
}

describe('nginx + PHP-FPM + agent → OTLP collector', { skip: SKIP }, () => {
  test('php-fpm and nginx are installed (a CI machine must not skip these tests)', () => {
    assert.equal(PHP_FPM_MISSING, false, String(PHP_FPM_MISSING));
  });

  describe('request records as SERVER spans and log records (http/protobuf, gzip)', () => {
    const tmp = tmpDir('sk-fpm-otlp-');
    let collector: FakeCollector | undefined;
    let agent: AgentProcess | undefined;
    let stack: PhpStack | undefined;

    before(async () => {
      collector = await startCollector();
      const config = writeConfig(
        tmp.dir,
        agentConfig(tmp.dir, {
          exporter: {
            type: 'otlp',
            endpoint: collector.url,
            protocol: 'http/protobuf',
            compression: 'gzip',
            // a loaded 2-core CI machine must not turn a slow answer into a retry (a duplicate at the collector)
            timeoutMs: 10_000,
          },
          // several spool batches, each sent as several parts: ids must stay distinct across all of them
          batch: { maxRecords: 20, maxDelayMs: 100 },
        }),
      );
      agent = await startAgent(config);
      stack = await startPhpStack({ agentSocket: join(tmp.dir, 'agent.sock'), children: CHILDREN, page: PAGE });
    });

    after(async () => {
      await stack?.cleanup().catch(() => undefined);
      if (agent) await agent.stop().catch(() => agent!.crash());
      await collector?.close();
      tmp.cleanup();
    });

    test(`${N} requests → ${N} spans and ${N} log records, each matching its request`, async () => {
      const s = stack!;
      const c = collector!;
      const plans = Array.from({ length: N }, (_, n) => plan(n));
      const t0 = Date.now();
      const load = runLoad({
        url: s.url,
        prefix: 'unused',
        concurrency: CONCURRENCY,
        maxRequests: N,
        maxMs: 30_000,
        request: (n) => plans[n]!,
      });
      await load.done;
      const t1 = Date.now();
      assert.equal(load.errorCount, 0, `no transport error: ${load.errors.join('; ')}`);
      assert.equal(load.completed, N, 'every request answered');

      // nginx's word on each request's status (it writes its access log line after the response)
      await waitFor(() => s.accessLogLines().length >= N, `nginx to log ${N} requests`, 10_000);
      const access = new Map(s.accessLogLines().map((l) => [l.uri, l.status]));
      for (const p of plans) assert.equal(access.get(p.path), expectedStatus(p.kind), `${p.method} ${p.path} status`);

      await c.waitFor(
        (x) => x.spans().length >= N && x.logRecords().length >= N,
        `${N} spans and ${N} log records`,
        30_000,
      );
      // the agent's books settle once the collector's answers are counted; then nothing more may arrive
      let st: AgentStatus | undefined;
      await waitFor(
        async () => {
          st = await agent!.status();
          return st.counters.exported >= N && st.gauges.spoolRecords === 0;
        },
        `the agent to count ${N} records exported`,
        15_000,
        50,
      );
      const counters = st!.counters;
      const spans = c.spans();
      const logs = c.logRecords();
      const workers = new Set(s.workerPids());
      const statuses = [...load.statuses].map(([k, v]) => `${k}×${v}`).join(' ');
      console.log(
        `[php-fpm-otlp] ${N} requests in ${((t1 - t0) / 1000).toFixed(1)} s (${statuses}); collector: ` +
          `${c.requests.filter((r) => r.signal === 'logs').length} logs requests, ` +
          `${c.requests.filter((r) => r.signal === 'traces').length} traces requests, ${spans.length} spans, ` +
          `${logs.length} log records; workers ${[...workers].join(' ')}; agent exported ${counters.exported}, ` +
          `otlp.spans ${counters.otlp.spans}, batches ${counters.exportedBatches}`,
      );

      // ---- the wire: every request to the signal paths, protobuf + gzip, decodable, answered 200
      assert.deepEqual(c.unmatched, [], 'nothing sent to another path');
      for (const r of c.requests) {
        assert.equal(r.contentType, 'application/x-protobuf', `${r.path} content type`);
        assert.equal(r.encoding, 'gzip', `${r.path} content encoding`);
        assert.equal(r.error, undefined, `${r.path} decodes with the official .proto files`);
      }

      // ---- exactly one of each per request
      assert.equal(spans.length, N, 'one span per request');
      assert.equal(logs.length, N, 'one log record per request');
      const spanOf = byRequest(spans, 'span');
      const logOf = byRequest(logs, 'log record');
      assert.deepEqual(
        [...spanOf.keys()].sort((a, b) => a - b),
        plans.map((p) => p.n),
        'a span for every request n',
      );
      assert.equal(logOf.size, N, 'a log record for every request n');
      assert.equal(new Set(spans.map((x) => batchKey(x.attributes))).size, N, 'no (batch id, index) twice in spans');
      assert.equal(new Set(logs.map((x) => batchKey(x.attributes))).size, N, 'no (batch id, index) twice in logs');
      assert.equal(new Set(spans.map((x) => x.spanId)).size, N, 'span ids are distinct');

      assert.equal(workers.size, CHILDREN, `the pool's ${CHILDREN} workers are alive: ${[...workers].join(' ')}`);
      const pidsSeen = new Set<number>();
      const sentTraceIds = new Set(plans.flatMap((p) => (p.parent ? [p.parent.traceId] : [])));
      const freshTraceIds = new Set<string>();
      let fatalRequests = 0;

      for (const p of plans) {
        const span = spanOf.get(p.n)!;
        const log = logOf.get(p.n);
        const at = `request ${p.n} (${p.method} ${p.path}${p.parent ? ', traceparent' : p.invalid ? ', bad traceparent' : ''})`;
        assert.ok(log, `${at}: a log record`);
        const la = log.attributes;
        const sa = span.attributes;
        const status = expectedStatus(p.kind);
        const route = p.kind === 'users' ? '/users/{id}' : p.path;
        const failed = status >= 500;
        if (p.kind === 'fatal') fatalRequests++;

        // the record as the PHP client sent it (the log record carries every field)
        assert.equal(str(la.route, 'route'), route, `${at}: record route`);
        assert.equal(str(la.method, 'method'), p.method, `${at}: record method`);
        assert.equal(num(la.status, 'status'), status, `${at}: record status`);
        assert.equal(str(la.sapi, 'sapi'), 'fpm-fcgi', `${at}: record sapi`);
        assert.equal('error' in la, p.kind === 'fatal', `${at}: an error field exactly for the fatal error`);
        const pid = num(la.pid, 'pid');
        const ts = num(la.ts, 'ts');
        const durationMs = num(la.duration_ms, 'duration_ms');
        assert.ok(workers.has(pid), `${at}: pid ${pid} is a php-fpm worker (${[...workers].join(' ')})`);
        pidsSeen.add(pid);
        assert.ok(Number.isInteger(ts) && ts >= t0 - 1000 && ts <= t1 + 1000, `${at}: ts ${ts} within the load`);
        assert.ok(durationMs >= 0, `${at}: duration_ms ${durationMs}`);

        // the span
        assert.equal(span.kind, SPAN_KIND_SERVER, `${at}: SERVER span`);
        assert.equal(span.name, `${p.method} ${route}`, `${at}: span name`);
        assert.equal(str(sa['http.request.method'], 'http.request.method'), p.method, `${at}: http.request.method`);
        assert.equal(str(sa['http.route'], 'http.route'), route, `${at}: http.route`);
        assert.equal(num(sa['http.response.status_code'], 'status code'), status, `${at}: http.response.status_code`);
        assert.equal(num(sa['process.pid'], 'process.pid'), pid, `${at}: process.pid`);
        const start = BigInt(span.startTimeUnixNano);
        const end = BigInt(span.endTimeUnixNano);
        assert.equal(start, BigInt(ts) * 1_000_000n, `${at}: span start = the record's ts`);
        assert.ok(start <= end, `${at}: start ≤ end`);
        assert.equal(end - start, BigInt(Math.round(durationMs * 1e6)), `${at}: end - start = duration_ms`);
        assert.equal(span.status.code, failed ? STATUS_ERROR : STATUS_UNSET, `${at}: span status`);
        if (failed) assert.equal(str(sa['error.type'], 'error.type'), String(status), `${at}: error.type`);
        else assert.equal(sa['error.type'], undefined, `${at}: no error.type`);
        if (p.kind === 'fatal') {
          assert.match(
            span.status.message,
            /^Uncaught Error: Call to undefined function sk_otlp_undefined_function\(\)/,
          );
          assert.equal(span.status.message, str(la.error, 'error'), `${at}: status message = the record's error`);
        } else {
          assert.equal(span.status.message, '', `${at}: no status message`);
        }
        assert.equal(sa.traceparent, undefined, `${at}: the traceparent is the span's parent, not an attribute`);

        // its trace: the caller's when it sent a valid traceparent, else a fresh one
        if (p.parent) {
          assert.equal(span.traceId, p.parent.traceId, `${at}: joins the caller's trace`);
          assert.equal(span.parentSpanId, p.parent.spanId, `${at}: child of the caller's span`);
          assert.notEqual(span.spanId, p.parent.spanId, `${at}: a span of its own`);
          assert.equal(span.flags, p.parent.flags | HAS_IS_REMOTE | IS_REMOTE, `${at}: trace flags, remote parent`);
          assert.equal(span.traceState, p.tracestate ?? '', `${at}: trace state`);
        } else {
          assert.match(span.traceId, /^[0-9a-f]{32}$/);
          assert.doesNotMatch(span.traceId, /^0+$/, `${at}: a valid trace id`);
          assert.ok(!sentTraceIds.has(span.traceId), `${at}: not a trace id some caller sent`);
          assert.ok(!freshTraceIds.has(span.traceId), `${at}: a trace id of its own (${span.traceId})`);
          freshTraceIds.add(span.traceId);
          assert.equal(span.parentSpanId, '', `${at}: a root span`);
          assert.equal(span.flags, 0x01 | HAS_IS_REMOTE, `${at}: sampled root`);
          assert.equal(span.traceState, '', `${at}: no trace state`);
          if (p.invalid) assert.equal(str(la.traceparent, 'traceparent'), p.invalid, `${at}: kept on the log record`);
        }

        // the log record belongs to its request's span
        assert.equal(log.traceId, span.traceId, `${at}: log trace id = span trace id`);
        assert.equal(log.spanId, span.spanId, `${at}: log span id = span id`);
        assert.equal(log.flags, span.flags & 0xff, `${at}: log flags = trace flags`);
        assert.equal(log.severityNumber, failed ? SEVERITY_ERROR : SEVERITY_INFO, `${at}: severity`);
        assert.equal(log.severityText, failed ? 'ERROR' : 'INFO', `${at}: severity text`);
        assert.equal(log.eventName, 'php_request', `${at}: event name`);
        assert.equal(log.timeUnixNano, span.startTimeUnixNano, `${at}: log time = span start`);
        // observed = when the agent accepted it, at its spool frame's granularity: the frame's first append, up to a
        // few ms before a later record of the same frame arrived (so possibly before a short request's own ts)
        const observed = BigInt(log.observedTimeUnixNano);
        assert.ok(
          observed >= BigInt(t0 - 1000) * 1_000_000n && observed <= BigInt(Date.now()) * 1_000_000n,
          `${at}: observed time`,
        );
        assert.equal(batchKey(la), batchKey(sa), `${at}: log and span name the same (batch id, index)`);

        // who sent it
        for (const [what, item] of [
          ['span', span],
          ['log', log],
        ] as const) {
          assert.deepEqual(item.resource['service.name'], { s: 'php-fpm' }, `${at}: ${what} service.name`);
          assert.deepEqual(item.resource['host.name'], { s: hostname() }, `${at}: ${what} host.name`);
          assert.equal(item.scope.name, 'sidekick-agent', `${at}: ${what} scope`);
        }
      }
      assert.equal(freshTraceIds.size, plans.filter((p) => !p.parent).length, 'fresh trace ids, one per request');
      console.log(`[php-fpm-otlp] pids in the spans: ${[...pidsSeen].join(' ')}`);

      // ---- the agent's books
      assert.equal(counters.received, N, 'one record received per request');
      assert.equal(counters.exported, N, 'exported = requests');
      assert.equal(counters.otlp.spans, N, 'otlp.spans = requests');
      assert.equal(counters.deadLettered, 0);
      assert.equal(counters.clientDropped, 0);
      assert.equal(counters.otlp.rejectedLogs + counters.otlp.rejectedSpans, 0);
      assert.equal(
        Object.values(counters.invalid).reduce((a, b) => a + b, 0),
        0,
        'no invalid line',
      );
      // settled: nothing more reached the collector than the N of each
      assert.equal(c.spans().length, N, 'still exactly N spans');
      assert.equal(c.logRecords().length, N, 'still exactly N log records');

      // PHP's error log: the fatal errors the page made, nothing else
      const errors = s.phpErrors();
      assert.equal((errors.match(/PHP Fatal error: /g) ?? []).length, fatalRequests, 'one PHP fatal per fatal request');
      assert.doesNotMatch(errors, /PHP (Warning|Notice|Deprecated)/, 'no PHP warning, notice or deprecation');
    });
  });
});
