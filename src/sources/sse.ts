// A Server-Sent Events parser (the WHATWG "event stream interpretation"), fed one line at a time: fields event, data,
// id and retry; comments (":…") only prove the stream alive; an event is dispatched at a blank line, and only when it
// has data.

export interface SseEvent {
  /** `message` unless an `event:` field said otherwise. */
  type: string;
  data: string;
}

export class SseParser {
  /** The last `id:` seen (sent back as Last-Event-ID when reconnecting). */
  lastEventId: string | undefined;
  /** The last valid `retry:` in ms (the server's reconnection delay). */
  retryMs: number | undefined;
  private type = '';
  private data: string[] = [];
  private dataBytes = 0;
  private first = true;

  constructor(private readonly maxEventBytes: number) {}

  /** Feeds one line (without its line break); returns the event it completes, if any. */
  line(raw: string): SseEvent | undefined {
    const line = this.first && raw.startsWith('\uFEFF') ? raw.slice(1) : raw;
    this.first = false;
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') {
      this.type = value;
    } else if (field === 'data') {
      this.dataBytes += value.length + 1;
      if (this.dataBytes > this.maxEventBytes) throw new Error(`an event is over ${this.maxEventBytes} bytes`);
      this.data.push(value);
    } else if (field === 'id') {
      if (!value.includes('\0')) this.lastEventId = value;
    } else if (field === 'retry') {
      if (/^\d+$/.test(value)) this.retryMs = Number(value);
    }
    return undefined;
  }

  private dispatch(): SseEvent | undefined {
    const event = this.data.length > 0 ? { type: this.type || 'message', data: this.data.join('\n') } : undefined;
    this.type = '';
    this.data = [];
    this.dataBytes = 0;
    return event;
  }
}
