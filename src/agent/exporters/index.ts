// Exporter factory: one place that maps `agent.exporter.type` to its implementation.
import { readFileSync } from 'node:fs';
import type { ExporterConfig } from '../../config/schema.js';
import { FileExporter } from './file.js';
import { HttpExporter } from './http.js';
import { OtlpExporter } from './otlp/exporter.js';
import type { Exporter } from './types.js';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

export function createExporter(config: ExporterConfig): Exporter {
  if (config.type === 'http') return new HttpExporter(config);
  if (config.type === 'otlp') return new OtlpExporter(config, VERSION);
  return new FileExporter(config);
}

/** How long one export may take (a hand-over waits this long for the one in flight). */
export function exportTimeoutMs(config: ExporterConfig): number {
  if (config.type === 'file') return 5000;
  // otlp: the status line within timeoutMs, then a 2xx body (its partial success) within timeoutMs again
  return config.type === 'otlp' ? 2 * config.timeoutMs : config.timeoutMs;
}

export { exporterTarget } from './target.js';
export { RetryableExportError, type Exporter, type ExportOutcome, type ExportPart } from './types.js';
