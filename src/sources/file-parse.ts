// The file source's pure half: which files count, how each format parses, and how parsed values become vars.
// Vars are strings, so the mapping is fixed and documented (README, "Sources" → "file"):
//   - JSON / YAML: the top level must be an object; one var per top-level key. A string stays as it is; a number or
//     boolean becomes its JSON text ("8080", "true"); null becomes ""; an object or array becomes compact JSON text.
//   - .env: as dotenv's parse gives it (no variable expansion, `export ` prefixes and quotes handled by dotenv).
//   - A directory: every .json/.yaml/.yml/.env file in it (not its subfolders, not hidden files), merged top-level
//     keys in file-name order: on a key in several files, the file whose name sorts last wins (conf.d style:
//     00-defaults.yaml, 50-site.json).
// An empty file (0 bytes, or only a BOM and whitespace) is an error, not an empty snapshot: editors that truncate
// then write would otherwise publish {} for a moment. To publish no vars, write `{}` or a comment line.
import { basename, extname } from 'node:path';
import { parse as parseYaml } from 'yaml';
import dotenv from 'dotenv';

export type FileFormat = 'json' | 'yaml' | 'env';

/** A file's content could not become vars: the message names the file and says why (the parser's own words). */
export class FileContentError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'FileContentError';
  }
}

/** The format a file's name implies: .json, .yaml/.yml, .env or *.env; undefined for anything else. */
export function formatOfName(file: string): FileFormat | undefined {
  const name = basename(file);
  if (name === '.env' || name.endsWith('.env')) return 'env';
  const ext = extname(name).toLowerCase();
  if (ext === '.json') return 'json';
  if (ext === '.yaml' || ext === '.yml') return 'yaml';
  return undefined;
}

/**
 * Whether a directory entry is one of the config files: not hidden (Kubernetes' `..data` and `..2024_…` entries,
 * editors' `.foo.swp`), except `.env` itself; and of a known format, or any name when `format` is given.
 */
export function isConfigEntry(name: string, format: FileFormat | undefined): boolean {
  if (name.startsWith('.') && name !== '.env') return false;
  if (format) return !name.endsWith('~') && !name.endsWith('.swp') && !name.endsWith('.tmp');
  return formatOfName(name) !== undefined;
}

/** A JSON/YAML value as a var: strings as they are, null as "", anything else as its (compact) JSON text. */
function toVar(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === null || value === undefined) return '';
  if (typeof value === 'number' || typeof value === 'bigint') return String(value); // Infinity/NaN (YAML) too
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  return JSON.stringify(value);
}

/** `text` (the content of `file`) as vars, or a FileContentError. */
export function parseVars(file: string, text: string, format: FileFormat): Record<string, string> {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  if (body.trim() === '') throw new FileContentError(file, 'the file is empty');
  if (format === 'env') return { ...dotenv.parse(body) };
  let parsed: unknown;
  try {
    parsed = format === 'json' ? JSON.parse(body) : parseYaml(body);
  } catch (err) {
    const what = format === 'json' ? 'invalid JSON' : 'invalid YAML';
    throw new FileContentError(file, `${what}: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    const got = parsed === null ? 'null' : Array.isArray(parsed) ? 'an array' : `a ${typeof parsed}`;
    throw new FileContentError(file, `the top level must be an object of keys, got ${got}`);
  }
  // Null prototype: a key named "__proto__" stays a key instead of hitting the setter.
  const vars = Object.create(null) as Record<string, string>;
  for (const [key, value] of Object.entries(parsed)) vars[key] = toVar(value);
  return vars;
}

/** Several files' vars merged in name order: the file whose name sorts last wins a key. */
export function mergeInNameOrder(files: { name: string; vars: Record<string, string> }[]): Record<string, string> {
  const merged = Object.create(null) as Record<string, string>;
  for (const f of [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    for (const key of Object.keys(f.vars)) merged[key] = f.vars[key]!;
  }
  return merged;
}
