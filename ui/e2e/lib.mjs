// Shared by the browser test (run.mjs) and the UI benchmark (perf.mjs): Debian's Chromium
// through playwright-core (no downloaded browser), axe-core, screenshots.
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // As root, without a sandbox; no background traffic: this machine's network is closed.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** Runs axe-core on the page; returns the violations as text lines (empty: none). */
export async function axe(page) {
  // Evaluated through the DevTools protocol, which the page's CSP (no inline scripts) does not apply to.
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(axeSource);
  const v = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((x) => `${x.id} (${x.impact}): ${x.help} — ${x.nodes.slice(0, 3).map((n) => n.target.join(" ")).join("; ")}`);
  });
  return v;
}

export function outDir() {
  const d = process.env.E2E_OUT ?? new URL("./out", import.meta.url).pathname;
  mkdirSync(d, { recursive: true });
  return d;
}

/** Fails the run with `what` unless `cond`. */
export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}
