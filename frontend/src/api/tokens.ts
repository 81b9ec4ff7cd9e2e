/**
 * The session's token pair, kept in localStorage so a reload stays logged in. Rotating it is the
 * client's job (`refreshSession` in client.ts); this module only stores it and tells who listens.
 */
import type { components } from './schema'

const ACCESS = 'windflow.access'
const REFRESH = 'windflow.refresh'

const listeners = new Set<(access: string | null) => void>()

export type TokenPair = components['schemas']['TokenPair']

export const tokens = {
  access(): string | null {
    return localStorage.getItem(ACCESS)
  },
  refreshToken(): string | null {
    return localStorage.getItem(REFRESH)
  },
  set(pair: Pick<TokenPair, 'access_token' | 'refresh_token'>): void {
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
}
