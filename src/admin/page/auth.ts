// Who may see the status page. Without a token, anyone who can reach the address (keep it on loopback). With one,
// every request needs it: `Authorization: Bearer <token>` (curl, scripts), or the session cookie a browser gets by
// opening the page once as `/?token=<token>` (HttpOnly, SameSite=Strict; the redirect drops the token from the
// address bar and history). EventSource cannot send headers, so the event stream relies on that cookie.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export const SESSION_COOKIE = 'sidekick_status';

export class PageAuth {
  private readonly tokenDigest: Buffer | undefined;
  private readonly sessionDigest: Buffer | undefined;
  /** The cookie value: derived from the token (stable across restarts), not the token itself. */
  readonly session: string | undefined;

  constructor(token: string | undefined) {
    if (token === undefined) return;
    this.tokenDigest = digest(token);
    this.session = createHmac('sha256', token).update('sidekick status page session').digest('base64url');
    this.sessionDigest = digest(this.session);
  }

  get required(): boolean {
    return this.tokenDigest !== undefined;
  }

  /** Is this request allowed (a right Bearer header or session cookie; anything when no token is configured)? */
  allows(req: IncomingMessage): boolean {
    if (!this.tokenDigest || !this.sessionDigest) return true;
    const header = req.headers.authorization;
    if (header !== undefined) {
      const m = /^Bearer\s+(.+)$/i.exec(header.trim());
      // A wrong header is a wrong credential: it is not rescued by a cookie.
      return m !== null && same(digest(m[1]!), this.tokenDigest);
    }
    const cookie = cookieValue(req.headers.cookie, SESSION_COOKIE);
    return cookie !== undefined && same(digest(cookie), this.sessionDigest);
  }

  /** `?token=` on the page URL: true when it is the token (then the caller sets the cookie and redirects). */
  acceptsQueryToken(value: string): boolean {
    return this.tokenDigest !== undefined && same(digest(value), this.tokenDigest);
  }

  /** The Set-Cookie header for a browser that presented the token. */
  cookieHeader(): string {
    return `${SESSION_COOKIE}=${this.session}; Path=/; HttpOnly; SameSite=Strict`;
  }
}

/** Fixed-length digests, so the comparison takes the same time whatever the length of what was sent. */
function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function same(a: Buffer, b: Buffer): boolean {
  return timingSafeEqual(a, b);
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
