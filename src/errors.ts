// The one error catalogue. Every error Sidekick throws or logs carries a stable code from this table;
// each code is documented in docs/errors.md (a test checks the two stay in sync).

export const ERROR_CODES = {
  // configuration
  SK_ERR_CONFIG_NOT_FOUND: 'no config file found',
  SK_ERR_CONFIG_LOAD: 'the config file could not be loaded',
  SK_ERR_CONFIG_INVALID: 'a config field is invalid',
  // sidekick API
  SK_ERR_INVALID_NAME: 'a sidekick name does not match the allowed pattern',
  SK_ERR_NOT_READY: 'readVars before the sidekick ever published',
  SK_ERR_TIMEOUT: 'a wait ran past its deadline',
  SK_ERR_BOOT_FAILED: 'a sidekick failed to boot too many times in a row',
  SK_ERR_LAZY_CAP: 'too many distinct sidekick names started lazily in one app',
  SK_ERR_NOT_IN_SIDEKICK: 'a sidekick-only call was made outside a sidekick',
  SK_ERR_VARS_INVALID: 'setVars got something other than string keys to string values',
  SK_ERR_VARS_TOO_LARGE: 'a snapshot is larger than the configured cap',
  SK_ERR_NO_ENTRYPOINT: 'no sidekick entrypoint configured (library mode)',
  SK_ERR_STOPPED: 'the sidekick or runtime is stopping or stopped',
  SK_ERR_TASK_QUEUE_FULL: "a sidekick's task queue is full",
  SK_ERR_HOST_DIED: "an app's sidekick host process died while a task was in it",
  SK_ERR_NO_TASK_HANDLER: 'a task was sent to a sidekick that never called handleTasks',
  SK_ERR_TASK_FAILED: 'the task handler threw',
  SK_ERR_TASK_CRASHED: 'the sidekick thread running a task died before answering it',
  SK_ERR_VARS_NOT_PUBLISHER:
    "setVars in a task pool thread other than thread 0 (only thread 0 publishes the pool's vars)",
  SK_ERR_ABORTED: 'the operation was aborted by its signal',
  SK_ERR_SOURCE: 'a built-in source could not reach, read or parse its data',
  // runtime / admin
  SK_ERR_ADMIN_UNREACHABLE: 'no running instance answered on the admin socket',
  SK_ERR_LISTEN: 'a listener (an app, /metrics, the status page) could not bind its address',
  SK_ERR_NODE_UNSUPPORTED: 'this Node version lacks an internal Sidekick relies on',
  SK_ERR_ADMIN_ROUTE: 'the admin socket has no such route',
  SK_ERR_INTERNAL: 'an unexpected failure inside Sidekick (a bug: please report it)',
  // agent
  SK_ERR_SOCKET_IN_USE: 'the agent socket is held by a live process',
  SK_ERR_RECORD_TOO_LARGE: 'an ingested line is larger than maxRecordBytes',
  SK_ERR_RECORD_INVALID: 'an ingested line is not a JSON object',
  SK_ERR_RECORD_STALLED:
    'a client stopped in the middle of a line while unfinished lines held their share of memory.maxBytes; the line was cut',
  SK_ERR_TOO_MANY_CONNECTIONS: 'the agent holds as many client connections as its file-descriptor limit allows',
  SK_ERR_SPOOL_CORRUPT: 'a spool segment has a bad checksum or a torn tail',
  SK_ERR_SPOOL_FULL: 'the spool reached maxBytes and dropped its oldest data',
  SK_ERR_SPOOL_LOCKED: 'the spool directory is locked by another live process',
  SK_ERR_SPOOL_BUSY: 'nextBatch was called while the previous batch is neither acked nor released',
  SK_ERR_SPOOL_WRITE: 'the spool could not write to disk',
  SK_ERR_SPOOL_STALLED:
    "the spool's filesystem did not answer: a write or fsync waited past its bound (a hung disk, NFS or FUSE mount)",
  SK_ERR_SPOOL_REMOVED: 'the spool directory was removed or replaced while the agent ran; recreated',
  SK_ERR_EXPORT_FAILED: 'an export attempt failed and will be retried',
  SK_ERR_DEAD_LETTER: 'central rejected a batch for good; it was kept on disk',
  SK_ERR_BREAKER_OPEN: 'the exporter circuit breaker is open',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Every Sidekick error: `code` is stable and greppable; `details` holds the facts the message was built from. */
export class SidekickError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(`${code}: ${message}`, options);
    this.name = 'SidekickError';
    this.code = code;
    this.details = details;
  }

  /** Plain data form, so an error can cross a thread or process boundary and be rebuilt with the same code. */
  toJSON(): { code: ErrorCode; message: string; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, details: this.details };
  }

  static fromJSON(data: { code: ErrorCode; message: string; details?: Record<string, unknown> }): SidekickError {
    const prefix = `${data.code}: `;
    const text = data.message.startsWith(prefix) ? data.message.slice(prefix.length) : data.message;
    return new SidekickError(data.code, text, data.details ?? {});
  }
}

/** Any thrown value as plain data, so it can cross a thread or process boundary (structured clone or JSON). */
export type ErrorData = { code?: string; message: string; stack?: string; details?: Record<string, unknown> };

/** `err` as ErrorData: a SidekickError keeps its code and details (its toJSON), anything else its message and stack. */
export function errorToData(err: unknown): ErrorData {
  if (err instanceof SidekickError) return err.toJSON();
  if (err instanceof Error) return { message: err.message, stack: err.stack };
  return { message: describeError(err) };
}

/** The inverse of errorToData: a catalogued code comes back as the same SidekickError, anything else as an Error. */
export function errorFromData(data: ErrorData): Error {
  if (data.code && data.code in ERROR_CODES) {
    return SidekickError.fromJSON({ code: data.code as ErrorCode, message: data.message, details: data.details });
  }
  const err = new Error(data.message);
  if (data.stack) err.stack = data.stack;
  return err;
}

export function isSidekickError(err: unknown, code?: ErrorCode): err is SidekickError {
  return err instanceof SidekickError && (code === undefined || err.code === code);
}

/** Best-effort one-line description of anything thrown (used in logs and in boot-failure messages). */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'string') return err;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

/** Exit status for configuration errors (sysexits.h EX_CONFIG). */
export const EXIT_CONFIG = 78;
