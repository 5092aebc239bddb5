// Vars can hold secrets: what `sidekick vars` and the status page show unless `admin.showValues` is true. Per key:
// its size and a short keyed hash, enough to see that a value changed, not to recover it. The hash key is random per
// process, so a short value (a 0/1 flag, a PIN) cannot be found by hashing candidates offline; hashes are therefore
// comparable only within one run of `sidekick serve`.
import { createHmac, randomBytes } from 'node:crypto';
import type { Vars } from './snapshot.js';

const HASH_KEY = randomBytes(32);

export interface MaskedValue {
  bytes: number;
  /** First 12 hex digits of HMAC-SHA256(per-process key, value). */
  hash: string;
}

export function maskVars(vars: Vars): Record<string, MaskedValue> {
  // A null-prototype object: a key named "__proto__" stays a key.
  const out = Object.create(null) as Record<string, MaskedValue>;
  for (const key of Object.keys(vars)) {
    const value = Buffer.from(vars[key]!, 'utf8');
    out[key] = { bytes: value.length, hash: createHmac('sha256', HASH_KEY).update(value).digest('hex').slice(0, 12) };
  }
  return out;
}
