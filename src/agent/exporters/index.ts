// Exporter factory: one place that maps `agent.exporter.type` to its implementation.
import type { ExporterConfig } from '../../config/schema.js';
import { FileExporter } from './file.js';
import { HttpExporter } from './http.js';
import type { Exporter } from './types.js';

export function createExporter(config: ExporterConfig): Exporter {
  return config.type === 'http' ? new HttpExporter(config) : new FileExporter(config);
}

export { RetryableExportError, type Exporter, type ExportOutcome, type ExportPart } from './types.js';
