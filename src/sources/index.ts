// Built-in sources: ready-made sidekicks a config declares with `source: { type, … }` (src/config/sources.ts), or code
// wraps: `import { sources } from 'sidekick-runtime'; export default (ctx) => sources.file({ path: './flags.json' })(ctx)`.
// Each is an event-driven watcher (no polling where the system can push) that publishes with ctx.setVars, ends when
// ctx.signal aborts, and throws on a failure it cannot ride out, so the sidekick restarts with backoff like any
// other. Each module is loaded only when a sidekick uses it (a Redis client is not loaded for a file watcher).
import { SidekickError, describeError } from '../errors.js';
import type { z } from 'zod';
import { formatPath } from '../config/load.js';
import {
  etcdSourceSchema,
  fileSourceSchema,
  httpSourceSchema,
  redisSentinelSourceSchema,
  sourceSchema,
  type SourceConfig,
} from '../config/sources.js';
import type { SidekickContext } from '../sidekicks/context.js';

/** A source's main: runs until ctx.signal aborts. */
export type SourceMain = (ctx: SidekickContext) => Promise<void>;

type SourceType = SourceConfig['type'];
type ConfigOf<T extends SourceType> = Extract<SourceConfig, { type: T }>;

/** Each type's module exports `createSource(config): SourceMain`. */
const loaders: { [T in SourceType]?: () => Promise<{ createSource(config: ConfigOf<T>): SourceMain }> } = {
  'redis-sentinel': () => import('./redis-sentinel.js'),
  http: () => import('./http.js'),
  etcd: () => import('./etcd.js'),
  file: () => import('./file.js'),
};

/** The main for `config`, for the thread runner (a declared source) and for code (the `sources` helpers). */
export async function loadSource(config: SourceConfig): Promise<SourceMain> {
  const load = loaders[config.type] as (() => Promise<{ createSource(c: SourceConfig): SourceMain }>) | undefined;
  if (!load) {
    throw new SidekickError('SK_ERR_CONFIG_INVALID', `source type "${config.type}" is not available`, {
      field: 'source.type',
    });
  }
  const main = (await load()).createSource(config);
  // One catalogued code for every source failure (a boot failure's message, a crash's lastError), whatever threw it.
  return async (ctx) => {
    try {
      await main(ctx);
    } catch (err) {
      if (err instanceof SidekickError || ctx.signal.aborted) throw err;
      throw new SidekickError(
        'SK_ERR_SOURCE',
        nameSource(config.type, describeError(err)),
        { type: config.type },
        {
          cause: err,
        },
      );
    }
  };
}

/**
 * `<type> source: <message>`, said once: a source that names itself and what it watches (`http source <url>: …`,
 * `etcd source (prefix "/x/"): …`, `redis-sentinel source: …`) is left as it is; anything else thrown inside one (a
 * file's read error, a library's own) gets the name here.
 */
function nameSource(type: string, message: string): string {
  return message.startsWith(`${type} source`) ? message : `${type} source: ${message}`;
}

type SourceOptions<S extends z.ZodType> = Omit<z.input<S>, 'type'>;

/** Validates options given in code the same way as a config's `source`, naming the field on error. */
function fromCode(type: SourceType, options: object): SourceMain {
  return async (ctx) => {
    const parsed = sourceSchema.safeParse({ ...options, type });
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new SidekickError(
        'SK_ERR_CONFIG_INVALID',
        `sources.${type}(): ${formatPath(issue.path)}: ${issue.message}`,
        {
          field: formatPath(issue.path),
        },
      );
    }
    return (await loadSource(parsed.data))(ctx);
  };
}

/**
 * The built-in sources for code, e.g. a sidekick that follows a file and adds a computed key:
 * `export default (ctx) => sources.file({ path: './flags.json' })(ctx)`. Options are the config's, without `type`.
 */
export const sources = {
  file: (options: SourceOptions<typeof fileSourceSchema>) => fromCode('file', options),
  redisSentinel: (options: SourceOptions<typeof redisSentinelSourceSchema>) => fromCode('redis-sentinel', options),
  http: (options: SourceOptions<typeof httpSourceSchema>) => fromCode('http', options),
  etcd: (options: SourceOptions<typeof etcdSourceSchema>) => fromCode('etcd', options),
};
