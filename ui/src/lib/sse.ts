// A server-sent-events parser (the stream carries a bearer token, which EventSource
// cannot send, so the stream is read with fetch).

export type SseMessage = { id?: string; event?: string; data: string };

/** Feeds text chunks; calls `emit` for every complete message. */
export class SseParser {
  private buf = "";
  private data: string[] = [];
  private id?: string;
  private event?: string;
  constructor(private emit: (m: SseMessage) => void) {}

  push(chunk: string) {
    this.buf += chunk;
    for (;;) {
      const nl = this.buf.search(/\r\n|\n|\r/);
      if (nl < 0) return;
      const line = this.buf.slice(0, nl);
      const len = this.buf.startsWith("\r\n", nl) ? 2 : 1;
      this.buf = this.buf.slice(nl + len);
      this.line(line);
    }
  }

  private line(line: string) {
    if (line === "") {
      if (this.data.length) this.emit({ id: this.id, event: this.event, data: this.data.join("\n") });
      this.data = [];
      this.event = undefined;
      return;
    }
    if (line.startsWith(":")) return;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
    else if (field === "event") this.event = value;
  }
}

/** Reconnect delays: exponential from 500 ms up to 30 s. */
export function backoff(attempt: number): number {
  return Math.min(30_000, 500 * 2 ** Math.max(0, attempt));
}
