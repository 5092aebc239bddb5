// The otlp exporter's encoder thread (src/agent/exporters/otlp/encoder-thread.ts): the same bytes as encoding inline,
// the caller's buffers untouched (a part is a view of a spool batch; small buffers live in Node's shared pool: a
// transfer of either would detach it), parts answered in order, and a thread that dies leaves nothing unanswered:
// what it held and what comes later is encoded inline.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { EncoderThread } from '../src/agent/exporters/otlp/encoder-thread.ts';
import type { EncodeSettings, EncodedPart, PartInput } from '../src/agent/exporters/otlp/encode-part.ts';

const SETTINGS: EncodeSettings = {
  map: { requestSignal: 'both', maxValueLength: 4096, maxDepth: 8 },
  env: { resource: [['service.name', 'shop']], scopeName: 'sidekick-agent', scopeVersion: '0.0.0' },
  json: false,
  gzip: true,
};

function batch(n: number): Buffer {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify(
      i % 2
        ? { ts: 1733500000000 + i, type: 'php_request', method: 'GET', route: `/r/${i}`, status: 200, duration_ms: 1.5 }
        : { ts: 1733500000000 + i, type: 'note', text: 'é'.repeat(i) },
    ),
  );
  return Buffer.from(`${lines.join('\n')}\n`);
}

/** The batch cut into parts of `per` records: views into it, as chunkParts makes them. */
function parts(b: Buffer, per: number): PartInput[] {
  const out: PartInput[] = [];
  let start = 0;
  let index = 0;
  while (start < b.length) {
    let end = start;
    let n = 0;
    while (n < per && end < b.length) {
      end = b.indexOf(0x0a, end) + 1;
      n++;
    }
    out.push({
      payload: b.subarray(start, end),
      records: n,
      batchId: 'spool-1-0',
      firstIndex: index,
      firstAcceptedAt: 1,
    });
    index += n;
    start = end;
  }
  return out;
}

const bytes = (o: EncodedPart): string[] => [
  Buffer.from(o.logs ?? []).toString('hex'),
  Buffer.from(o.traces ?? []).toString('hex'),
];

test('the thread gives the inline bytes, in order, and leaves the batch and the shared pool intact', async () => {
  const b = batch(40);
  const before = Buffer.from(b);
  const pooled = Buffer.from('{"small":1}\n'); // a pool-backed buffer: transferring it would detach the pool
  assert.ok(pooled.buffer.byteLength > pooled.length, 'the test needs a buffer from the shared pool');
  const thread = new EncoderThread(SETTINGS, undefined);
  const inline = new EncoderThread(SETTINGS, undefined, false);
  try {
    const ps = [
      ...parts(b, 7),
      { payload: pooled, records: 1, batchId: 'spool-1-1', firstIndex: 0, firstAcceptedAt: 1 },
    ];
    const viaThread = await Promise.all(ps.map((p) => thread.encode(p)));
    const viaInline = await Promise.all(ps.map((p) => inline.encode(p)));
    assert.ok((thread as unknown as { worker: Worker | undefined }).worker, 'encoded on the thread, not inline');
    assert.deepEqual(viaThread.map(bytes), viaInline.map(bytes));
    assert.deepEqual(
      viaThread.map((o) => [o.logCount, o.spanCount]),
      ps.map((p) => [p.records, p.batchId === 'spool-1-1' ? 0 : Math.floor((p.records + (p.firstIndex % 2)) / 2)]),
    );
    assert.equal(b.buffer.byteLength > 0, true, 'the batch is not detached');
    assert.deepEqual(b, before, 'the batch bytes are unchanged');
    assert.equal(pooled.toString(), '{"small":1}\n', 'the pooled buffer is intact');
    assert.equal(Buffer.from('pool still works').toString(), 'pool still works');
  } finally {
    await thread.close();
    await inline.close();
  }
});

test('a thread that dies: the parts it held and every later part are encoded inline, none lost', async () => {
  const b = batch(30);
  const ps = parts(b, 10);
  const inline = new EncoderThread(SETTINGS, undefined, false);
  const warnings: unknown[] = [];
  const log = { warn: (...a: unknown[]) => warnings.push(a) } as unknown as import('pino').Logger;
  const thread = new EncoderThread(SETTINGS, log);
  try {
    const first = await thread.encode(ps[0]!);
    const worker = (thread as unknown as { worker: Worker | undefined }).worker;
    assert.ok(worker, 'the thread is up (not already encoding inline)');
    const held = thread.encode(ps[1]!);
    await worker.terminate();
    const later = await thread.encode(ps[2]!);
    const expected = await Promise.all(ps.map((p) => inline.encode(p)));
    assert.deepEqual([first, await held, later].map(bytes), expected.map(bytes));
    assert.equal(warnings.length, 1, 'said once that it encodes inline from now on');
  } finally {
    await thread.close();
    await inline.close();
  }
});
