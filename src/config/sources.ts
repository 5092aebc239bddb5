// Built-in sources: a sidekick declared with `source: { type, … }` instead of code (src/sources/ runs them). One
// schema per type; secrets are never inline: fields ending in `Env` name the environment variable that holds them.
import { z } from 'zod';
import { duration } from './fields.js';

const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected the name of an environment variable');
const hostPort = z.string().regex(/^\[?[^\s\]]+\]?:\d{1,5}$/, "expected 'host:port'");

/** A JSON, YAML or .env file, or a directory of them; published on every change. */
export const fileSourceSchema = z
  .object({
    type: z.literal('file'),
    path: z.string().min(1),
    /** Default: from the file extension (.json, .yaml/.yml, .env). */
    format: z.enum(['json', 'yaml', 'env']).optional(),
    /** Changes within this window are read once (editors write in several steps). */
    debounceMs: duration.default(50),
  })
  .strict();

/** Follows the master of a Redis Sentinel group. */
export const redisSentinelSourceSchema = z
  .object({
    type: z.literal('redis-sentinel'),
    sentinels: z.array(hostPort).min(1),
    /** The master group name (`sentinel monitor <name> …`). */
    name: z.string().min(1),
    passwordEnv: envName.optional(),
    sentinelPasswordEnv: envName.optional(),
    tls: z.boolean().default(false),
    /** Also publish the replicas (REPLICAS: comma-separated host:port). */
    replicas: z.boolean().default(false),
    connectTimeoutMs: duration.default(2000),
  })
  .strict();

/** A URL returning a JSON object; followed by Server-Sent Events when offered, else polled with ETag. */
export const httpSourceSchema = z
  .object({
    type: z.literal('http'),
    url: z.url({ protocol: /^https?$/ }),
    intervalMs: duration.default(30_000),
    timeoutMs: duration.default(5000),
    headers: z.record(z.string(), z.string()).default({}),
    /** Headers whose values come from environment variables, e.g. { authorization: 'FLAGS_TOKEN' }. */
    headersFromEnv: z.record(z.string(), envName).default({}),
  })
  .strict();

/** A key prefix in etcd (v3), followed with its watch API. */
export const etcdSourceSchema = z
  .object({
    type: z.literal('etcd'),
    endpoints: z.array(z.url({ protocol: /^https?$/ })).min(1),
    prefix: z.string().min(1),
    usernameEnv: envName.optional(),
    passwordEnv: envName.optional(),
  })
  .strict();

export const sourceSchema = z.discriminatedUnion('type', [
  fileSourceSchema,
  redisSentinelSourceSchema,
  httpSourceSchema,
  etcdSourceSchema,
]);

export type SourceConfig = z.output<typeof sourceSchema>;
export type FileSourceConfig = z.output<typeof fileSourceSchema>;
export type RedisSentinelSourceConfig = z.output<typeof redisSentinelSourceSchema>;
export type HttpSourceConfig = z.output<typeof httpSourceSchema>;
export type EtcdSourceConfig = z.output<typeof etcdSourceSchema>;
