// Who is logged in, the live stream's state, and the change events pages listen to.
import type { Caller, Event } from "../api/types";
import { backend, type LiveState } from "./backend";

const KEY = "vipvisor.token";

class Session {
  token = $state<string | null>(null);
  caller = $state<Caller | null>(null);
  live = $state<LiveState>("connecting");
  /** Bumped on every change event: pages re-read what they show. */
  version = $state(0);
  last = $state<Event | null>(null);
  private listeners = new Set<(e: Event) => void>();
  private stop: (() => void) | null = null;

  get admin() {
    return this.caller?.role === "admin";
  }

  async restore(): Promise<boolean> {
    const t = sessionStorage.getItem(KEY) ?? localStorage.getItem(KEY);
    if (!t) return false;
    return this.use(t);
  }

  /** Uses `token` if the server knows it. */
  async use(token: string, remember = false): Promise<boolean> {
    backend().setToken(token);
    try {
      this.caller = await backend().call<Caller>("GET", "/whoami");
    } catch {
      backend().setToken(null);
      return false;
    }
    this.token = token;
    sessionStorage.setItem(KEY, token);
    if (remember) localStorage.setItem(KEY, token);
    this.follow();
    return true;
  }

  logout() {
    this.stop?.();
    this.stop = null;
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    backend().setToken(null);
    this.token = null;
    this.caller = null;
  }

  onEvent(f: (e: Event) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private follow() {
    this.stop?.();
    this.stop = backend().subscribe(
      (e) => {
        this.last = e;
        this.version++;
        for (const f of this.listeners) f(e);
      },
      (s) => {
        this.live = s;
        // The stream refused the token: it was revoked; log out (the login page follows).
        if (s === "denied") this.logout();
      },
    );
  }
}

export const session = new Session();
