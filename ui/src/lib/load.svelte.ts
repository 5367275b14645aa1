// Loads a read model and reloads it when the change stream says something changed.
import { backend, isApiError } from "./backend";
import { session } from "./session.svelte";

export class Resource<T> {
  data = $state<T | null>(null);
  error = $state<string | null>(null);
  loading = $state(true);
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(private path: () => string, private kinds: (kind: string) => boolean = () => true) {}

  async load() {
    try {
      this.data = await backend().call<T>("GET", this.path());
      this.error = null;
    } catch (e) {
      this.error = isApiError(e) ? e.message : String(e);
    } finally {
      this.loading = false;
    }
  }

  /** Loads now and after every matching change (coalesced over 150 ms); returns the stop. */
  follow(): () => void {
    void this.load();
    const off = session.onEvent((e) => {
      if (!this.kinds(e.kind)) return;
      if (this.timer) clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.load(), 150);
    });
    return () => {
      off();
      if (this.timer) clearTimeout(this.timer);
    };
  }
}
