/**
 * Where the API lives. Empty VITE_API_BASE_URL: the origin that served the UI (the backend itself).
 * Under `npm run dev` the variable is the dev server's proxy target (vite.config.ts) and the browser
 * talks to its own origin, so no cross-origin request is made.
 */
export function apiBaseUrl(): string {
  if (import.meta.env.DEV) return window.location.origin
  const configured = (import.meta.env.VITE_API_BASE_URL || '').trim().replace(/\/+$/, '')
  return configured || window.location.origin
}

/**
 * ws(s):// URL of the real-time endpoint: the one the server names in the page
 * (`<meta name="windflow-websocket-url">`, WS_PUBLIC_URL: its WebSocket listener, reached directly), else
 * `/api/v1/ws` of the API base URL (behind the proxy, which routes it to the listener).
 */
export function wsUrl(): string {
  const announced = document.querySelector<HTMLMetaElement>('meta[name="windflow-websocket-url"]')?.content.trim()
  if (announced && /^wss?:\/\/\S+$/.test(announced)) return announced
  const base = new URL(apiBaseUrl())
  base.protocol = base.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${base.origin.replace(/^http/, 'ws')}/api/v1/ws`
}

export function flag(value: string | undefined): boolean {
  return value === 'true' || value === '1'
}
