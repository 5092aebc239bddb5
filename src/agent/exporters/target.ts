// Where an exporter delivers, in one line: for status, logs and dead-letter sidecars.
import type { ExporterConfig } from '../../config/schema.js';
import { signalUrl } from './otlp/exporter.js';

export function exporterTarget(c: ExporterConfig): string {
  if (c.type === 'http') return c.url;
  if (c.type === 'file') return c.dir;
  return signalUrl(c, 'logs');
}
