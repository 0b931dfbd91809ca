import type { ServerResponse } from 'node:http';

/** A server-sent event stream as OpenAI writes one: `data: <json>` events, ended by `data: [DONE]`. */
export class SseStream {
  constructor(private readonly res: ServerResponse) {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
      // Proxies such as nginx hold responses back unless told not to, which would defeat streaming.
      'X-Accel-Buffering': 'no',
    });
    res.flushHeaders();
  }

  /** Whether the client is still there to read. */
  get open(): boolean {
    return !this.res.destroyed && !this.res.writableEnded;
  }

  send(event: object): void {
    if (this.open) this.res.write(`data: ${JSON.stringify(event)}\n\n`);
  }

  done(): void {
    if (this.open) this.res.end('data: [DONE]\n\n');
  }
}
