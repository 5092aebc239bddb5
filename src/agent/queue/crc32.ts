// CRC-32 (ISO-HDLC / zlib / PNG: reflected polynomial 0xEDB88320, init and xorout 0xFFFFFFFF) for spool frames.
//
// Which implementation: `zlib.crc32` when the running Node has it (native, ~2.5 GB/s here; added in Node 22.2.0 and
// backported to 20.15.0), otherwise a hand-written table-driven slice-by-8 fallback (no npm dependency, ~0.5-1 GB/s)
// for Node 20.0-20.14, which `engines: >=20` still admits. Both give identical results (a test compares them).
import * as zlib from 'node:zlib';

const TABLES: Int32Array[] = (() => {
  const t: Int32Array[] = [];
  const t0 = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t0[n] = c;
  }
  t.push(t0);
  for (let s = 1; s < 8; s++) {
    const prev = t[s - 1]!;
    const cur = new Int32Array(256);
    for (let n = 0; n < 256; n++) cur[n] = (prev[n]! >>> 8) ^ t0[prev[n]! & 0xff]!;
    t.push(cur);
  }
  return t;
})();

/** Pure-JS CRC-32, slice-by-8. `value` continues a previous CRC (like zlib.crc32's second argument). */
export function crc32Js(data: Uint8Array, value = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES as [
    Int32Array,
    Int32Array,
    Int32Array,
    Int32Array,
    Int32Array,
    Int32Array,
    Int32Array,
    Int32Array,
  ];
  let crc = ~value;
  let i = 0;
  const n = data.length;
  const end8 = n - (n % 8);
  while (i < end8) {
    const a = (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24)) ^ crc;
    const b = data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24);
    crc =
      t7[a & 0xff]! ^
      t6[(a >>> 8) & 0xff]! ^
      t5[(a >>> 16) & 0xff]! ^
      t4[a >>> 24]! ^
      t3[b & 0xff]! ^
      t2[(b >>> 8) & 0xff]! ^
      t1[(b >>> 16) & 0xff]! ^
      t0[b >>> 24]!;
    i += 8;
  }
  while (i < n) crc = t0[(crc ^ data[i++]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}

type Crc32Fn = (data: Uint8Array, value?: number) => number;
// SIDEKICK_CRC32=js forces the fallback (to benchmark or test what Node 20.0-20.14 runs).
const native = process.env.SIDEKICK_CRC32 === 'js' ? undefined : (zlib as unknown as { crc32?: Crc32Fn }).crc32;

/** CRC-32 of `data` (unsigned 32-bit), continuing from `value` if given. */
export const crc32: Crc32Fn = typeof native === 'function' ? (d, v = 0) => native(d, v) : crc32Js;

/** Which implementation `crc32` uses in this process (for logs and benchmarks). */
export const crc32Impl: 'zlib' | 'js' = typeof native === 'function' ? 'zlib' : 'js';
