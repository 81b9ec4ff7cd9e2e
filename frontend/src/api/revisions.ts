/**
 * A deployment's revisions over the typed client: the listing (newest first, by cursor), one revision, a new
 * revision (changed values, or the stack's latest version), a rollback to an older one, and the diff of two.
 */
import { api, unwrap } from './client'
import type { Page, PageQuery } from './paging'
import type { components } from './schema'

type S = components['schemas']

export type Revision = S['RevisionRead']
export type RevisionImage = S['RevisionImage']
export type RevisionReason = Revision['reason']
export type RevisionOutcome = Revision['outcome']
export type NewRevision = S['RevisionCreate']

/** One page of a deployment's revisions, newest first. */
export function listRevisions(deploymentId: string, page: PageQuery = {}): Promise<Page<Revision>> {
  return unwrap(
    api.GET('/api/v1/deployments/{deployment_id}/revisions', {
      params: { path: { deployment_id: deploymentId }, query: page },
    }),
  )
}

export function getRevision(deploymentId: string, revision: number): Promise<Revision> {
  return unwrap(
    api.GET('/api/v1/deployments/{deployment_id}/revisions/{number}', {
      params: { path: { deployment_id: deploymentId, number: revision } },
    }),
  )
}

/** Revision N+1 (values merged over the current ones, or the stack's latest version), rolled out at once. */
export function createRevision(deploymentId: string, body: NewRevision): Promise<Revision> {
  return unwrap(
    api.POST('/api/v1/deployments/{deployment_id}/revisions', {
      params: { path: { deployment_id: deploymentId } },
      body,
    }),
  )
}

/** A new revision from revision `revision`'s record (its values, its images pinned by digest), rolled out. */
export function rollback(deploymentId: string, revision: number): Promise<Revision> {
  return unwrap(
    api.POST('/api/v1/deployments/{deployment_id}/rollback', {
      params: { path: { deployment_id: deploymentId } },
      body: { revision },
    }),
  )
}

/** The unified diff from revision `a` to revision `b`: the rendered compose, then the values (secrets ***). */
export async function diffRevisions(deploymentId: string, a: number, b: number): Promise<string> {
  const res = await unwrap(
    api.GET('/api/v1/deployments/{deployment_id}/revisions/{a}/diff/{b}', {
      params: { path: { deployment_id: deploymentId, a, b } },
    }),
  )
  return res.diff
}
