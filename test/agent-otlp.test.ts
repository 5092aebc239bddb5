// The otlp exporter end to end: a real `sidekick agent` process sending OTLP/HTTP to the fake collector
// (helpers/otlp-collector.ts, which decodes strictly against the vendored .proto files). What is checked:
// - both encodings (protobuf + gzip, JSON uncompressed): every record a LogRecord, every request record a SERVER span,
//   the configured and the environment's headers, the resource (service.name default or configured, host.name),
//   per-signal URLs used as given;
// - the collector's answers as the OTLP/HTTP spec defines them (src/agent/exporters/otlp/exporter.ts): partial
//   success (dead-lettered, reason otlp_partial), 400 (final: dead-lettered, not retried), 500 (retried), 429 + Retry-After,
//   503 until the breaker opens, 413 (halves), a hang (timeout), a torn connection; the two signals of a part are
//   settled separately (a signal the collector took is not sent again);
// - counts balance in every test: records sent = exported + dead-lettered + dropped + invalid;
// - config errors exit 78 naming the field.
// Records carry a unique key `k`; a LogRecord or span counts as delivered only when the collector answered its request
// 2xx (a hung or torn request was decoded by the collector but never acknowledged).
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { deadLetters, sendOnce, waitFor, type AgentProcess, type AgentStatus } from './helpers/agent.ts';
import { agentScope } from './helpers/agent-scope.ts';
import {
  startCollector,
  type Attrs,
  type CollectorReply,
  type CollectorRequest,
  type FakeCollector,
  type Value,
} from './helpers/otlp.ts';

// ------------------------------------------------------------------------------------------------ records

/** A request record as the PHP client sends it (a span and a LogRecord), key `k`. */
function requestLine(k: string, status = 200): string {
  const r = { type: 'php_request', k, method: 'GET', route: '/items/{id}', status, duration_ms: 12.5, pid: 4242 };
  return `${JSON.stringify(r)}\n`;
}

/** Any other record (a LogRecord only). */
function otherLine(k: string): string {
  return `${JSON.stringify({ type: 'app_log', k, msg: 'hello', level: 'info' })}\n`;
}

/** `n` records `<prefix>-<i>`, request records at even i: the lines, and which keys are request records. */
function mixed(prefix: string, n: number): { lines: string; keys: string[]; requests: string[] } {
  const keys = Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
  const requests = keys.filter((_, i) => i % 2 === 0);
  const lines = keys.map((k, i) => (i % 2 === 0 ? requestLine(k) : otherLine(k))).join('');
  return { lines, keys, requests };
}

const str = (v: Value | undefined): string | undefined => (v && 's' in v ? v.s : undefined);
const int = (v: Value | undefined): string | undefined => (v && 'i' in v ? v.i : undefined);

interface Item {
  k: string;
  /** (sidekick.batch.id, sidekick.batch.index): what a receiver dedupes on. */
  id: string;
  attrs: Attrs;
}

function itemOf(attrs: Attrs): Item {
  const k = str(attrs.k) ?? '?';
  return { k, id: `${str(attrs['sidekick.batch.id'])}#${int(attrs['sidekick.batch.index'])}`, attrs };
}

/** The LogRecords or spans of one decoded request (none when it could not be decoded). */
function itemsOf(req: CollectorRequest): Item[] {
  const out: Item[] = [];
  if (req.signal === 'logs')
    for (const rl of req.decoded?.resourceLogs ?? [])
      for (const sl of rl.scopeLogs) for (const lr of sl.logRecords) out.push(itemOf(lr.attributes));
  else
    for (const rs of req.decoded?.resourceSpans ?? [])
      for (const ss of rs.scopeSpans) for (const s of ss.spans) out.push(itemOf(s.attributes));
  return out;
}

// ------------------------------------------------------------------------------------------------ collector

interface Scripted {
  c: FakeCollector;
  /** The reply given to request n. */
  replies: CollectorReply[];
  /** Items of the requests answered 2xx, per signal (duplicates included). */
  accepted(signal: 'logs' | 'traces'): Item[];
  /** Requests of `signal` whose first key starts with `prefix`. */
  requestsOf(signal: 'logs' | 'traces', prefix: string): CollectorRequest[];
}

/** A fake collector closed after the test; `script` answers each request, given its items. */
async function scripted(
  t: TestContext,
  script: (req: CollectorRequest, items: Item[]) => CollectorReply = () => ({}),
  pathPrefix = '',
): Promise<Scripted> {
  const replies: CollectorReply[] = [];
  const c = await startCollector({
    pathPrefix,
    respond: (req, n) => (replies[n] = script(req, itemsOf(req))),
  });
  t.after(() => c.close());
  const ok = (r: CollectorReply | undefined): boolean =>
    typeof r === 'object' && (r.status ?? 200) >= 200 && (r.status ?? 200) < 300;
  return {
    c,
    replies,
    accepted: (signal) => c.requests.flatMap((r, n) => (r.signal === signal && ok(replies[n]) ? itemsOf(r) : [])),
    requestsOf: (signal, prefix) =>
      c.requests.filter((r) => r.signal === signal && itemsOf(r)[0]?.k.startsWith(`${prefix}-`)),
  };
}

/** How many times each key was delivered (answered 2xx), for the keys starting with `prefix`. */
function countsOf(items: Item[], prefix: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const it of items) if (it.k.startsWith(`${prefix}-`)) m.set(it.k, (m.get(it.k) ?? 0) + 1);
  return m;
}

/** Every key delivered exactly once (and nothing else under the prefix). */
function assertOnce(items: Item[], prefix: string, keys: string[], what: string): void {
  const m = countsOf(items, prefix);
  assert.deepEqual([...m.keys()].sort(), [...keys].sort(), `${what}: the keys delivered`);
  const twice = [...m].filter(([, n]) => n !== 1);
  assert.deepEqual(twice, [], `${what}: each exactly once`);
}

/**
 * After a receiver's dedupe on (sidekick.batch.id, sidekick.batch.index): every key once, each under one id only (a
 * record sent under two ids would survive the dedupe twice). Returns the duplicates the receiver had to drop.
 */
function assertDeduped(items: Item[], prefix: string, keys: string[], what: string): number {
  const ids = new Map<string, Set<string>>();
  let n = 0;
  for (const it of items) {
    if (!it.k.startsWith(`${prefix}-`)) continue;
    n++;
    ids.set(it.k, (ids.get(it.k) ?? new Set()).add(it.id));
  }
  assert.deepEqual([...ids.keys()].sort(), [...keys].sort(), `${what}: the keys delivered (none lost)`);
  assert.deepEqual(
    [...ids].filter(([, v]) => v.size !== 1),
    [],
    `${what}: one id per record`,
  );
  return n - ids.size;
}

// ------------------------------------------------------------------------------------------------ agent

function otlpExporter(endpoint: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { type: 'otlp', endpoint, timeoutMs: 10_000, ...extra };
}

const sum = (o: Record<string, number>): number => Object.values(o).reduce((a, b) => a + b, 0);

/** Records sent = exported + dead-lettered + dropped + invalid, and dead letters add up by reason. */
function assertBalanced(s: AgentStatus, sent: number): void {
  const c = s.counters;
  assert.equal(c.received, sent, 'received = lines sent');
  assert.equal(
    c.exported + c.deadLettered + sum(c.dropped) + sum(c.invalid),
    sent,
    `sent = exported ${c.exported} + dead-lettered ${c.deadLettered} + dropped ${sum(c.dropped)} + invalid ${sum(c.invalid)}`,
  );
  assert.equal(sum(c.deadLetteredBy), c.deadLettered, 'dead letters by reason add up');
  assert.equal(s.gauges.spoolRecords, 0, 'nothing left in the spool');
}

/**
 * Waits until all `sent` lines are accounted for (exported, dead-lettered, dropped or invalid) and the spool is empty,
 * then checks that they balance (a record counted twice fails here, not as a timeout).
 */
async function settled(agent: AgentProcess, sent: number, what: string, timeoutMs = 20_000): Promise<AgentStatus> {
  const s = await waitFor(
    async () => {
      const st = await agent.status();
      const c = st.counters;
      const done = c.exported + c.deadLettered + sum(c.dropped) + sum(c.invalid);
      return done >= sent && st.gauges.spoolRecords === 0 && st;
    },
    `${what}: ${sent} records accounted for`,
    timeoutMs,
  );
  assertBalanced(s, sent);
  return s;
}

// ------------------------------------------------------------------------------------------------ happy paths

test('protobuf + gzip: N request records and M others → N+M LogRecords, N spans; headers, resource, counters', async (t) => {
  const scope = agentScope(t);
  const col = await scripted(t);
  scope.writeConfig({
    exporter: otlpExporter(col.c.url, {
      protocol: 'http/protobuf',
      compression: 'gzip',
      headers: { 'x-team': 'checkout' },
      headersFromEnv: { 'x-api-key': 'SK_TEST_OTLP_API_KEY' },
    }),
  });
  const agent = await scope.startAgent({ env: { SK_TEST_OTLP_API_KEY: 'key-from-env' } });
  const { lines, keys, requests } = mixed('pb', 60); // N = 30 request records, M = 30 others
  // Two lines no exporter can map: refused at ingest (counted invalid), never spooled, never sent.
  await sendOnce(scope.sock, `${lines}not json\n[1,2,3]\n`);
  const s = await settled(agent, keys.length + 2, 'protobuf');
  assert.equal(s.counters.exported, 60);
  assert.equal(s.counters.otlp.spans, 30);
  assert.equal(s.counters.invalid.not_json, 1);
  assert.equal(s.counters.invalid.not_object, 1);
  assert.equal(s.counters.deadLettered, 0);
  assertOnce(col.accepted('logs'), 'pb', keys, 'LogRecords');
  assertOnce(col.accepted('traces'), 'pb', requests, 'spans');
  assert.equal(col.c.logRecords().length, 60, 'no other LogRecord (the invalid lines were not sent)');
  assert.equal(col.c.spans().length, 30);
  for (const r of col.c.requests) {
    assert.equal(r.path, `/v1/${r.signal}`);
    assert.equal(r.contentType, 'application/x-protobuf');
    assert.equal(r.encoding, 'gzip');
    assert.equal(r.headers['x-team'], 'checkout', 'a configured header');
    assert.equal(r.headers['x-api-key'], 'key-from-env', 'a header from the environment');
    assert.equal(r.error, undefined);
  }
  assert.deepEqual(col.c.unmatched, []);
  const lr = col.c.logRecords()[0]!;
  assert.equal(str(lr.resource['service.name']), 'php-fpm', 'the default for a standalone agent');
  assert.equal(str(lr.resource['host.name']), hostname());
  assert.equal(lr.scope.name, 'sidekick-agent');
  const span = col.c.spans().find((x) => str(x.attributes.k) === 'pb-0')!;
  assert.equal(span.name, 'GET /items/{id}');
  assert.equal(span.kind, 2, 'SERVER');
  assert.equal(str(span.attributes['http.request.method']), 'GET');
  assert.equal(int(span.attributes['http.response.status_code']), '200');
  assert.equal(int(span.attributes['process.pid']), '4242');
  assert.equal(str(span.resource['service.name']), 'php-fpm');
  const log = col.c.logRecords().find((x) => str(x.attributes.k) === 'pb-0')!;
  assert.equal(log.traceId, span.traceId, "a request's LogRecord belongs to its span");
  assert.equal(log.spanId, span.spanId);
  assert.equal((await agent.stop()).code, 0);
});

test('JSON uncompressed to per-signal URLs (used as given), configured service.name wins', async (t) => {
  const scope = agentScope(t);
  const logsCol = await scripted(t, () => ({}), '/tenant-a/otlp');
  const tracesCol = await scripted(t, () => ({}), '/tenant-b');
  const dead = await scope.deadPort(); // the base endpoint: per-signal URLs win, nothing goes here
  scope.writeConfig({
    exporter: otlpExporter(`http://127.0.0.1:${dead}`, {
      protocol: 'http/json',
      compression: 'none',
      logsEndpoint: `${logsCol.c.url}/v1/logs?src=agent`,
      tracesEndpoint: `${tracesCol.c.url}/v1/traces`,
      resource: { 'service.name': 'shop', 'deployment.environment': 'test' },
    }),
  });
  const agent = await scope.startAgent();
  const { lines, keys, requests } = mixed('js', 40);
  await sendOnce(scope.sock, lines);
  const s = await settled(agent, keys.length, 'json');
  assert.equal(s.counters.exported, 40);
  assert.equal(s.counters.otlp.spans, 20);
  assertOnce(logsCol.accepted('logs'), 'js', keys, 'LogRecords');
  assertOnce(tracesCol.accepted('traces'), 'js', requests, 'spans');
  assert.ok(logsCol.c.requests.every((r) => r.signal === 'logs' && r.path === '/tenant-a/otlp/v1/logs?src=agent'));
  assert.ok(tracesCol.c.requests.every((r) => r.signal === 'traces' && r.path === '/tenant-b/v1/traces'));
  assert.deepEqual([...logsCol.c.unmatched, ...tracesCol.c.unmatched], []);
  for (const r of [...logsCol.c.requests, ...tracesCol.c.requests]) {
    assert.equal(r.contentType, 'application/json');
    assert.equal(r.encoding, 'identity', 'compression none: no Content-Encoding');
    assert.equal(r.error, undefined, 'strict OTLP/JSON');
  }
  const res = logsCol.c.logRecords()[0]!.resource;
  assert.equal(str(res['service.name']), 'shop');
  assert.equal(str(res['deployment.environment']), 'test');
  assert.equal(str(res['host.name']), hostname());
  assert.equal(str(tracesCol.c.spans()[0]!.resource['service.name']), 'shop');
  assert.equal((await agent.stop()).code, 0);
});

// ------------------------------------------------------------------------------------------------ answers

for (const protocol of ['http/protobuf', 'http/json'] as const) {
  test(`${protocol}: 200 with partial_success dead-letters the rejected count (otlp_partial); a 400's message is kept`, async (t) => {
    const scope = agentScope(t);
    let logsSeen = 0;
    const message = 'attribute "k" is not allowed here';
    const col = await scripted(t, (req, items) => {
      if (items[0]?.k.startsWith('bad-')) return { status: 400, errorMessage: 'bad: unknown field "k"' };
      return req.signal === 'logs' && logsSeen++ === 0 ? { partialSuccess: { rejected: 3, message } } : {};
    });
    scope.writeConfig({ exporter: otlpExporter(col.c.url, { protocol }) });
    const agent = await scope.startAgent();
    const { lines, keys } = mixed('ps', 10);
    await sendOnce(scope.sock, lines);
    let s = await settled(agent, 10, 'partial success');
    assert.equal(s.counters.exported, 7);
    assert.equal(s.counters.deadLettered, 3);
    assert.equal(s.counters.deadLetteredBy.otlp_partial, 3);
    assert.equal(s.counters.otlp.rejectedLogs, 3);
    assert.equal(s.counters.otlp.rejectedSpans, 0);
    assert.equal(s.counters.otlp.spans, 5);
    assert.equal(sum(s.counters.retried), 0, 'a partial success is not retried');
    assert.equal(col.c.requests.length, 2, 'one request per signal');
    let dl = deadLetters(join(scope.dir, 'spool'));
    assert.equal(dl.sidecars.length, 1);
    const side = dl.sidecars[0]!;
    assert.equal(side.reason, 'otlp_partial');
    assert.equal(side.rejected, 3);
    assert.equal(side.status, 200);
    assert.match(String(side.body), /3 of 10 log records rejected.*attribute "k" is not allowed here/);
    // which 3 the collector does not say: the part is kept whole beside the message
    assert.deepEqual(dl.records.map((l) => (JSON.parse(l) as { k: string }).k).sort(), [...keys].sort());
    await waitFor(
      () => agent.logs().find((l) => l.code === 'SK_ERR_DEAD_LETTER' && l.reason === 'otlp_partial'),
      'the dead letter logged',
      5000,
    );
    // a 400 answered in this encoding: its google.rpc.Status message reaches the sidecar
    await sendOnce(scope.sock, mixed('bad', 4).lines);
    s = await settled(agent, 14, '400');
    assert.equal(s.counters.deadLetteredBy.rejected, 4);
    dl = deadLetters(join(scope.dir, 'spool'));
    const bad = dl.sidecars.find((x) => x.status === 400);
    assert.match(String(bad?.body), /^bad: unknown field "k"$/);
    assert.equal((await agent.stop()).code, 0);
  });
}

test('400 is final, 500 is retried, 429 waits for Retry-After, 413 splits, a refused or partly taken signal is settled once across 413 halves, signals settle separately', async (t) => {
  const scope = agentScope(t);
  const seen = new Map<string, number>(); // `${phase}/${signal}` → requests so far
  const col = await scripted(t, (req, items) => {
    const phase = items[0]?.k.replace(/-\d+$/, '') ?? '';
    const key = `${phase}/${req.signal}`;
    const n = seen.get(key) ?? 0;
    seen.set(key, n + 1);
    switch (phase) {
      case 'r400':
        return { status: 400, errorMessage: 'r400: field k is not a valid attribute' };
      case 'r500': // once: a Collector before v0.97 whose memory_limiter refused the data
        return n === 0 ? { status: 500, errorMessage: 'r500: memory limiter refused' } : {};
      case 't429':
        return n === 0 ? { status: 429, retryAfter: 1, errorMessage: 'slow down' } : {};
      case 'indep': // logs taken at once, traces refused three times
        return req.signal === 'traces' && n < 3 ? { status: 503, errorMessage: 'traces backend down' } : {};
      case 'split':
        return items.length > 2 ? { status: 413, errorMessage: 'too large' } : {};
      case 'splitrej': // logs refused for good, traces too large: the halves send only traces
        if (req.signal === 'logs') return { status: 400, errorMessage: 'splitrej: logs refused' };
        return items.length > 1 ? { status: 413 } : {};
      case 'lone': // one record: logs refused, traces too large (no halves)
        return req.signal === 'logs' ? { status: 400, errorMessage: 'lone: logs refused' } : { status: 413 };
      case 'splitpart': // 1 LogRecord of the part rejected, traces too large
        if (req.signal === 'logs') return { partialSuccess: { rejected: 1, message: 'splitpart: one bad record' } };
        return items.length > 1 ? { status: 413 } : {};
      default:
        return {};
    }
  });
  scope.writeConfig({
    exporter: otlpExporter(col.c.url),
    batch: { maxRecords: 50, maxDelayMs: 200, maxInFlight: 1 }, // a phase's records in one part
    breaker: { failures: 20, halfOpenAfterMs: 300 },
  });
  const agent = await scope.startAgent();
  let sent = 0;
  let before = await agent.status();
  const phase = async (
    name: string,
    n: number,
  ): Promise<{ keys: string[]; requests: string[]; s: AgentStatus; d: (f: (s: AgentStatus) => number) => number }> => {
    const m = mixed(name, n);
    sent += n;
    await sendOnce(scope.sock, m.lines);
    const s = await settled(agent, sent, name);
    const prev = before;
    before = s;
    return { ...m, s, d: (f) => f(s) - f(prev) };
  };
  const sidecarsOf = (name: string): Record<string, unknown>[] =>
    deadLetters(join(scope.dir, 'spool')).sidecars.filter((x) => String(x.body).includes(name));
  const requestCounts = (name: string): [number, number] => [
    col.requestsOf('logs', name).length,
    col.requestsOf('traces', name).length,
  ];

  // 400 with a google.rpc.Status: dead-lettered with its message, not retried
  let p = await phase('r400', 6);
  assert.equal(
    p.d((s) => s.counters.deadLetteredBy.rejected),
    6,
  );
  assert.equal(
    p.d((s) => s.counters.exported),
    0,
  );
  assert.equal(
    p.d((s) => sum(s.counters.retried)),
    0,
  );
  assert.deepEqual(requestCounts('r400'), [1, 1], 'one request per signal');
  const side = sidecarsOf('r400');
  assert.equal(side.length, 1, 'one dead letter: the LogRecords decide the records (requestSignal both)');
  assert.equal(side[0]!.status, 400);
  assert.equal(side[0]!.reason, 'rejected');
  assert.equal(side[0]!.rejected, 6);
  assert.match(String(side[0]!.body), /field k is not a valid attribute/);

  // 500: final per the spec, but retried (older Collectors answered 500 for a memory_limiter refusal: the agent
  // keeps the data rather than believe it; docs/agent.md) — then delivered once, nothing dead-lettered
  p = await phase('r500', 4);
  assert.equal(
    p.d((s) => s.counters.exported),
    4,
  );
  assert.equal(
    p.d((s) => s.counters.deadLettered),
    0,
  );
  assert.equal(
    p.d((s) => s.counters.retried.http_5xx),
    1,
  );
  assert.deepEqual(requestCounts('r500'), [2, 2], 'both signals refused once, sent again once');
  assert.equal(sidecarsOf('r500').length, 0);

  // 429 + Retry-After: 1 → both signals once more, no sooner than a second later, then delivered once
  p = await phase('t429', 6);
  assert.deepEqual(requestCounts('t429'), [2, 2]);
  for (const signal of ['logs', 'traces'] as const) {
    const [first, second] = col.requestsOf(signal, 't429');
    assert.ok(second!.at - first!.at >= 990, `${signal}: the retry came ${second!.at - first!.at} ms after the 429`);
  }
  assert.equal(
    p.d((s) => s.counters.retried.http_429),
    1,
    'one failed attempt (both signals in it)',
  );
  assert.equal(
    p.d((s) => s.counters.exported),
    6,
  );
  assertOnce(col.accepted('logs'), 't429', p.keys, 'LogRecords');
  assertOnce(col.accepted('traces'), 't429', p.requests, 'spans');
  const retry = agent.logs().find((l) => l.code === 'SK_ERR_EXPORT_FAILED' && l.reason === 'http_429')!;
  assert.ok(Number(retry.retryInMs) >= 1000, `retry scheduled in ${String(retry.retryInMs)} ms`);

  // logs 200, traces 503 three times: only traces are sent again
  p = await phase('indep', 6);
  assert.deepEqual(requestCounts('indep'), [1, 4], 'the logs request is not repeated while traces are retried');
  assertOnce(col.accepted('logs'), 'indep', p.keys, 'LogRecords');
  assertOnce(col.accepted('traces'), 'indep', p.requests, 'spans');
  assert.equal(
    p.d((s) => s.counters.retried.http_5xx),
    3,
  );
  assert.equal(
    p.d((s) => s.counters.exported),
    6,
  );
  assert.equal(
    p.d((s) => s.counters.otlp.spans),
    3,
  );

  // 413 above 2 items per request: 8 records (4 spans) end up in halves, every record exactly once per signal
  p = await phase('split', 8);
  assertOnce(col.accepted('logs'), 'split', p.keys, 'LogRecords');
  assertOnce(col.accepted('traces'), 'split', p.requests, 'spans');
  assert.ok(
    col.requestsOf('logs', 'split').some((r) => itemsOf(r).length === 8),
    'the whole part was tried first (and answered 413)',
  );
  assert.equal(
    p.d((s) => s.counters.exported),
    8,
  );
  assert.equal(
    p.d((s) => s.counters.deadLettered),
    0,
  );
  assert.equal(
    p.d((s) => s.counters.otlp.spans),
    4,
  );

  // logs refused (400) while traces are too large: the records are dead-lettered once, the halves carry only traces
  p = await phase('splitrej', 4);
  assert.equal(col.requestsOf('logs', 'splitrej').length, 1, 'logs sent once');
  assertOnce(col.accepted('traces'), 'splitrej', p.requests, 'spans');
  assert.equal(
    p.d((s) => s.counters.deadLetteredBy.rejected),
    4,
  );
  assert.equal(
    p.d((s) => s.counters.exported),
    0,
    'records whose LogRecord was refused are not also exported',
  );
  assert.equal(
    p.d((s) => s.counters.otlp.rejectedLogs),
    4,
  );
  assert.deepEqual(
    deadLetters(join(scope.dir, 'spool'))
      .records.map((l) => (JSON.parse(l) as { k: string }).k)
      .filter((k) => k.startsWith('splitrej-'))
      .sort(),
    [...p.keys].sort(),
    'each refused record kept once',
  );

  // the same for a lone request record: no halves, dead-lettered once
  p = await phase('lone', 1);
  assert.deepEqual(requestCounts('lone'), [1, 1]);
  assert.equal(
    p.d((s) => s.counters.deadLettered),
    1,
  );

  // 1 of the LogRecords rejected (partial success) while traces are too large: 1 dead-lettered, 3 exported
  p = await phase('splitpart', 4);
  assert.equal(col.requestsOf('logs', 'splitpart').length, 1, 'logs sent once');
  assertOnce(col.accepted('traces'), 'splitpart', p.requests, 'spans');
  assert.equal(
    p.d((s) => s.counters.deadLetteredBy.otlp_partial),
    1,
  );
  assert.equal(
    p.d((s) => s.counters.exported),
    3,
  );
  assert.equal(
    p.d((s) => s.counters.otlp.rejectedLogs),
    1,
  );
  assert.equal(sidecarsOf('splitpart: one bad record').length, 1);
  assert.equal((await agent.stop()).code, 0);
});

test('a hang times out and a torn connection is retried: delivered once each', async (t) => {
  const scope = agentScope(t);
  const seen = new Map<string, number>();
  const col = await scripted(t, (req, items) => {
    const phase = items[0]?.k.replace(/-\d+$/, '') ?? '';
    const key = `${phase}/${req.signal}`;
    const n = seen.get(key) ?? 0;
    seen.set(key, n + 1);
    if (phase === 'hang' && req.signal === 'logs' && n === 0) return 'hang';
    if (phase === 'torn' && req.signal === 'traces' && n === 0) return 'destroy';
    return {};
  });
  scope.writeConfig({
    exporter: otlpExporter(col.c.url, { timeoutMs: 500 }),
    batch: { maxRecords: 50, maxDelayMs: 50, maxInFlight: 1 },
    breaker: { failures: 20, halfOpenAfterMs: 300 },
  });
  const agent = await scope.startAgent();
  const hang = mixed('hang', 6);
  await sendOnce(scope.sock, hang.lines);
  let s = await settled(agent, 6, 'hang');
  // (on a loaded machine another attempt may time out too: at least one, and the data still arrives once)
  assert.ok(s.counters.retried.timeout >= 1, `retried.timeout ${s.counters.retried.timeout}`);
  assert.ok(col.requestsOf('logs', 'hang').length >= 2);
  // (a 200 that came after the agent gave up would be sent again, with the same ids: the receiver drops it)
  let duplicates = assertDeduped(col.accepted('logs'), 'hang', hang.keys, 'LogRecords');
  duplicates += assertDeduped(col.accepted('traces'), 'hang', hang.requests, 'spans');
  assert.equal(s.counters.exported, 6);
  const torn = mixed('torn', 6);
  await sendOnce(scope.sock, torn.lines);
  s = await settled(agent, 12, 'torn');
  assert.ok(s.counters.retried.network >= 1, `retried.network ${s.counters.retried.network}`);
  assert.ok(col.requestsOf('traces', 'torn').length >= 2);
  duplicates += assertDeduped(col.accepted('logs'), 'torn', torn.keys, 'LogRecords');
  duplicates += assertDeduped(col.accepted('traces'), 'torn', torn.requests, 'spans');
  t.diagnostic(`hang/torn: ${col.c.requests.length} requests, ${duplicates} duplicate items before dedupe`);
  assert.equal(s.counters.exported, 12);
  assert.equal(s.counters.deadLettered, 0);
  const failed = agent.logs().filter((l) => l.code === 'SK_ERR_EXPORT_FAILED');
  assert.ok(failed.some((l) => l.reason === 'timeout' && /timed out after 500 ms/.test(String(l.msg))));
  assert.ok(failed.some((l) => l.reason === 'network'));
  assert.equal((await agent.stop()).code, 0);
});

test('503 until the breaker opens: records stay in the spool; the collector recovers: all delivered, none lost', async (t) => {
  const scope = agentScope(t);
  let down = true;
  const col = await scripted(t, () => (down ? { status: 503, errorMessage: 'collector restarting' } : {}));
  scope.writeConfig({
    exporter: otlpExporter(col.c.url),
    batch: { maxRecords: 40, maxDelayMs: 50, maxInFlight: 2 },
    breaker: { failures: 3, halfOpenAfterMs: 500 },
  });
  const agent = await scope.startAgent();
  const keys: string[] = [];
  const requests: string[] = [];
  for (let wave = 0; wave < 3; wave++) {
    const m = mixed(`w${wave}`, 60);
    keys.push(...m.keys);
    requests.push(...m.requests);
    await sendOnce(scope.sock, m.lines);
  }
  const open = await waitFor(async () => {
    const st = await agent.status();
    return st.counters.spooled === 180 && st.gauges.breakerState === 1 && st.pipeline?.breaker?.state === 'open' && st;
  }, 'the breaker to open with every record spooled');
  assert.equal(open.counters.exported, 0);
  assert.equal(open.counters.deadLettered, 0);
  assert.equal(open.gauges.spoolRecords, 180, 'the records stay in the spool');
  down = false;
  const s = await settled(agent, 180, 'recovery', 30_000);
  assert.equal(s.counters.exported, 180);
  assert.equal(s.counters.otlp.spans, 90);
  assert.ok(s.counters.retried.http_5xx >= 3);
  await waitFor(async () => (await agent.status()).pipeline?.breaker?.state === 'closed', 'the breaker to close');
  let duplicates = 0;
  for (let wave = 0; wave < 3; wave++) {
    duplicates += assertDeduped(
      col.accepted('logs'),
      `w${wave}`,
      keys.filter((k) => k.startsWith(`w${wave}-`)),
      'logs',
    );
    duplicates += assertDeduped(
      col.accepted('traces'),
      `w${wave}`,
      requests.filter((k) => k.startsWith(`w${wave}-`)),
      'spans',
    );
  }
  t.diagnostic(`503 recovery: ${col.c.requests.length} requests, ${duplicates} duplicate items before dedupe`);
  assert.equal(duplicates, 0, 'no part delivered twice (progress kept in memory across retries)');
  assert.equal((await agent.stop()).code, 0);
});

// ------------------------------------------------------------------------------------------------ config errors

test('config errors exit 78 naming the field: no endpoint, an unset headersFromEnv variable, a bad protocol', async (t) => {
  const cases: { exporter: Record<string, unknown>; field: RegExp }[] = [
    { exporter: { type: 'otlp' }, field: /agent\.exporter\.endpoint/ },
    {
      exporter: {
        type: 'otlp',
        endpoint: 'http://127.0.0.1:4318',
        headersFromEnv: { 'X-Api-Key': 'SK_TEST_UNSET_VAR' },
      },
      field: /agent\.exporter\.headersFromEnv\.X-Api-Key/,
    },
    {
      exporter: { type: 'otlp', endpoint: 'http://127.0.0.1:4318', protocol: 'grpc' },
      field: /agent\.exporter\.protocol/,
    },
  ];
  assert.equal(process.env.SK_TEST_UNSET_VAR, undefined);
  await Promise.all(
    cases.map(async (c) => {
      const scope = agentScope(t);
      scope.writeConfig({ exporter: c.exporter });
      const agent = await scope.startAgent({ ready: false });
      await waitFor(() => agent.child.exitCode !== null || agent.child.signalCode !== null, 'the agent to exit');
      const r = await agent.exited;
      assert.equal(r.code, 78, agent.stderr());
      assert.match(agent.stderr(), c.field);
    }),
  );
});
