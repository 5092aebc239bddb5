// The spool ledger: the durable read position (what is acked) and the boundary of the batch in flight.
//
// File `ledger`, two fixed 128-byte slots at offsets 0 and 512 (different disk sectors). Every write goes to the
// other slot than the last one, with a generation number one higher and a CRC over the slot, so a write torn by a
// crash or power loss leaves the previous slot intact; on open the valid slot with the highest generation wins. A
// slot write is a single small pwrite through the thread pool (never a synchronous one: a filesystem that stops
// answering must not block the event loop); once it resolves it survives a process kill, and power loss once fsynced
// (group commit). Writes are serialized, so slots alternate in generation order.
//
//   0 magic "SKL1" · 4 version · 8 generation f64 · 16 spool id (8 bytes) · 24 ack seq f64 · 32 ack frame f64 ·
//   40 ack inner f64 · 48 max seq ever created f64 · 56 flags u32 (bit 0: batch in flight) · 60 in-flight records u32 ·
//   64 in-flight end frame f64 · 72 in-flight end inner f64 · 80 in-flight bytes f64 · 88 in-flight firstAppendedAt
//   f64 · 96 CRC-32 of bytes 0..96
import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from './crc32.js';

/** A read position: segment `seq`, the frame starting at byte `frame`, `inner` bytes into that frame's payload. */
export interface Pos {
  seq: number;
  frame: number;
  inner: number;
}

export interface LedgerInflight {
  /** End of the batch; it starts at the ack position and never leaves its segment. */
  endFrame: number;
  endInner: number;
  records: number;
  bytes: number;
  firstAppendedAt: number;
}

export interface LedgerState {
  spoolId: string; // 16 hex chars
  ack: Pos;
  maxSeq: number;
  inflight: LedgerInflight | undefined;
}

const MAGIC = 0x314c4b53; // "SKL1"
const VERSION = 1;
const SLOT_BYTES = 128;
const SLOT_STRIDE = 512;
const BODY = 96;

export function encodeSlot(state: LedgerState, generation: number): Buffer {
  const b = Buffer.alloc(SLOT_BYTES);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt32LE(VERSION, 4);
  b.writeDoubleLE(generation, 8);
  Buffer.from(state.spoolId, 'hex').copy(b, 16, 0, 8);
  b.writeDoubleLE(state.ack.seq, 24);
  b.writeDoubleLE(state.ack.frame, 32);
  b.writeDoubleLE(state.ack.inner, 40);
  b.writeDoubleLE(state.maxSeq, 48);
  const f = state.inflight;
  b.writeUInt32LE(f ? 1 : 0, 56);
  if (f) {
    b.writeUInt32LE(f.records, 60);
    b.writeDoubleLE(f.endFrame, 64);
    b.writeDoubleLE(f.endInner, 72);
    b.writeDoubleLE(f.bytes, 80);
    b.writeDoubleLE(f.firstAppendedAt, 88);
  }
  b.writeUInt32LE(crc32(b.subarray(0, BODY)), BODY);
  return b;
}

export function decodeSlot(b: Buffer): { generation: number; state: LedgerState } | undefined {
  if (b.length < SLOT_BYTES) return undefined;
  if (b.readUInt32LE(0) !== MAGIC || b.readUInt32LE(4) !== VERSION) return undefined;
  if (crc32(b.subarray(0, BODY)) !== b.readUInt32LE(BODY)) return undefined;
  const num = (at: number): number => b.readDoubleLE(at);
  const ints = [num(8), num(24), num(32), num(40), num(48)];
  if (!ints.every((v) => Number.isSafeInteger(v) && v >= 0)) return undefined;
  const state: LedgerState = {
    spoolId: b.subarray(16, 24).toString('hex'),
    ack: { seq: num(24), frame: num(32), inner: num(40) },
    maxSeq: num(48),
    inflight: undefined,
  };
  if (b.readUInt32LE(56) & 1) {
    state.inflight = {
      records: b.readUInt32LE(60),
      endFrame: num(64),
      endInner: num(72),
      bytes: num(80),
      firstAppendedAt: num(88),
    };
  }
  return { generation: num(8), state };
}

export class Ledger {
  private generation = 0;
  private dirty = false;

  private constructor(private readonly fh: FileHandle) {}

  /** Open (creating if missing). `state` is undefined when no valid slot exists; `corrupt` says the file had bytes. */
  static async open(path: string): Promise<{ ledger: Ledger; state: LedgerState | undefined; corrupt: boolean }> {
    // 'r+' (read-write, no O_APPEND, so positional writes land where asked); 'w+' creates it the first time.
    const fh = await open(path, 'r+').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return open(path, 'w+');
      throw err;
    });
    const ledger = new Ledger(fh);
    const { size } = await fh.stat();
    let best: { generation: number; state: LedgerState } | undefined;
    for (const at of [0, SLOT_STRIDE]) {
      if (size < at + SLOT_BYTES) continue;
      const b = Buffer.alloc(SLOT_BYTES);
      await fh.read(b, 0, SLOT_BYTES, at);
      const d = decodeSlot(b);
      if (d && (!best || d.generation > best.generation)) best = d;
    }
    if (best) ledger.generation = best.generation;
    return { ledger, state: best?.state, corrupt: !best && size > 0 };
  }

  /** The last write queued (writes run one at a time, in order). */
  private tail: Promise<void> = Promise.resolve();

  /**
   * Write `state` into the next slot. Serialized behind the writes queued before it; resolves once its pwrite is done
   * (the state then survives a kill of the process; fsync, sync(), makes it survive power loss). Rejects if it failed
   * (the generation is not used up: the next write takes the same slot).
   */
  write(state: LedgerState): Promise<void> {
    const run = this.tail.then(() => this.writeNow(state));
    this.tail = run.catch(() => {});
    return run;
  }

  private async writeNow(state: LedgerState): Promise<void> {
    const gen = this.generation + 1;
    const slot = encodeSlot(state, gen);
    const at = (gen % 2) * SLOT_STRIDE;
    let done = 0;
    while (done < SLOT_BYTES) {
      const { bytesWritten } = await this.fh.write(slot, done, SLOT_BYTES - done, at + done);
      if (bytesWritten <= 0) throw new Error('ledger write wrote nothing');
      done += bytesWritten;
    }
    this.generation = gen;
    this.dirty = true;
  }

  /** fsync if anything was written since the last sync. */
  async sync(): Promise<void> {
    await this.tail;
    if (!this.dirty) return;
    this.dirty = false;
    try {
      await this.fh.sync();
    } catch (err) {
      this.dirty = true;
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.tail;
    await this.fh.close();
  }
}
