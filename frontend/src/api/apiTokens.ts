/** The caller's personal API tokens over the typed client (not the session's token pair: see tokens.ts). */
import { api, unwrap } from './client'
import { fetchAll, type Page, type PageQuery } from './paging'
import type { components } from './schema'

export type ApiToken = components['schemas']['ApiTokenRead']
/** A token just created: the only time its secret is shown. */
export type CreatedApiToken = components['schemas']['ApiTokenCreated']

export function listApiTokens(): Promise<ApiToken[]> {
  return fetchAll((page) => unwrap(api.GET('/api/v1/tokens', { params: { query: page } })))
}

export interface ApiTokenFilters {
  q: string | null
  /** true: usable ones; false: revoked or expired */
  active: boolean | null
}

/** One page of your tokens, filtered. */
export function pageApiTokens(filters: ApiTokenFilters, page: PageQuery): Promise<Page<ApiToken>> {
  const query = { q: filters.q ?? undefined, active: filters.active ?? undefined, ...page }
  return unwrap(api.GET('/api/v1/tokens', { params: { query } }))
}

export function createApiToken(name: string, expiresInDays: number | null): Promise<CreatedApiToken> {
  return unwrap(api.POST('/api/v1/tokens', { body: { name, expires_in_days: expiresInDays } }))
}

export async function revokeApiToken(id: string): Promise<void> {
  await unwrap(api.DELETE('/api/v1/tokens/{token_id}', { params: { path: { token_id: id } } }))
}
