import { describe, expect, it } from "vitest";
import {
  bigToIp, compareIp, filterAllocations, filtersFromQuery, filtersToQuery, forecast, forecastText, ipToBig, lanes, level,
  nextFree, NO_FILTERS, segments, splitList, toCsv, usedPercent,
} from "./logic";
import { backoff, SseParser, type SseMessage } from "./sse";
import type { Allocation, OwnerSpan } from "../api/types";

const DAY = 86_400_000;

describe("utilisation", () => {
  it("uses NetBox's 75/90 thresholds", () => {
    expect(level(74.9)).toBe("ok");
    expect(level(75)).toBe("warning");
    expect(level(90)).toBe("danger");
  });
  it("counts what is not free as used and splits the bar", () => {
    const s = { family: "ipv4" as const, size: 16, reserved: 2, used: 6, quarantined: 2, free: 6 };
    expect(usedPercent(s)).toBe(62.5);
    expect(segments(s)).toEqual({ used: 37.5, quarantined: 12.5, reserved: 12.5, free: 37.5 });
    expect(usedPercent({ ...s, size: 0 })).toBe(0);
  });
});

describe("forecast", () => {
  const now = 10 * DAY;
  it("extrapolates the last week's growth", () => {
    const h = [0, 1, 2, 3, 4].map((d) => ({ at_ms: now - (4 - d) * DAY, used: 10 + 2 * d }));
    const f = forecast(h, 20, now)!;
    expect(f.perDay).toBeCloseTo(2);
    expect(f.days).toBeCloseTo(10);
    expect(forecastText(f)).toBe("full in 10 days at 2.0/day");
  });
  it("says so when usage does not grow, or the pool is full", () => {
    expect(forecast([{ at_ms: now - DAY, used: 5 }, { at_ms: now, used: 3 }], 10, now)).toBeNull();
    expect(forecast([{ at_ms: now, used: 3 }], 10, now)).toBeNull();
    expect(forecastText(forecast([], 0, now))).toBe("exhausted");
    expect(forecastText(null)).toBe("not filling up");
  });
  it("ignores history older than the window", () => {
    const h = [{ at_ms: now - 30 * DAY, used: 0 }, { at_ms: now - DAY, used: 50 }, { at_ms: now, used: 50 }];
    expect(forecast(h, 10, now)).toBeNull();
  });
});

describe("addresses", () => {
  it("round-trips both families, compressing IPv6 zeros", () => {
    for (const ip of ["192.0.2.1", "0.0.0.0", "255.255.255.255", "2001:db8::1", "2001:db8:0:1::", "::1", "2001:db8:1:2:3:4:5:6"]) {
      expect(bigToIp(ipToBig(ip), ip.includes(":"))).toBe(ip);
    }
    expect(bigToIp(ipToBig("2001:0db8:0000:0000:0000:0000:0000:0001"), true)).toBe("2001:db8::1");
  });
  it("sorts numerically, IPv4 first", () => {
    expect(["192.0.2.10", "2001:db8::1", "192.0.2.9"].sort(compareIp)).toEqual(["192.0.2.9", "192.0.2.10", "2001:db8::1"]);
  });
  it("lists the next free addresses across ranges, skipping .0 and .255 when asked", () => {
    const r = [
      { first: "192.0.2.254", last: "192.0.3.1", count: 3 },
      { first: "198.51.100.7", last: "198.51.100.9", count: 3 },
    ];
    expect(nextFree(r, 4, true)).toEqual(["192.0.2.254", "192.0.3.1", "198.51.100.7", "198.51.100.8"]);
    expect(nextFree(r, 3, false)).toEqual(["192.0.2.254", "192.0.2.255", "192.0.3.0"]);
    expect(nextFree([{ first: "2001:db8::ffff", last: "2001:db8::1:1", count: 3 }], 2, true)).toEqual(["2001:db8::ffff", "2001:db8::1:0"]);
  });
  it("splits pasted blocks", () => {
    expect(splitList(" 192.0.2.0/28,\n198.51.100.1-198.51.100.9  ")).toEqual(["192.0.2.0/28", "198.51.100.1-198.51.100.9"]);
  });
});

describe("allocation filters", () => {
  const a = (service: string, pool: string, ip: string): Allocation => ({ service, uid: null, pool, addresses: [ip], sharing_key: null, ports: [] });
  const items = [a("web/front", "blue", "192.0.2.1"), a("web/api", "green", "192.0.2.2"), a("db/main", "blue", "198.51.100.3")];
  const owners = new Map([["192.0.2.1", "node-a"], ["198.51.100.3", "node-b"]]);
  it("round-trips through the URL", () => {
    const f = { ...NO_FILTERS, pool: "blue", q: "front end" };
    expect(filtersFromQuery(filtersToQuery(f))).toEqual(f);
    expect(filtersToQuery(NO_FILTERS)).toBe("");
  });
  it("filters by pool, namespace, address prefix, owner and text", () => {
    const names = (f: Partial<typeof NO_FILTERS>) => filterAllocations(items, { ...NO_FILTERS, ...f }, owners).map((r) => r.service);
    expect(names({ pool: "blue" })).toEqual(["web/front", "db/main"]);
    expect(names({ namespace: "web" })).toEqual(["web/front", "web/api"]);
    expect(names({ address: "198.51" })).toEqual(["db/main"]);
    expect(names({ owner: "node-a" })).toEqual(["web/front"]);
    expect(names({ q: "NODE-B" })).toEqual(["db/main"]);
  });
  it("exports CSV with quoting", () => {
    const rows = filterAllocations([{ ...items[0], ports: ["tcp/80", "tcp/443"], sharing_key: 'a,"b"' }], NO_FILTERS, owners);
    expect(toCsv(rows)).toBe('service,addresses,pool,owner,sharing_key,ports\nweb/front,192.0.2.1,blue,node-a,"a,""b""",tcp/80 tcp/443\n');
  });
});

describe("swimlanes", () => {
  const s = (node: string, start: number, end: number | null): OwnerSpan => ({ id: start, address: "192.0.2.1", node, interface: "eth0", mac: "", source: "group", start_ms: start, end_ms: end, ended: end === null ? "" : "taken" });
  it("places each stretch on its node's lane, clipped to the window", () => {
    const l = lanes([s("b", 500, null), s("a", -100, 500)], 0, 1000);
    expect(l.map((x) => x.node)).toEqual(["a", "b"]);
    expect(l[0].bars[0]).toMatchObject({ x: 0, w: 0.5, open: false });
    expect(l[1].bars[0]).toMatchObject({ x: 0.5, w: 0.5, open: true });
    expect(lanes([s("a", 0, 10)], 100, 200)).toEqual([]);
  });
});

describe("server-sent events", () => {
  it("parses messages split across chunks, with ids and kinds", () => {
    const got: SseMessage[] = [];
    const p = new SseParser((m) => got.push(m));
    p.push("id: 7\nevent: address.allocated\nda");
    p.push('ta: {"a":1}\n\n: keep-alive\n\r\nid: 8\r\ndata: x\r\ndata: y\r\n\r\n');
    expect(got).toEqual([
      { id: "7", event: "address.allocated", data: '{"a":1}' },
      { id: "8", event: undefined, data: "x\ny" },
    ]);
  });
  it("backs off exponentially up to 30 s", () => {
    expect([0, 1, 2, 10].map(backoff)).toEqual([500, 1000, 2000, 30000]);
  });
});
