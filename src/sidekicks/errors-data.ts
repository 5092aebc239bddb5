import { SidekickError } from '../errors.js';
import type { ErrorData } from './protocol.js';

/** Plain data for an error crossing a thread or process boundary; rebuilt by `rebuildError` on the other side. */
export function errorToData(err: unknown): ErrorData {
  if (err instanceof SidekickError) return { code: err.code, message: err.message, details: err.details };
  if (err instanceof Error) return { message: err.message, stack: err.stack };
  return { message: String(err) };
}
