// Field types shared by the config schemas: human-friendly durations and sizes (see units.ts).
import { z } from 'zod';
import { parseDuration, parseSize } from './units.js';

export const duration = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const ms = parseDuration(v);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a duration in ms or a string like '500ms', '5s', '2m', '1h'` });
    return z.NEVER;
  }
  return ms;
});

export const size = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const bytes = parseSize(v);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a byte count or a string like '64KiB', '256MiB', '1GiB'` });
    return z.NEVER;
  }
  return bytes;
});
