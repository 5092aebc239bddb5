// Public facade: everything users import from 'sidekick'. Internals are not exported.
export { SidekickError, ERROR_CODES, isSidekickError, type ErrorCode } from './errors.js';
