// Finding, loading and validating the config file. Every failure is a SidekickError whose message names the file
// and, for schema errors, the exact field (e.g. `apps[0].listen`). The CLI turns those into exit status 78.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { z } from 'zod';
import { SidekickError, describeError } from '../errors.js';
import { configSchema, type AgentConfig, type Config, type ExporterConfig } from './schema.js';
import { defaultAgentSocketPath } from '../agent/socket-path.js';

export const DEFAULT_CONFIG_NAMES = ['sidekick.config.mjs', 'sidekick.config.js', 'sidekick.config.json'];

export interface LoadedConfig {
  /** Absolute path of the file the config came from (undefined for an in-memory config). */
  file: string | undefined;
  /** Directory relative paths were resolved against. */
  dir: string;
  config: Config;
}

/** The file `-c FILE` names, or the first default name present in `cwd`. */
export function findConfigFile(explicit: string | undefined, cwd = process.cwd()): string {
  if (explicit) {
    const file = resolve(cwd, explicit);
    if (!existsSync(file))
      throw new SidekickError('SK_ERR_CONFIG_NOT_FOUND', `config file ${file} does not exist`, { file });
    return file;
  }
  for (const candidate of DEFAULT_CONFIG_NAMES) {
    const file = join(cwd, candidate);
    if (existsSync(file)) return file;
  }
  throw new SidekickError(
    'SK_ERR_CONFIG_NOT_FOUND',
    `no config file: looked for ${DEFAULT_CONFIG_NAMES.join(', ')} in ${cwd}; pass one with -c FILE`,
    { cwd },
  );
}

/** Loads, validates and resolves a config file. */
export async function loadConfig(explicit?: string, cwd = process.cwd()): Promise<LoadedConfig> {
  const file = findConfigFile(explicit, cwd);
  let raw: unknown;
  try {
    if (file.endsWith('.json')) {
      raw = JSON.parse(await readFile(file, 'utf8'));
    } else {
      // The query string makes a reload (SIGHUP) see the edited file instead of the cached module.
      const mod = (await import(`${pathToFileURL(file).href}?t=${Date.now()}`)) as { default?: unknown };
      raw = mod.default;
    }
  } catch (err) {
    throw new SidekickError(
      'SK_ERR_CONFIG_LOAD',
      `could not load ${file}: ${describeError(err)}`,
      { file },
      { cause: err },
    );
  }
  return validateConfig(raw, dirname(file), file);
}

/** Validates a raw config object; relative paths resolve against `dir`. */
export function validateConfig(raw: unknown, dir: string, file?: string): LoadedConfig {
  if (raw === null || typeof raw !== 'object') {
    throw new SidekickError('SK_ERR_CONFIG_INVALID', `${file ?? 'config'}: the default export must be an object`, {
      file,
      field: '',
    });
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = formatPath(issue.path);
    throw new SidekickError(
      'SK_ERR_CONFIG_INVALID',
      `${file ?? 'config'}: ${field || '(root)'}: ${describeIssue(issue)}`,
      {
        file,
        field,
        issues: result.error.issues.map((i) => ({ field: formatPath(i.path), message: describeIssue(i) })),
      },
    );
  }
  return { file, dir, config: resolvePaths(result.data, dir, file) };
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return `unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  return issue.message;
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}

function resolvePaths(config: Config, dir: string, file: string | undefined): Config {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(dir, p));
  for (const app of config.apps) {
    app.handler = abs(app.handler);
    if (app.sidekicks.entrypoint) app.sidekicks.entrypoint = abs(app.sidekicks.entrypoint);
    for (const decl of Object.values(app.sidekicks.declare)) {
      if (decl.entrypoint) decl.entrypoint = abs(decl.entrypoint);
      if (decl.source?.type === 'file') decl.source.path = abs(decl.source.path);
    }
    if (app.listen.kind === 'unix') app.listen.path = abs(app.listen.path);
  }
  if (config.admin.socket) config.admin.socket = abs(config.admin.socket);
  else config.admin.socket = join(dir, 'var', 'admin.sock');
  if (config.agent) {
    const agent = config.agent;
    agent.socket = agent.socket ? abs(agent.socket) : defaultAgentSocketPath(process.env, dir);
    agent.spool.dir = abs(agent.spool.dir);
    // Clients assume spill/ beside the socket unless told otherwise (SIDEKICK_AGENT_SPILL_DIR).
    agent.spill.dir = agent.spill.dir ? abs(agent.spill.dir) : join(dirname(agent.socket), 'spill');
    if (agent.exporter.type === 'file') agent.exporter.dir = abs(agent.exporter.dir);
    if (agent.exporter.type === 'otlp') resolveOtlp(agent.exporter, config.apps, file);
  }
  return config;
}

/**
 * The otlp exporter's headers from the environment (a variable that is not set is a config error: an API key that
 * silently went missing would only show as 401s), and its default service.name: the app's name when the config
 * runs exactly one, `php-fpm` for a standalone agent (no apps: what it sits beside on most hosts), else `sidekick`.
 */
function resolveOtlp(
  exporter: Extract<ExporterConfig, { type: 'otlp' }>,
  apps: Config['apps'],
  file: string | undefined,
): void {
  for (const [header, variable] of Object.entries(exporter.headersFromEnv)) {
    const value = process.env[variable];
    if (value === undefined) {
      const field = `agent.exporter.headersFromEnv.${header}`;
      throw new SidekickError(
        'SK_ERR_CONFIG_INVALID',
        `${file ?? 'config'}: ${field}: environment variable ${variable} is not set`,
        { file, field, issues: [{ field, message: `environment variable ${variable} is not set` }] },
      );
    }
    exporter.headers[header] = value;
  }
  exporter.resource['service.name'] ??= apps.length === 1 ? apps[0]!.name : apps.length === 0 ? 'php-fpm' : 'sidekick';
}

/** The agent section with its socket resolved (callers check `config.agent` exists first). */
export function agentConfigOf(config: Config): AgentConfig {
  if (!config.agent) throw new SidekickError('SK_ERR_CONFIG_INVALID', 'agent: section missing', { field: 'agent' });
  return config.agent as AgentConfig;
}
