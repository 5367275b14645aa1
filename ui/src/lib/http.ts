import type { ApiError, Event } from "../api/types";
import type { Backend, LiveState, Method } from "./backend";
import { backoff, SseParser } from "./sse";

/** The backend over HTTP: fetch for calls, a fetch-read SSE stream for changes. */
export class HttpBackend implements Backend {
  private token: string | null = null;
  constructor(private base: string) {}

  setToken(token: string | null) {
    this.token = token;
  }

  private headers(json: boolean): Record<string, string> {
    const h: Record<string, string> = {};
    if (this.token) h["Authorization"] = `Bearer ${this.token}`;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async call<T>(method: Method, path: string, body?: unknown): Promise<T> {
    let r: Response;
    try {
      r = await fetch(`${this.base}/api/v1${path}`, {
        method,
        headers: this.headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw { code: "internal", message: `the server did not answer: ${e}` } satisfies ApiError;
    }
    const text = await r.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      throw { code: "internal", message: `the server answered ${r.status} with no JSON` } satisfies ApiError;
    }
    if (!r.ok) throw json as ApiError;
    return json as T;
  }

  subscribe(onEvent: (e: Event) => void, onState: (s: LiveState) => void): () => void {
    let stopped = false;
    let lastId: string | undefined;
    let attempt = 0;
    let controller: AbortController | null = null;
    const run = async () => {
      while (!stopped) {
        controller = new AbortController();
        onState(attempt === 0 ? "connecting" : "reconnecting");
        try {
          const h = this.headers(false);
          if (lastId) h["Last-Event-ID"] = lastId;
          const r = await fetch(`${this.base}/api/v1/events/stream`, { headers: h, signal: controller.signal });
          if (r.status === 401) {
            // The token was revoked (or the session ended): no point in retrying.
            stopped = true;
            onState("denied");
            return;
          }
          if (!r.ok || !r.body) throw new Error(`stream answered ${r.status}`);
          onState("live");
          attempt = 0;
          const parser = new SseParser((m) => {
            if (m.id) lastId = m.id;
            // `ready` carries the position to resume from; it is not a change.
            if (m.event === "ready") return;
            try {
              onEvent(JSON.parse(m.data) as Event);
            } catch {
              /* a message that is not an event is skipped */
            }
          });
          const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            parser.push(value);
          }
        } catch {
          /* reconnect below */
        }
        if (stopped) return;
        onState("reconnecting");
        await new Promise((res) => setTimeout(res, backoff(attempt++)));
      }
    };
    void run();
    return () => {
      stopped = true;
      controller?.abort();
    };
  }
}
