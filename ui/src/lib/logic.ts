// The UI's own logic, pure and unit-tested (logic.test.ts): utilisation levels, the
// exhaustion forecast, free addresses, filters kept in the URL, export, swimlanes.
import type { Allocation, FamilyStats, FreeRange, OwnerSpan, UsagePoint } from "../api/types";

/** NetBox's thresholds: warning from 75 %, danger from 90 %. */
export const WARNING = 75;
export const DANGER = 90;

export type Level = "ok" | "warning" | "danger";

/** Used share of a family in percent: what is not free (used, quarantined, reserved). */
export function usedPercent(s: FamilyStats): number {
  if (s.size <= 0) return 0;
  return (100 * (s.size - s.free)) / s.size;
}

export function level(percent: number): Level {
  return percent >= DANGER ? "danger" : percent >= WARNING ? "warning" : "ok";
}

/** The bar's segments in percent of the family's size. */
export function segments(s: FamilyStats): { used: number; quarantined: number; reserved: number; free: number } {
  const p = (n: number) => (s.size > 0 ? (100 * n) / s.size : 0);
  return { used: p(s.used), quarantined: p(s.quarantined), reserved: p(s.reserved), free: p(s.free) };
}

const DAY = 86_400_000;

/**
 * When the pool runs out at the rate of the last `windowDays`: a least-squares line
 * through the usage history. `null` when usage is not growing (or there is too little
 * history).
 */
export function forecast(history: UsagePoint[], free: number, nowMs: number, windowDays = 7): { days: number; perDay: number } | null {
  const pts = history.filter((p) => p.at_ms >= nowMs - windowDays * DAY);
  if (pts.length < 2 || free <= 0) return free <= 0 ? { days: 0, perDay: 0 } : null;
  const n = pts.length;
  const mx = pts.reduce((a, p) => a + p.at_ms, 0) / n;
  const my = pts.reduce((a, p) => a + p.used, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of pts) {
    num += (p.at_ms - mx) * (p.used - my);
    den += (p.at_ms - mx) ** 2;
  }
  if (den === 0) return null;
  const perMs = num / den;
  if (perMs <= 0) return null;
  const perDay = perMs * DAY;
  return { days: free / perDay, perDay };
}

export function forecastText(f: { days: number; perDay: number } | null): string {
  if (!f) return "not filling up";
  if (f.days <= 0) return "exhausted";
  const per = f.perDay >= 1 ? `${f.perDay.toFixed(1)}/day` : `${(f.perDay * 7).toFixed(1)}/week`;
  if (f.days < 1) return `full in ${Math.max(1, Math.round(f.days * 24))} h at ${per}`;
  if (f.days > 3650) return `full in over 10 years at ${per}`;
  return `full in ${Math.round(f.days)} days at ${per}`;
}

// Addresses as BigInt, both families.
export function ipToBig(ip: string): bigint {
  if (ip.includes(":")) {
    const [head, tail] = ip.split("::");
    const h = head ? head.split(":") : [];
    const t = tail !== undefined && tail ? tail.split(":") : [];
    const parts = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
    return parts.reduce((a, p) => (a << 16n) + BigInt(parseInt(p || "0", 16)), 0n);
  }
  return ip.split(".").reduce((a, p) => (a << 8n) + BigInt(Number(p)), 0n);
}

export function bigToIp(v: bigint, v6: boolean): string {
  if (!v6) return [24n, 16n, 8n, 0n].map((s) => ((v >> s) & 255n).toString()).join(".");
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((v >> BigInt(i * 16)) & 0xffffn).toString(16));
  // Compress the longest run of zeros (RFC 5952).
  let best = -1;
  let len = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > len && j - i > 1) {
      best = i;
      len = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(":");
  return `${groups.slice(0, best).join(":")}::${groups.slice(best + len).join(":")}`;
}

export function compareIp(a: string, b: string): number {
  const fa = a.includes(":") ? 1 : 0;
  const fb = b.includes(":") ? 1 : 0;
  if (fa !== fb) return fa - fb;
  const x = ipToBig(a);
  const y = ipToBig(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** The first `n` free addresses (skipping .0/.255 when the pool avoids them). */
export function nextFree(ranges: FreeRange[], n: number, avoidBuggy: boolean): string[] {
  const out: string[] = [];
  for (const r of ranges) {
    const v6 = r.first.includes(":");
    for (let x = ipToBig(r.first), last = ipToBig(r.last); x <= last && out.length < n; x++) {
      if (avoidBuggy && !v6 && (x & 255n) % 255n === 0n) continue;
      out.push(bigToIp(x, v6));
    }
    if (out.length >= n) break;
  }
  return out;
}

/** The allocation filters, as kept in the URL. */
export type Filters = { q: string; pool: string; namespace: string; address: string; owner: string };

export const NO_FILTERS: Filters = { q: "", pool: "", namespace: "", address: "", owner: "" };

export function filtersFromQuery(search: string): Filters {
  const p = new URLSearchParams(search);
  return {
    q: p.get("q") ?? "",
    pool: p.get("pool") ?? "",
    namespace: p.get("namespace") ?? "",
    address: p.get("address") ?? "",
    owner: p.get("owner") ?? "",
  };
}

export function filtersToQuery(f: Filters): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(f)) if (v) p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : "";
}

export type Row = Allocation & { owner: string };

/** The allocations the filters keep; `owners` maps an address to the node announcing it. */
export function filterAllocations(items: Allocation[], f: Filters, owners: Map<string, string>): Row[] {
  const q = f.q.trim().toLowerCase();
  const out: Row[] = [];
  for (const a of items) {
    const owner = a.addresses.map((ip) => owners.get(ip)).find((o) => o) ?? "";
    if (f.pool && a.pool !== f.pool) continue;
    if (f.namespace && a.service.split("/")[0] !== f.namespace) continue;
    if (f.address && !a.addresses.some((ip) => ip.startsWith(f.address))) continue;
    if (f.owner && owner !== f.owner) continue;
    if (q && !`${a.service} ${a.pool} ${a.addresses.join(" ")} ${owner} ${a.sharing_key ?? ""}`.toLowerCase().includes(q)) continue;
    out.push({ ...a, owner });
  }
  return out;
}

function csvCell(v: string): string {
  return /[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

export function toCsv(rows: Row[]): string {
  const head = ["service", "addresses", "pool", "owner", "sharing_key", "ports"];
  const lines = rows.map((r) =>
    [r.service, r.addresses.join(" "), r.pool, r.owner, r.sharing_key ?? "", r.ports.join(" ")].map(csvCell).join(","),
  );
  return [head.join(","), ...lines].join("\n") + "\n";
}

/** A swimlane per node: its ownership stretches between `from` and `to` as fractions. */
export type Lane = { node: string; bars: { address: string; x: number; w: number; open: boolean }[] };

export function lanes(spans: OwnerSpan[], from: number, to: number): Lane[] {
  const width = Math.max(1, to - from);
  const by = new Map<string, Lane>();
  for (const s of spans) {
    const start = Math.max(from, s.start_ms);
    const end = Math.min(to, s.end_ms ?? to);
    if (end < from || start > to) continue;
    const lane = by.get(s.node) ?? { node: s.node, bars: [] };
    lane.bars.push({ address: s.address, x: (start - from) / width, w: Math.max(0.002, (end - start) / width), open: s.end_ms === null });
    by.set(s.node, lane);
  }
  return [...by.values()].sort((a, b) => a.node.localeCompare(b.node));
}

export function ago(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

/** Splits a textarea of blocks (lines, commas or spaces) into a list. */
export function splitList(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}
