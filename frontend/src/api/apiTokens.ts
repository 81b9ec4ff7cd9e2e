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

/** What a token may do (always within its owner's role): read, deploy, or the owner's rights. */
export type TokenScope = ApiToken['scopes'][number]

export interface NewApiToken {
  name: string
  expiresInDays: number | null
  scopes: TokenScope[]
  /** the one organisation it may reach (null: all the owner's) */
  organizationId: string | null
  /** with the deploy scope and an organisation: the stacks it may deploy (null: all) */
  stackIds: string[] | null
}

export function createApiToken(token: NewApiToken): Promise<CreatedApiToken> {
  const body = {
    name: token.name,
    expires_in_days: token.expiresInDays,
    scopes: token.scopes,
    organization_id: token.organizationId,
    stack_ids: token.stackIds,
  }
  return unwrap(api.POST('/api/v1/tokens', { body }))
}

export async function revokeApiToken(id: string): Promise<void> {
  await unwrap(api.DELETE('/api/v1/tokens/{token_id}', { params: { path: { token_id: id } } }))
}
