// The UI benchmark's browser side (bench/ui.sh): page loads of /allocations on two stores
// and a scroll of the virtualised table, in Debian's Chromium.
import { launch } from "./lib.mjs";

const runs = Number(process.env.RUNS ?? 5);
const stores = [
  { name: "10,000 allocations", url: process.env.BIG_URL, token: process.env.BIG_TOKEN, n: 10000 },
  { name: "100 allocations", url: process.env.SMALL_URL, token: process.env.SMALL_TOKEN, n: 100 },
];
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
};
const browser = await launch();
const results = {};
for (const st of stores) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await ctx.addInitScript((t) => sessionStorage.setItem("vipvisor.token", t), st.token);
  const page = await ctx.newPage();
  const fcp = [];
  const data = [];
  for (let i = 0; i < runs; i++) {
    await page.goto(`${st.url}/allocations`, { waitUntil: "commit" });
    await page.getByTestId("count").filter({ hasText: `${st.n} of ${st.n} allocations` }).waitFor({ timeout: 30_000 });
    const t = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const paint = performance.getEntriesByName("first-contentful-paint")[0];
      return { fcp: paint ? paint.startTime : NaN, now: performance.now(), start: nav.startTime };
    });
    fcp.push(t.fcp);
    data.push(t.now - t.start);
  }
  results[st.name] = { fcp, data };
  console.log(`${st.name}: first contentful paint p50 ${pct(fcp, 0.5).toFixed(0)} ms (max ${Math.max(...fcp).toFixed(0)}), time to data p50 ${pct(data, 0.5).toFixed(0)} ms (max ${Math.max(...data).toFixed(0)}) over ${runs} loads`);
  if (st.n === 10000) {
    // Scroll the table through its rows, one step per frame, and time the frames.
    // Two speeds: a wheel (120 px a frame) and a fling (1,100 px a frame: every visible row
    // replaced each frame). `script` is the time spent in the page's own code per frame.
    for (const step of [120, 1100]) {
      const frames = await page.evaluate(async (step) => {
        const el = document.querySelector("[data-testid=table-scroll]");
        el.scrollTop = 0;
        await new Promise((r) => setTimeout(r, 200));
        const out = [];
        const script = [];
        let last = performance.now();
        for (let i = 0; i < 300; i++) {
          const t = performance.now();
          el.scrollTop += step;
          el.dispatchEvent(new Event("scroll"));
          script.push(performance.now() - t);
          await new Promise((r) => requestAnimationFrame(r));
          const now = performance.now();
          out.push(now - last);
          last = now;
        }
        return { out, script, rows: document.querySelectorAll("[data-testid=row]").length, top: el.scrollTop };
      }, step);
      const f = frames.out.slice(1);
      console.log(`scroll ${step} px/frame: ${f.length} frames to ${frames.top} px of 10,000 rows (${frames.rows} rows in the DOM): frame time p50 ${pct(f, 0.5).toFixed(1)} ms, p99 ${pct(f, 0.99).toFixed(1)} ms, max ${Math.max(...f).toFixed(1)} ms, ${f.filter((x) => x > 25).length} over 25 ms (a dropped frame at 60 Hz)`);
    }
  }
  await ctx.close();
}
const big = results["10,000 allocations"];
const small = results["100 allocations"];
console.log(`ratio 10,000 / 100: time to data ${(pct(big.data, 0.5) / pct(small.data, 0.5)).toFixed(2)}×, first paint ${(pct(big.fcp, 0.5) / pct(small.fcp, 0.5)).toFixed(2)}×`);
await browser.close();
