/**
 * The token pair, kept in localStorage so a reload stays logged in. `refresh()` rotates it once for
 * every caller waiting at the same time (the server revokes a refresh token replayed twice).
 */
import { apiBaseUrl } from './config'

const ACCESS = 'windflow.access'
const REFRESH = 'windflow.refresh'

let inflight: Promise<string | null> | null = null
const listeners = new Set<(access: string | null) => void>()

export interface TokenPair {
  access_token: string
  refresh_token: string
}

export const tokens = {
  access(): string | null {
    return localStorage.getItem(ACCESS)
  },
  refreshToken(): string | null {
    return localStorage.getItem(REFRESH)
  },
  set(pair: TokenPair): void {
    localStorage.setItem(ACCESS, pair.access_token)
    localStorage.setItem(REFRESH, pair.refresh_token)
    listeners.forEach((l) => l(pair.access_token))
  },
  clear(): void {
    localStorage.removeItem(ACCESS)
    localStorage.removeItem(REFRESH)
    listeners.forEach((l) => l(null))
  },
  onChange(listener: (access: string | null) => void): () => void {
    listeners.add(listener)
    return () => listeners.delete(listener)
  },
  /** A new access token, or null (then the session is over and the tokens are cleared). */
  refresh(): Promise<string | null> {
    if (inflight) return inflight
    const refreshToken = tokens.refreshToken()
    if (!refreshToken) return Promise.resolve(null)
    inflight = (async () => {
      try {
        const response = await fetch(`${apiBaseUrl()}/api/v1/auth/refresh`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ refresh_token: refreshToken }),
        })
        if (!response.ok) {
          if (response.status === 401 || response.status === 403) tokens.clear()
          return null
        }
        const pair = (await response.json()) as TokenPair
        tokens.set(pair)
        return pair.access_token
      } catch {
        return null
      } finally {
        inflight = null
      }
    })()
    return inflight
  },
}
