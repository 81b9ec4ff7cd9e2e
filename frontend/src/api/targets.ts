/** Targets over the typed client: the organisation's targets, create/edit/delete, connection test, policy rules. */
import { api, unwrap } from './client'
import { fetchAll, type Page, type PageQuery } from './paging'
import type { components } from './schema'

type S = components['schemas']

export type Target = S['TargetRead']
export type NewTarget = S['TargetCreate']
/** Fields to change (a credential sent as null is removed; one left out is kept). */
export type TargetChanges = S['TargetUpdate']
export type ComposePolicy = S['ComposePolicy']
export type TargetType = S['TargetType']
export type TestResult = S['TargetTestResult']
/** A compose key every target refuses whatever its policy (`*`: any name), with what to write instead. */
export type RefusedKey = S['RefusedKey']

/** Every target of an organisation. */
export function listTargets(organizationId: string): Promise<Target[]> {
  return fetchAll((page) =>
    unwrap(api.GET('/api/v1/targets', { params: { query: { organization_id: organizationId, ...page } } })),
  )
}

export interface TargetFilters {
  q: string | null
  type: TargetType | null
}

/** One page of an organisation's targets, filtered. */
export function pageTargets(organizationId: string, filters: TargetFilters, page: PageQuery): Promise<Page<Target>> {
  const query = { organization_id: organizationId, q: filters.q ?? undefined, type: filters.type ?? undefined, ...page }
  return unwrap(api.GET('/api/v1/targets', { params: { query } }))
}

export function getTarget(id: string): Promise<Target> {
  return unwrap(api.GET('/api/v1/targets/{target_id}', { params: { path: { target_id: id } } }))
}

export function updateTarget(id: string, body: TargetChanges): Promise<Target> {
  return unwrap(api.PATCH('/api/v1/targets/{target_id}', { params: { path: { target_id: id } }, body }))
}

export function createTarget(body: NewTarget): Promise<Target> {
  return unwrap(api.POST('/api/v1/targets', { body }))
}

export async function deleteTarget(id: string): Promise<void> {
  await unwrap(api.DELETE('/api/v1/targets/{target_id}', { params: { path: { target_id: id } } }))
}

/** Connects to the target's engine: its version, or a failure category with a fixed message (never throws for those). */
export function testTarget(id: string): Promise<TestResult> {
  return unwrap(api.POST('/api/v1/targets/{target_id}/test', { params: { path: { target_id: id } } }))
}

/** The keys every target refuses (the compose policy's always-refused layer). */
export async function alwaysRefused(): Promise<RefusedKey[]> {
  return (await unwrap(api.GET('/api/v1/targets/policy-rules'))).always_refused
}
