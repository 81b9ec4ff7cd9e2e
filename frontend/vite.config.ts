/// <reference types="vitest/config" />
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

// The backend serves the build from frontend/dist at "/"; `npm run dev` proxies the API to it.
const backend = process.env.VITE_API_BASE_URL || 'http://127.0.0.1:8000'

export default defineConfig({
  plugins: [vue()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 2000,
  },
  server: {
    proxy: {
      '/api': { target: backend, changeOrigin: true, ws: true },
    },
  },
  test: {
    environment: 'jsdom',
    include: ['tests/**/*.test.ts'],
    // One jsdom and one module graph per worker, not per file: 9 s of CPU instead of 50 s (168 s of the test
    // run's wall time on the loaded CI machine). The files share no state that a test relies on: each resets
    // what it sets (its stores, storage, fake sockets and timers), and they pass in any order
    // (`npx vitest run --sequence.shuffle`).
    isolate: false,
    // vitest's default of 5 s per test: a form test that fills its fields through user events took 8.4 s on a
    // 2-core machine running the whole suite beside it (2026-12-07), where it takes under 1 s alone.
    testTimeout: 30_000,
  },
})
