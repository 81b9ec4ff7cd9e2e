/** The paging envelope every listing shares, and reading a listing to its end. */
import type { components, operations } from './schema'

/**
 * A page of a listing: `DeploymentPage`, `StackPage`, `TargetPage`, `MemberPage`, `ApiTokenPage`, ... of the
 * generated schema differ only in their items. `next_cursor` present: page by cursor; absent: by offset
 * against `total`.
 */
export type Page<T> = Omit<components['schemas']['DeploymentPage'], 'items'> & { items: T[] }

/** offset / limit / cursor, as every listing takes them. */
export type PageQuery = Pick<
  NonNullable<operations['list_deployments_api_v1_deployments_get']['parameters']['query']>,
  'offset' | 'limit' | 'cursor'
>

/** Every item of a listing, following either paging shape (offset/total or next_cursor). */
export async function fetchAll<T>(page: (query: PageQuery) => Promise<Page<T>>, limit = 100): Promise<T[]> {
  const all: T[] = []
  let cursor: string | null = null
  for (let i = 0; i < 50; i++) {
    const query: PageQuery = { limit }
    if (cursor) query.cursor = cursor
    else if (all.length) query.offset = all.length
    const result: Page<T> = await page(query)
    all.push(...result.items)
    if ('next_cursor' in result) {
      cursor = result.next_cursor ?? null
      if (!cursor) break
    } else if (!result.items.length || all.length >= (result.total ?? 0)) break
  }
  return all
}
