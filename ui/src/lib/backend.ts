// The one interface the UI talks to its backend through: HTTP + SSE here (http.ts); the
// desktop app adds Tauri IPC behind the same interface. Pages never call fetch.
import type { ApiError, Event } from "../api/types";

export type Method = "GET" | "POST" | "PUT" | "DELETE";

/** The state of the change stream, for the live indicator. */
export type LiveState = "connecting" | "live" | "reconnecting" | "polling" | "denied";

export interface Backend {
  /** Sends a request under /api/v1; resolves with the JSON answer, rejects with an ApiError. */
  call<T>(method: Method, path: string, body?: unknown): Promise<T>;
  /** Follows the change stream (resuming after a disconnect) until the returned function is called. */
  subscribe(onEvent: (e: Event) => void, onState: (s: LiveState) => void): () => void;
  /** The token requests carry (null: logged out). */
  setToken(token: string | null): void;
}

let current: Backend | null = null;

export function setBackend(b: Backend) {
  current = b;
}

export function backend(): Backend {
  if (!current) throw new Error("no backend set");
  return current;
}

export function isApiError(e: unknown): e is ApiError {
  return typeof e === "object" && e !== null && "code" in e && "message" in e;
}
