// Small text helpers for the human output of `sidekick status` and `sidekick vars`: durations, sizes, rates, ANSI
// colour (only when asked: the caller decides from the TTY and NO_COLOR) and an aligned table. Pure functions.

export type Style = 'ok' | 'warn' | 'bad' | 'dim' | 'bold';

const SGR: Record<Style, string> = { ok: '32', warn: '33', bad: '31', dim: '2', bold: '1' };

/** `text` wrapped in the style's ANSI codes when `color` is on; as is otherwise (or without a style). */
export function paint(text: string, style: Style | undefined, color: boolean): string {
  return color && style && text ? `\x1b[${SGR[style]}m${text}\x1b[0m` : text;
}

/** `0s`, `42s`, `5m 12s`, `3h 4m`, `2d 5h`: the two largest units, for uptimes and ages. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const units: [number, string][] = [
    [86_400, 'd'],
    [3_600, 'h'],
    [60, 'm'],
    [1, 's'],
  ];
  const i = units.findIndex(([n]) => s >= n);
  const [big, bigName] = units[i]!;
  const [small, smallName] = units[i + 1]!;
  const rest = Math.floor((s % big) / small);
  return rest ? `${Math.floor(s / big)}${bigName} ${rest}${smallName}` : `${Math.floor(s / big)}${bigName}`;
}

/** `3s ago` for a past timestamp (a clock a little ahead counts as now); `never` without one. */
export function ago(at: number | undefined, now: number): string {
  return at === undefined ? 'never' : `${duration(now - at)} ago`;
}

/** `107 B`, `1.5 KiB`, `61.8 MiB`. */
export function bytes(n: number | undefined): string {
  if (n === undefined) return '-';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

/** Records per second: one decimal below 100, whole above. */
export function perSec(n: number | undefined): string {
  if (n === undefined) return '-';
  return `${n < 100 ? (Math.round(n * 10) / 10).toString() : Math.round(n).toString()}/s`;
}

/** A number, or `-` when the running instance did not report it (an older version). */
export function num(n: number | undefined): string {
  return n === undefined ? '-' : String(n);
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;

/** Whether `text` holds a character a terminal would act on (newline, escape, NUL…) rather than print. */
export function hasControl(text: string): boolean {
  return CONTROL.test(text);
}

/** Text from the outside (an error message) as one terminal line: control characters and runs of spaces become one. */
export function oneLine(text: string, max = 160): string {
  // eslint-disable-next-line no-control-regex
  const flat = text.replace(/[\s\x00-\x1f\x7f-\x9f]+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** `total` and, when any is non-zero, the non-zero parts: `3 (crash 2, reload 1)`. */
export function withParts(parts: Record<string, number | undefined> | undefined): string {
  if (!parts) return '-';
  const entries = Object.entries(parts).map(([k, n]): [string, number] => [k, n ?? 0]);
  const total = entries.reduce((sum, [, n]) => sum + n, 0);
  const nonZero = entries.filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
  return nonZero.length ? `${total} (${nonZero.join(', ')})` : String(total);
}

export type Cell = string | { text: string; style?: Style | undefined };

/**
 * Rows aligned in columns two spaces apart (widths from the plain text, so colour does not shift them), each line
 * prefixed with `indent`; the header row is dimmed. No trailing spaces.
 */
export function table(header: string[], rows: Cell[][], { indent = '', color = false } = {}): string[] {
  const all: { text: string; style?: Style | undefined }[][] = [
    header.map((text) => ({ text, style: 'dim' as const })),
    ...rows.map((r) => r.map((c) => (typeof c === 'string' ? { text: c } : c))),
  ];
  const widths: number[] = [];
  for (const row of all) row.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.text.length)));
  return all.map((row) => {
    const cells = row.map((c, i) => {
      const pad = i === row.length - 1 ? '' : ' '.repeat(widths[i]! - c.text.length);
      return paint(c.text, c.style, color) + pad;
    });
    return `${indent}${cells.join('  ')}`.trimEnd();
  });
}
