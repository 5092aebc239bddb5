// A fake central that speaks raw TCP, for the faults node:http will not produce: answers that hang, are cut short,
// are not HTTP, are huge or trickle in. It parses the agent's requests itself (keep-alive, Content-Length bodies, no
// gzip) and asks `plan` what to do with each one. Loopback only; every socket is destroyed at close().
import net from 'node:net';

export interface RawRequest {
  /** Request number, from 0, across connections. */
  n: number;
  batchId: string;
  /** The body's lines (empty for a request that hung on its head). */
  records: string[];
}

export type Plan =
  /** 200, empty body; central keeps the records. */
  | { kind: 'ok' }
  /** Writes `bytes` and closes the connection. `accepted`: central kept the records. */
  | { kind: 'raw'; bytes: Buffer | string; accepted: boolean }
  /**
   * Writes `head`, then `bodyBytes` bytes ('x', or the bytes of `text` when given) in `chunk`-byte writes `intervalMs`
   * apart (0: as fast as the agent reads), then closes.
   */
  | {
      kind: 'stream';
      head: string;
      bodyBytes: number;
      text?: string;
      chunk: number;
      intervalMs: number;
      accepted: boolean;
    };

export interface RawCentral {
  port: number;
  url: string;
  /** Every request, in arrival order, with the plan it got. */
  requests: (RawRequest & { plan: Plan['kind'] | 'hang' })[];
  /** Records of the requests central kept (duplicates included). */
  accepted: string[];
  /** Connections that got a 'hang' plan, and whether the agent has closed each since. */
  hung: { socket: net.Socket; closed: boolean }[];
  /** Connections that got a 'stream' plan, and whether the agent closed each before the body was all written. */
  streams: { n: number; written: number; closedEarly: boolean; done: boolean }[];
  close(): Promise<void>;
}

const HEAD_END = Buffer.from('\r\n\r\n');

/**
 * `hang(n)` is asked on each request's head: true → central reads nothing more of it (the rest of the body stays in
 * the kernel buffers, so a large body stops mid-way) and never answers. Otherwise `plan` is asked once the body is in.
 */
export async function startRawCentral(
  plan: (req: RawRequest) => Plan,
  hang: (n: number) => boolean = () => false,
): Promise<RawCentral> {
  const sockets = new Set<net.Socket>();
  let count = 0;
  const central: RawCentral = {
    port: 0,
    url: '',
    requests: [],
    accepted: [],
    hung: [],
    streams: [],
    close: async () => undefined,
  };

  const streamBody = async (socket: net.Socket, p: Extract<Plan, { kind: 'stream' }>, n: number): Promise<void> => {
    const s = { n, written: 0, closedEarly: false, done: false };
    central.streams.push(s);
    let closed = false;
    const gone = new Promise<void>((r) =>
      socket.once('close', () => {
        closed = true;
        if (!s.done) s.closedEarly = true;
        r();
      }),
    );
    const block = Buffer.alloc(p.chunk, 0x78);
    const text = p.text === undefined ? undefined : Buffer.from(p.text, 'latin1');
    if (p.head) socket.write(p.head);
    while (!closed && s.written < p.bodyBytes) {
      const n = Math.min(p.chunk, p.bodyBytes - s.written);
      const piece = text ? text.subarray(s.written, s.written + n) : block.subarray(0, n);
      s.written += piece.length;
      if (!socket.write(piece)) await Promise.race([new Promise((r) => socket.once('drain', r)), gone]);
      if (p.intervalMs > 0) await new Promise((r) => setTimeout(r, p.intervalMs));
    }
    if (!closed) {
      s.done = true;
      socket.end();
    }
  };

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let head: { batchId: string; length: number; bodyAt: number } | undefined;
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (!head) {
          const end = buf.indexOf(HEAD_END);
          if (end < 0) return;
          const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
          const headers = new Map<string, string>();
          for (const l of lines.slice(1)) {
            const i = l.indexOf(':');
            headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
          }
          head = {
            batchId: headers.get('x-sidekick-batch-id') ?? '',
            length: Number(headers.get('content-length') ?? 0),
            bodyAt: end + HEAD_END.length,
          };
          if (hang(count)) {
            central.requests.push({ n: count++, batchId: head.batchId, records: [], plan: 'hang' });
            const h = { socket, closed: false };
            central.hung.push(h);
            socket.once('close', () => (h.closed = true));
            socket.off('data', onData);
            socket.pause();
            return;
          }
        }
        if (buf.length < head.bodyAt + head.length) return;
        const body = buf.subarray(head.bodyAt, head.bodyAt + head.length).toString('utf8');
        buf = buf.subarray(head.bodyAt + head.length);
        const req: RawRequest = { n: count++, batchId: head.batchId, records: body.split('\n').filter(Boolean) };
        head = undefined;
        const p = plan(req);
        central.requests.push({ ...req, plan: p.kind });
        if (p.kind === 'ok' || p.accepted) central.accepted.push(...req.records);
        if (p.kind === 'ok') {
          socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
          continue;
        }
        socket.off('data', onData);
        if (p.kind === 'raw') socket.end(p.bytes);
        else if (p.kind === 'stream') void streamBody(socket, p, req.n);
        return;
      }
    };
    socket.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  central.port = (server.address() as net.AddressInfo).port;
  central.url = `http://127.0.0.1:${central.port}/ingest`;
  central.close = () =>
    new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    });
  return central;
}
