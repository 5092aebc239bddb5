// A small HTTP endpoint's listen and close, shared by the admin socket and the agent's /metrics: listen on a Unix
// socket path or host:port and report a listen error (EADDRINUSE, EACCES) as a rejection rather than an 'error'
// event; close every open connection at stop (keep-alive clients must not hold the stop up).
import { createServer, type RequestListener, type Server } from 'node:http';

/** Where to listen (the shape of config's ListenAddress). */
export type HttpListenAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export interface HttpListener {
  readonly server: Server;
  /** The bound TCP port (the real one when the address said port 0); undefined on a Unix socket. */
  port(): number | undefined;
  /** Stops listening and closes every open connection; resolves once the server is closed. Idempotent. */
  close(): Promise<void>;
}

/** Serves `handler` on `address`; resolves once listening, rejects with the listen error (nothing left open). */
export async function listenHttp(address: HttpListenAddress, handler: RequestListener): Promise<HttpListener> {
  const server = createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const onListening = (): void => {
      server.off('error', reject);
      resolve();
    };
    if (address.kind === 'unix') server.listen(address.path, onListening);
    else server.listen(address.port, address.host, onListening);
  });
  let closing: Promise<void> | undefined;
  return {
    server,
    port: () => {
      const a = server.address();
      return a && typeof a === 'object' ? a.port : undefined;
    },
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
      return closing;
    },
  };
}
