// A fake OpenTelemetry Collector OTLP/HTTP receiver on loopback: POST <prefix>/v1/logs and <prefix>/v1/traces,
// gunzip on Content-Encoding: gzip, decode by Content-Type (strictly, see otlp-decode.ts), record every request, and
// answer as the test scripts it: the OTLP/HTTP spec's success, partial success, error (google.rpc.Status body),
// throttling (429/503 + Retry-After) and 413 cases, a hang, or a torn connection. Responses are in the request's own
// encoding, as the spec requires of a server.
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import {
  decodeLogsRequest,
  decodeTracesRequest,
  encodeExportResponse,
  encodeRpcStatus,
  encodingOf,
  JSON_TYPE,
  PROTOBUF,
  type OtlpLogRecord,
  type OtlpLogs,
  type OtlpScope,
  type OtlpSpan,
  type OtlpTraces,
  type PartialSuccess,
  type Attrs,
} from './otlp-decode.ts';

interface RequestBase {
  /** The URL path as sent, e.g. '/v1/logs'. */
  path: string;
  /** The Content-Type header as sent. */
  contentType: string;
  /** The Content-Encoding header ('identity' when absent). */
  encoding: string;
  headers: IncomingHttpHeaders;
  /** The body as received on the wire (still gzipped when encoding is gzip). */
  bytes: Buffer;
  /** The body after gunzip: what was decoded. */
  body: Buffer;
  /** Why the body could not be decoded (the collector answered 400); `decoded` is undefined then. */
  error: string | undefined;
  /** Date.now() when the body was complete. */
  at: number;
}
export type CollectorRequest =
  | (RequestBase & { signal: 'logs'; decoded: OtlpLogs | undefined })
  | (RequestBase & { signal: 'traces'; decoded: OtlpTraces | undefined });

/** What to answer one decoded request with. Fields all optional: `{}` is the spec's plain success. */
export interface CollectorReplySpec {
  /** HTTP status, 200 by default. */
  status?: number;
  /** 200 only: ExportXServiceResponse.partial_success { rejected_log_records | rejected_spans, error_message }. */
  partialSuccess?: PartialSuccess;
  /** Non-2xx: google.rpc.Status.message (code follows the HTTP status: 400→3, 429→8, 503→14 …). */
  errorMessage?: string;
  /** Sets Retry-After (seconds, or an HTTP-date string). */
  retryAfter?: number | string;
  headers?: Record<string, string>;
  /** Replaces the encoded body (e.g. garbage, to see that a client copes). */
  body?: Buffer | string;
}
/** 'hang': never answer (the request stays open until close()); 'destroy': tear the connection down unanswered. */
export type CollectorReply = CollectorReplySpec | 'hang' | 'destroy';

export interface CollectorOptions {
  /** Scripts the answer to each decoded request (n counts from 0 over all signals); default `{}` (200). */
  respond?: (req: CollectorRequest, n: number) => CollectorReply;
  /** Path prefix before /v1/logs and /v1/traces, e.g. '/otlp' (no trailing slash). Default ''. */
  pathPrefix?: string;
  /** Bodies larger than this (on the wire or gunzipped) get 413. Default 64 MiB. */
  maxBodyBytes?: number;
}

export type FlatLogRecord = OtlpLogRecord & { resource: Attrs; scope: OtlpScope };
export type FlatSpan = OtlpSpan & { resource: Attrs; scope: OtlpScope };

export interface FakeCollector {
  /** Base endpoint, e.g. http://127.0.0.1:PORT (plus the path prefix): the exporter's `endpoint`. */
  url: string;
  /** Every request to a signal path, in arrival order. */
  requests: CollectorRequest[];
  /** Requests to any other path or with another method ('POST /v1/metrics'), answered 404/405. */
  unmatched: string[];
  /** All LogRecords received so far, flattened with their resource and scope; throws if any logs body was bad. */
  logRecords(): FlatLogRecord[];
  /** All spans received so far, flattened likewise. */
  spans(): FlatSpan[];
  /** Resolves once `predicate(collector)` holds (checked now and on each request), or throws naming `what`. */
  waitFor(predicate: (c: FakeCollector) => boolean, what: string, timeoutMs?: number): Promise<void>;
  /** Requests currently held open by a 'hang' reply. */
  hanging(): number;
  /** Stops listening and tears down every connection, hanging ones included. Idempotent. */
  close(): Promise<void>;
}

const RPC_CODE: Record<number, number> = { 400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 429: 8, 500: 13, 502: 14, 503: 14 };
const MiB = 1024 * 1024;

export async function startCollector(opts: CollectorOptions = {}): Promise<FakeCollector> {
  const prefix = opts.pathPrefix ?? '';
  const max = opts.maxBodyBytes ?? 64 * MiB;
  const respond = opts.respond ?? (() => ({}));
  const requests: CollectorRequest[] = [];
  const unmatched: string[] = [];
  const held = new Set<ServerResponse>();
  const waiters = new Set<() => void>();

  const notify = (): void => {
    for (const w of [...waiters]) w();
  };

  function send(res: ServerResponse, status: number, contentType: string, body: Buffer | string, extra = {}): void {
    res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), ...extra });
    res.end(body);
  }

  function answer(req: CollectorRequest, res: ServerResponse, reply: CollectorReply): void {
    if (reply === 'hang') {
      held.add(res);
      res.on('close', () => held.delete(res));
      return;
    }
    if (reply === 'destroy') {
      res.socket?.destroy();
      return;
    }
    const status = reply.status ?? 200;
    const ct = encodingOf(req.contentType) === 'json' ? JSON_TYPE : PROTOBUF;
    const body =
      reply.body ??
      (status >= 200 && status < 300
        ? encodeExportResponse(req.signal, ct, reply.partialSuccess)
        : encodeRpcStatus(ct, { code: RPC_CODE[status] ?? 2, message: reply.errorMessage ?? `scripted ${status}` }));
    const headers: Record<string, string> = { ...reply.headers };
    if (reply.retryAfter !== undefined) headers['retry-after'] = String(reply.retryAfter);
    send(res, status, ct, body, headers);
  }

  function onBody(req: IncomingMessage, res: ServerResponse, signal: 'logs' | 'traces', bytes: Buffer): void {
    const contentType = req.headers['content-type'] ?? '';
    const encoding = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
    const base = { path: req.url ?? '', contentType, encoding, headers: req.headers, bytes, at: Date.now() };
    const ct = /json/i.test(contentType) ? JSON_TYPE : PROTOBUF;
    try {
      encodingOf(contentType);
    } catch (err) {
      send(res, 415, 'text/plain', (err as Error).message);
      return;
    }
    let body: Buffer;
    if (encoding === 'gzip') {
      try {
        body = gunzipSync(bytes, { maxOutputLength: max });
      } catch (err) {
        const tooBig = (err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE';
        const status = tooBig ? 413 : 400;
        send(res, status, ct, encodeRpcStatus(ct, { code: RPC_CODE[status]!, message: (err as Error).message }));
        return;
      }
    } else if (encoding === 'identity') {
      body = bytes;
    } else {
      send(res, 400, ct, encodeRpcStatus(ct, { code: 3, message: `unsupported Content-Encoding ${encoding}` }));
      return;
    }
    let error: string | undefined;
    let rec: CollectorRequest;
    try {
      rec =
        signal === 'logs'
          ? { ...base, body, error, signal, decoded: decodeLogsRequest(body, contentType) }
          : { ...base, body, error, signal, decoded: decodeTracesRequest(body, contentType) };
    } catch (err) {
      error = (err as Error).message;
      rec = { ...base, body, error, signal, decoded: undefined } as CollectorRequest;
    }
    const n = requests.push(rec) - 1;
    try {
      if (error !== undefined) send(res, 400, ct, encodeRpcStatus(ct, { code: 3, message: error }));
      else answer(rec, res, respond(rec, n));
    } finally {
      notify(); // after answering, so a waiter sees a held request as held
    }
  }

  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const signal = path === `${prefix}/v1/logs` ? 'logs' : path === `${prefix}/v1/traces` ? 'traces' : undefined;
    if (!signal || req.method !== 'POST') {
      unmatched.push(`${req.method} ${path}`);
      req.resume();
      send(res, signal ? 405 : 404, 'text/plain', signal ? 'method not allowed' : 'not found');
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (c: Buffer): void => {
      size += c.length;
      if (size <= max) {
        chunks.push(c);
        return;
      }
      // Too large: stop buffering, answer 413 and close the connection rather than read the rest.
      req.off('data', onData);
      req.off('end', onEnd);
      req.pause();
      chunks.length = 0;
      const ct = /json/i.test(req.headers['content-type'] ?? '') ? JSON_TYPE : PROTOBUF;
      const msg = `body over ${max} bytes`;
      send(res, 413, ct, encodeRpcStatus(ct, { code: 8, message: msg }), { connection: 'close' });
      res.on('finish', () => req.socket.destroy());
    };
    const onEnd = (): void => onBody(req, res, signal, Buffer.concat(chunks));
    req.on('data', onData);
    req.on('end', onEnd);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  let closing: Promise<void> | undefined;
  const collector: FakeCollector = {
    url: `http://127.0.0.1:${port}${prefix}`,
    requests,
    unmatched,
    logRecords() {
      const out: FlatLogRecord[] = [];
      for (const [i, r] of requests.entries()) {
        if (r.signal !== 'logs') continue;
        if (!r.decoded) throw new Error(`collector: logs request #${i} was not decodable: ${r.error}`);
        for (const rl of r.decoded.resourceLogs)
          for (const sl of rl.scopeLogs)
            for (const lr of sl.logRecords) out.push({ ...lr, resource: rl.resource, scope: sl.scope });
      }
      return out;
    },
    spans() {
      const out: FlatSpan[] = [];
      for (const [i, r] of requests.entries()) {
        if (r.signal !== 'traces') continue;
        if (!r.decoded) throw new Error(`collector: traces request #${i} was not decodable: ${r.error}`);
        for (const rs of r.decoded.resourceSpans)
          for (const ss of rs.scopeSpans)
            for (const s of ss.spans) out.push({ ...s, resource: rs.resource, scope: ss.scope });
      }
      return out;
    },
    waitFor(predicate, what, timeoutMs = 10_000) {
      return new Promise<void>((resolve, reject) => {
        const done = (err?: Error): void => {
          waiters.delete(check);
          clearTimeout(timer);
          if (err) reject(err);
          else resolve();
        };
        const check = (): void => {
          try {
            if (predicate(collector)) done();
          } catch (err) {
            done(err as Error);
          }
        };
        const timer = setTimeout(() => {
          const seen = requests.map((r) => `${r.signal}/${r.contentType}${r.error ? ' (bad)' : ''}`).join(', ');
          done(new Error(`collector: no ${what} within ${timeoutMs} ms (${requests.length} requests: ${seen})`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    hanging: () => held.size,
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const res of held) res.socket?.destroy();
        held.clear();
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
  return collector;
}
