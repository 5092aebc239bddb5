// The agent's byte-level JSON object check (isJsonObject, the fast path of checkLine) against the reference it
// replaces: `isUtf8(line) && JSON.parse(line)` is an object. Fixed edge cases, then seeded fuzzing: random JSON
// documents in random layouts, mutated byte by byte, and random bytes. A failure prints the seed and the input.
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { test } from 'node:test';
import { checkLine, isJsonObject } from '../src/agent/receivers/ndjson.ts';
import { mulberry32 } from './helpers/random.ts';

/** What the agent accepted before the validator: valid UTF-8 that JSON.parse turns into a plain object. */
function referenceIsObject(b: Buffer): boolean {
  if (!isUtf8(b)) return false;
  try {
    const v: unknown = JSON.parse(b.toString('utf8'));
    return v !== null && typeof v === 'object' && !Array.isArray(v);
  } catch {
    return false;
  }
}

/** checkLine as it was before the validator (the verdicts and reasons must not change). */
function referenceCheckLine(buf: Buffer): string | undefined {
  const sp = (c: number): boolean => c === 0x20 || c === 0x09 || c === 0x0d;
  let s = 0;
  let e = buf.length;
  while (s < e && sp(buf[s]!)) s++;
  while (e > s && sp(buf[e - 1]!)) e--;
  if (s === e) return 'blank';
  const view = buf.subarray(s, e);
  if (!isUtf8(view)) return 'not_json';
  let value: unknown;
  try {
    value = JSON.parse(view.toString('utf8'));
  } catch {
    return 'not_json';
  }
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? undefined : 'not_object';
}

function agree(b: Buffer, what: string): void {
  const ref = referenceIsObject(b);
  assert.equal(isJsonObject(b, 0, b.length), ref, `isJsonObject ${what}: ${JSON.stringify(b.toString('latin1'))}`);
  if (!b.includes(0x0a)) {
    // checkLine sees lines, never a newline inside
    assert.equal(
      checkLine(b, 0, b.length),
      referenceCheckLine(b),
      `checkLine ${what}: ${JSON.stringify(b.toString('latin1'))}`,
    );
  }
}

test('isJsonObject: edge cases agree with JSON.parse', () => {
  const cases: (string | Buffer)[] = [
    '{}',
    ' {} ',
    '\t{\r\n}\n',
    '{"a":1}',
    '{"a":1,}',
    '{,"a":1}',
    '{"a":1 "b":2}',
    '{"a" 1}',
    '{"a"::1}',
    '{a:1}',
    "{'a':1}",
    '{"a":[]}',
    '{"a":[1,]}',
    '{"a":[,1]}',
    '{"a":[1 2]}',
    '{"a":[[[]],[{}]]}',
    '{"a":{}}{}',
    '{"a":1}}',
    '{"a":1}]',
    '{"a":1',
    '{"a":"b}',
    '{"a":"b\\"}',
    '{"a":"b\\\\"}',
    '{"a":"\\u00e9\\uD800\\udfff"}',
    '{"a":"\\u00g0"}',
    '{"a":"\\u00e"}',
    '{"a":"\\x41"}',
    '{"a":"\\/\\b\\f\\n\\r\\t"}',
    '{"a":"\t"}',
    '{"a":"\u007f"}',
    '{"a":0}',
    '{"a":-0}',
    '{"a":01}',
    '{"a":-}',
    '{"a":+1}',
    '{"a":.5}',
    '{"a":1.}',
    '{"a":1.5e}',
    '{"a":1.5e+}',
    '{"a":1.5E-3}',
    '{"a":1e999}',
    '{"a":-12.5e+10}',
    '{"a":0x10}',
    '{"a":true,"b":false,"c":null}',
    '{"a":tru}',
    '{"a":nul}',
    '{"a":falsey}',
    '{"a":True}',
    '{"a":NaN}',
    '{"a":Infinity}',
    '{"a":undefined}',
    '{"a":1}\u00a0',
    '\ufeff{"a":1}',
    '{\u000b"a":1}',
    '{"}":"}"}',
    '{"a":"}',
    '{"a":"}"',
    '[]',
    '[{}]',
    '"{}"',
    'null',
    '{"a":"Grüße ☕ 日本語 🎉"}',
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d]), // 0xff
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xc0, 0xaf, 0x22, 0x7d]), // overlong '/'
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xe0, 0x80, 0xaf, 0x22, 0x7d]), // overlong 3-byte
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x7d]), // UTF-8 surrogate
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xf4, 0x90, 0x80, 0x80, 0x22, 0x7d]), // > U+10FFFF
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xf0, 0x9f, 0x8e, 0x22, 0x7d]), // truncated emoji
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xc3, 0x22, 0x7d]), // lead byte, no continuation
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0x80, 0x22, 0x7d]), // lone continuation
    Buffer.from([0x7b, 0xc3, 0xa9, 0x7d]), // non-ASCII outside a string
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0x00, 0x22, 0x7d]), // NUL in a string
    Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0x61, 0x22, 0x7d, 0xff]), // garbage after the object
  ];
  for (const c of cases) agree(Buffer.isBuffer(c) ? c : Buffer.from(c), 'edge case');
});

test('isJsonObject: nesting deeper than its stack falls back to JSON.parse (no depth limit there)', () => {
  for (const depth of [1, 100, 255, 256, 257, 1000, 20_000]) {
    const deep = Buffer.from('{"a":'.repeat(depth) + '1' + '}'.repeat(depth));
    const arrays = Buffer.from('{"a":' + '['.repeat(depth) + ']'.repeat(depth) + '}');
    const broken = Buffer.from('{"a":'.repeat(depth) + '1' + '}'.repeat(depth - 1) + ']');
    for (const b of [deep, arrays, broken]) {
      const ref = referenceIsObject(b);
      if (isJsonObject(b, 0, b.length)) assert.equal(ref, true, `depth ${depth}`); // never true where JSON.parse fails
      assert.equal(checkLine(b, 0, b.length), referenceCheckLine(b), `checkLine at depth ${depth}`);
    }
  }
});

test('checkLine reads only its range of a larger buffer', () => {
  const chunk = Buffer.from('{"a":"x}\n{"b":2}\n{"c":"}"}\n');
  // line 1 is an unterminated string whose scan must not run into line 2
  assert.equal(checkLine(chunk, 0, 8), 'not_json');
  assert.equal(checkLine(chunk, 9, 16), undefined);
  assert.equal(checkLine(chunk, 17, 26), undefined);
  const tail = Buffer.from('{"a":"b');
  assert.equal(checkLine(tail, 0, tail.length), 'not_json');
});

// ------------------------------------------------------------------------------------------------ fuzzing

const ALPHABET = [
  ...'{}[]":,\\/ \t\r\n0123456789-+.eEtrufalsnbxu',
  '\u0000',
  '\u001f',
  '\u007f',
  'é',
  '☕',
  '🎉',
  '\u2028',
].map((c) => Buffer.from(c));
const RAW_BYTES = [0x80, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff, 0xa0, 0x9f, 0x8f];

function fuzzer(seed: number): { doc(): Buffer; mutate(b: Buffer): Buffer; bytes(): Buffer } {
  const rnd = mulberry32(seed);
  const int = (n: number): number => Math.floor(rnd() * n);
  const pick = <T>(xs: T[]): T => xs[int(xs.length)]!;
  const ws = (): string => (rnd() < 0.7 ? '' : pick([' ', '\t', '\r', '  ', ' \t ', '\n']));
  const str = (): string => {
    const parts: string[] = [];
    const n = int(12);
    for (let i = 0; i < n; i++) {
      const r = rnd();
      if (r < 0.5) parts.push(pick(['a', 'x', 'key', '}', '{', ']', ' ', ':', ',', 'value', 'x'.repeat(int(60))]));
      else if (r < 0.65) parts.push(pick(['é', 'ß', '☕', '日本', '🎉', '\u2028', '\u007f']));
      else if (r < 0.85) parts.push(pick(['\\"', '\\\\', '\\/', '\\b', '\\f', '\\n', '\\r', '\\t']));
      else parts.push(`\\u${int(0x10000).toString(16).padStart(4, '0')}`); // lone surrogates included
    }
    return `"${parts.join('')}"`;
  };
  const num = (): string =>
    pick([
      String(int(1000)),
      String(-int(1000)),
      (rnd() * 1e6).toString(),
      (rnd() * 1e-6).toExponential(),
      '0',
      '-0',
      '1E+5',
      '2e-3',
      '123.456',
    ]);
  const value = (depth: number): string => {
    const r = rnd();
    if (depth < 6 && r < 0.2) return object(depth + 1);
    if (depth < 6 && r < 0.35) {
      const n = int(5);
      return `[${ws()}${Array.from({ length: n }, () => `${ws()}${value(depth + 1)}${ws()}`).join(',')}]`;
    }
    if (r < 0.6) return str();
    if (r < 0.85) return num();
    return pick(['true', 'false', 'null']);
  };
  const object = (depth: number): string => {
    const n = int(6);
    const members = Array.from({ length: n }, () => `${ws()}${str()}${ws()}:${ws()}${value(depth)}${ws()}`);
    return `{${members.join(',')}${n === 0 ? ws() : ''}}`;
  };
  return {
    doc: () => Buffer.from(`${ws()}${rnd() < 0.9 ? object(0) : value(0)}${ws()}`),
    mutate: (b) => {
      let out = b;
      const edits = 1 + int(3);
      for (let k = 0; k < edits; k++) {
        const at = int(out.length + 1);
        const r = rnd();
        const piece = rnd() < 0.3 ? Buffer.from([pick(RAW_BYTES)]) : pick(ALPHABET);
        if (r < 0.3 && out.length > 0)
          out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1)]); // delete
        else if (r < 0.6)
          out = Buffer.concat([out.subarray(0, at), piece, out.subarray(at)]); // insert
        else if (r < 0.85 && at < out.length) out = Buffer.concat([out.subarray(0, at), piece, out.subarray(at + 1)]);
        else out = out.subarray(0, at); // truncate
      }
      return out;
    },
    bytes: () => {
      const n = int(24);
      const parts: Buffer[] = [Buffer.from('{')];
      for (let i = 0; i < n; i++) parts.push(rnd() < 0.2 ? Buffer.from([int(256)]) : pick(ALPHABET));
      parts.push(Buffer.from('}'));
      return Buffer.concat(parts);
    },
  };
}

test('isJsonObject: fuzzing against JSON.parse (random documents, mutations, random bytes)', () => {
  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);
  const f = fuzzer(seed);
  let valid = 0;
  let mutated = 0;
  for (let i = 0; i < 20_000; i++) {
    const doc = f.doc();
    agree(doc, `seed ${seed} doc ${i}`);
    if (referenceIsObject(doc)) valid++;
    for (let m = 0; m < 3; m++) {
      const b = f.mutate(doc);
      agree(b, `seed ${seed} mutation ${i}.${m}`);
      if (referenceIsObject(b)) mutated++;
    }
    agree(f.bytes(), `seed ${seed} bytes ${i}`);
  }
  // the generator must exercise both verdicts, or the comparison proves little
  assert.ok(valid > 10_000, `only ${valid} valid documents (seed ${seed})`);
  assert.ok(mutated > 1000 && mutated < 50_000, `${mutated} mutations still valid (seed ${seed})`);
});
