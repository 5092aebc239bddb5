// OTLP/HTTP test infrastructure, checked against the specification rather than against the agent's own encoder:
// independent decoders (otlp-decode.ts: protobufjs on the vendored .proto files, and a strict OTLP/JSON reader, both
// into one normalized shape, whose Value/Attrs representation that file's header documents), a fake collector
// (otlp-collector.ts) and the official OpenTelemetry JS SDK's encoding of the same records (otlp-sdk.ts).
export * from './otlp-decode.ts';
export * from './otlp-collector.ts';
export * from './otlp-sdk.ts';
