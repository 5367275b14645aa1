import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// The build is embedded in the vipvisor binary (src-core/server/build.rs) and served by
// `vipvisor serve`; `npm run dev` proxies the API to a running server.
export default defineConfig({
  plugins: [svelte()],
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", sourcemap: false },
  server: { proxy: { "/api": process.env.VIPVISOR_URL ?? "http://127.0.0.1:8470" } },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
