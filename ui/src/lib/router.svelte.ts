// A small history router: the path picks the page, the query string carries filters.

export type Route =
  | { page: "login" }
  | { page: "pools" }
  | { page: "pool"; name: string }
  | { page: "allocations" }
  | { page: "vip"; address: string }
  | { page: "owners" }
  | { page: "pending" }
  | { page: "events" }
  | { page: "hypervisor" }
  | { page: "notfound" };

export function parse(path: string): Route {
  const p = path.replace(/\/+$/, "") || "/";
  const parts = p.split("/").filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case undefined:
    case "pools":
      return parts[1] ? { page: "pool", name: parts[1] } : { page: "pools" };
    case "login":
      return { page: "login" };
    case "allocations":
      return { page: "allocations" };
    case "vips":
      return parts[1] ? { page: "vip", address: parts[1] } : { page: "owners" };
    case "owners":
      return { page: "owners" };
    case "pending":
      return { page: "pending" };
    case "events":
      return { page: "events" };
    case "hypervisor":
      return { page: "hypervisor" };
    default:
      return { page: "notfound" };
  }
}

class Location {
  path = $state(window.location.pathname);
  search = $state(window.location.search);
  route = $derived(parse(this.path));

  constructor() {
    window.addEventListener("popstate", () => this.sync());
  }
  sync() {
    this.path = window.location.pathname;
    this.search = window.location.search;
  }
  go(url: string, replace = false) {
    if (replace) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
    this.sync();
    if (!replace) window.scrollTo(0, 0);
  }
}

export const location = new Location();

/** Clicks on internal links navigate without a reload: one listener for the whole page
 * (rows of a virtualised table come and go every frame; they carry no listeners). */
export function installLinks() {
  document.addEventListener("click", (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = (e.target as Element | null)?.closest?.("a");
    const href = a?.getAttribute("href");
    if (!a || !href || !href.startsWith("/") || a.target || a.hasAttribute("download")) return;
    e.preventDefault();
    location.go(href);
  });
}
