// The browser test, against a real `vipvisor serve` on a real store (started by the Rust
// test tests/suites/speaker_lab.rs, which also runs a static speaker group recording into
// the same store). Steps, each checked: log in with the printed URL; create a pool through
// the form; see the overlap error on the field; allocate with the CLI and see the row
// appear live; filter the allocations table (kept in the URL); the owners page fed by the
// group; a VIP's page; every page free of axe-core violations, in light and dark; a
// screenshot of every page (E2E_OUT).
//
// Env: VIPVISOR_LOGIN_URL (what serve printed), VIPVISOR_BIN, VIPVISOR_STORE, E2E_VIP (the
// group's VIP), E2E_NODES (its members, comma-separated), E2E_OUT.
import { execFileSync } from "node:child_process";
import { axe, check, launch, outDir } from "./lib.mjs";

const login = process.env.VIPVISOR_LOGIN_URL;
const bin = process.env.VIPVISOR_BIN;
const store = process.env.VIPVISOR_STORE;
const vip = process.env.E2E_VIP;
const nodes = (process.env.E2E_NODES ?? "").split(",").filter(Boolean);
if (!login || !bin || !store || !vip || !nodes.length) {
  console.error("usage: VIPVISOR_LOGIN_URL, VIPVISOR_BIN, VIPVISOR_STORE, E2E_VIP and E2E_NODES must be set");
  process.exit(2);
}
const base = new URL(login).origin;
const out = outDir();
const cli = (...args) => execFileSync(bin, ["--store", store, ...args], { encoding: "utf8", timeout: 20_000 });

const browser = await launch();
let failed = false;
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
page.setDefaultTimeout(10_000);
const consoleErrors = [];
// An API error answer (the overlap's 409, a used code's 401) is the server speaking, not a
// fault of the page: only the page's own errors count.
page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && consoleErrors.push(m.text()));
page.on("pageerror", (e) => consoleErrors.push(String(e)));
const shots = [];
async function shot(name) {
  await page.screenshot({ path: `${out}/${name}.png`, fullPage: false });
  shots.push(name);
}
async function clean(name) {
  const v = await axe(page);
  check(v.length === 0, `no axe-core violations on ${name}:\n  ${v.join("\n  ")}`);
}
const step = async (name, f) => {
  const t = Date.now();
  await f();
  console.log(`ok ${name} (${Date.now() - t} ms)`);
};

try {
  await step("log in with the printed URL", async () => {
    await page.goto(login);
    await page.getByTestId("whoami").filter({ hasText: "login · admin" }).waitFor();
    await page.getByTestId("live").filter({ hasText: "Live" }).waitFor();
    check(new URL(page.url()).pathname === "/pools", `the login lands on /pools, not ${page.url()}`);
    // The code is used up: a second use is refused.
    const again = await page.evaluate(async (u) => (await fetch("/api/v1/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code: new URL(u).searchParams.get("code") }) })).status, login);
    check(again === 401, `a used login code is refused (got ${again})`);
  });

  await step("create a pool through the form (validated by the server's dry run)", async () => {
    await page.getByRole("button", { name: "New pool" }).click();
    await page.locator("#pool-name").fill("blue");
    await page.locator("#pool-addresses").fill("198.51.100.0/26");
    await page.getByTestId("dry-run").filter({ hasText: "the server accepts this pool" }).waitFor();
    await page.getByRole("button", { name: "Create pool" }).click();
    await page.waitForURL(`${base}/pools/blue`);
    await page.getByTestId("address-map").waitFor();
    check((await page.locator("[data-testid=address-map] a.cell").count()) === 64, "the address map has one cell per address of a /26");
    check((await page.getByTestId("next-free").textContent()).startsWith("198.51.100.0, 198.51.100.1"), "the next free addresses are listed");
    await clean("the pool page");
    await shot("pool");
  });

  await step("see the overlap error on the addresses field", async () => {
    await page.goto(`${base}/pools`);
    await page.getByTestId("pool-card").first().waitFor();
    await page.getByRole("button", { name: "New pool" }).click();
    await page.locator("#pool-name").fill("green");
    await page.locator("#pool-addresses").fill("198.51.100.32/28");
    const err = page.getByTestId("error-addresses");
    await err.waitFor();
    const text = await err.textContent();
    check(text.includes("overlaps pool \"blue\""), `the error names the other pool: ${text}`);
    check((await page.locator("#pool-addresses").getAttribute("aria-invalid")) === "true", "the field is marked invalid");
    await shot("pool-form-overlap");
    await page.getByRole("button", { name: "Create pool" }).click();
    await err.waitFor();
    check(new URL(page.url()).pathname === "/pools", "a refused pool stays on the form");
    await clean("the pools page with the form");
    await page.getByRole("button", { name: "New pool" }).click();
    await shot("pools");
  });

  await step("allocate with the CLI and see the row appear live", async () => {
    await page.goto(`${base}/allocations`);
    await page.getByTestId("count").filter({ hasText: "0 of 0" }).waitFor();
    const t0 = Date.now();
    cli("alloc", "request", "web/front", "--pool", "blue");
    await page.getByTestId("row").filter({ hasText: "web/front" }).waitFor({ timeout: 3000 });
    console.log(`  the CLI's allocation showed in the table ${Date.now() - t0} ms after the CLI started`);
    cli("alloc", "request", "web/api", "--pool", "blue");
    cli("alloc", "request", "db/main", "--pool", "blue");
    await page.getByTestId("count").filter({ hasText: "3 of 3" }).waitFor();
  });

  await step("filter the allocations table, kept in the URL", async () => {
    await page.keyboard.press("/");
    check(await page.locator("#f-q").evaluate((e) => e === document.activeElement), "/ focuses the search");
    await page.keyboard.type("front");
    await page.getByTestId("count").filter({ hasText: "1 of 3" }).waitFor();
    check(new URL(page.url()).searchParams.get("q") === "front", `the search is in the URL: ${page.url()}`);
    await page.locator("#f-q").fill("");
    await page.locator("#f-ns").fill("web");
    await page.getByTestId("count").filter({ hasText: "2 of 3" }).waitFor();
    await page.reload();
    await page.getByTestId("count").filter({ hasText: "2 of 3" }).waitFor();
    check((await page.locator("#f-ns").inputValue()) === "web", "a reload keeps the filter");
    await clean("the allocations page");
    await shot("allocations");
  });

  await step("the owners page, fed by the static speaker group", async () => {
    await page.goto(`${base}/owners`);
    const row = page.getByTestId("owners").locator("tbody tr").filter({ hasText: vip });
    await row.waitFor();
    const text = await row.textContent();
    check(nodes.some((n) => text.includes(n)), `a group member owns ${vip}: ${text}`);
    await page.getByTestId("swimlanes").waitFor();
    await clean("the owners page");
    await shot("owners");
  });

  await step("a VIP's page: the owner next to the MACs seen answering", async () => {
    await page.goto(`${base}/vips/${vip}`);
    await page.getByTestId("owner").filter({ hasText: "Node" }).waitFor();
    check((await page.getByTestId("split-brain").count()) === 0, "no split-brain alarm after a clean failover");
    await clean("the VIP page");
    await shot("vip");
  });

  for (const [path, name, ready] of [["/events", "events", "row"], ["/pending", "pending", "no-pending"], ["/hypervisor", "hypervisor", "grants"]]) {
    await step(`the ${name} page`, async () => {
      await page.goto(`${base}${path}`);
      await page.getByTestId("live").filter({ hasText: "Live" }).waitFor();
      await page.getByTestId(ready).first().waitFor();
      await clean(`the ${name} page`);
      await shot(name);
    });
  }

  await step("dark theme, and the palette (Ctrl+K)", async () => {
    await page.goto(`${base}/pools/blue`);
    await page.getByTestId("address-map").waitFor();
    await page.getByRole("combobox", { name: "Theme" }).selectOption("dark");
    check((await page.evaluate(() => document.documentElement.dataset.theme)) === "dark", "the theme is dark");
    await clean("the pool page in the dark theme");
    await shot("pool-dark");
    await page.keyboard.press("Control+k");
    await page.getByRole("dialog", { name: "Go to" }).waitFor();
    await page.keyboard.type("alloc");
    await page.keyboard.press("Enter");
    await page.waitForURL(`${base}/allocations`);
    await page.getByRole("combobox", { name: "Theme" }).selectOption("light");
  });

  await step("a viewer gets the read-only look", async () => {
    const token = JSON.parse(cli("-o", "json", "token", "create", "e2e-viewer", "--role", "viewer")).token;
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const p = await ctx.newPage();
    await p.goto(`${base}/login`);
    await p.locator("#token").fill(token);
    await p.getByRole("button", { name: "Log in" }).click();
    await p.getByTestId("readonly").waitFor();
    check((await p.getByRole("button", { name: "New pool" }).count()) === 0, "a viewer has no New pool button");
    await ctx.close();
  });

  check(consoleErrors.length === 0, `no errors in the browser console: ${consoleErrors.join("; ")}`);
} catch (e) {
  failed = true;
  console.error(String(e?.stack ?? e));
  await page.screenshot({ path: `${out}/failure.png` }).catch(() => {});
}
await browser.close();
console.log(`screenshots in ${out}: ${shots.join(", ")}`);
process.exit(failed ? 1 : 0);
