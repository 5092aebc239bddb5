import { SidekickError } from '../errors.js';
import { NAME_PATTERN } from '../config/schema.js';

/** Throws SK_ERR_INVALID_NAME unless `name` matches `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`. */
export function assertName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw new SidekickError(
      'SK_ERR_INVALID_NAME',
      `invalid sidekick name ${JSON.stringify(name)}: expected 1-128 characters of letters, digits, ".", "_", ":", "-", starting with a letter or digit`,
      { name },
    );
  }
}
