/** Stacks over the typed client: the organisation's stacks, one stack, create/update/delete, rendering. */
import { api, unwrap } from './client'
import { fetchAll, type Page, type PageQuery } from './paging'
import type { components } from './schema'

type S = components['schemas']

export type Stack = S['StackRead']
export type NewStack = S['StackCreate']
export type StackChanges = S['StackUpdate']

/** Every stack of an organisation. */
export function listStacks(organizationId: string): Promise<Stack[]> {
  return fetchAll((page) =>
    unwrap(api.GET('/api/v1/stacks', { params: { query: { organization_id: organizationId, ...page } } })),
  )
}

export interface StackFilters {
  q: string | null
  source: 'catalog' | 'user' | null
}

/** One page of an organisation's stacks, filtered. */
export function pageStacks(organizationId: string, filters: StackFilters, page: PageQuery): Promise<Page<Stack>> {
  const query = {
    organization_id: organizationId,
    q: filters.q ?? undefined,
    source: filters.source ?? undefined,
    ...page,
  }
  return unwrap(api.GET('/api/v1/stacks', { params: { query } }))
}

export function getStack(id: string): Promise<Stack> {
  return unwrap(api.GET('/api/v1/stacks/{stack_id}', { params: { path: { stack_id: id } } }))
}

export function createStack(body: NewStack): Promise<Stack> {
  return unwrap(api.POST('/api/v1/stacks', { body }))
}

export function updateStack(id: string, body: StackChanges): Promise<Stack> {
  return unwrap(api.PATCH('/api/v1/stacks/{stack_id}', { params: { path: { stack_id: id } }, body }))
}

export async function deleteStack(id: string): Promise<void> {
  await unwrap(api.DELETE('/api/v1/stacks/{stack_id}', { params: { path: { stack_id: id } } }))
}

/** The compose document the stack renders to with these variables (a preview; nothing is stored). */
export async function renderStack(id: string, variables: Record<string, unknown>): Promise<string> {
  const res = await unwrap(
    api.POST('/api/v1/stacks/{stack_id}/render', { params: { path: { stack_id: id } }, body: { variables } }),
  )
  return res.compose
}
