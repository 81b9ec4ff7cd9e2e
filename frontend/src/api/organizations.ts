/** An organisation's members over the typed client. */
import { api, unwrap } from './client'
import { fetchAll } from './paging'
import type { components } from './schema'
import type { Role } from '../constants/roles'

export type Member = components['schemas']['MemberRead']

export function listMembers(organizationId: string): Promise<Member[]> {
  return fetchAll((page) =>
    unwrap(
      api.GET('/api/v1/organizations/{organization_id}/members', {
        params: { path: { organization_id: organizationId }, query: page },
      }),
    ),
  )
}

/** Adds an existing user (by email) to the organisation. */
export function addMember(organizationId: string, email: string, role: Role): Promise<Member> {
  return unwrap(
    api.POST('/api/v1/organizations/{organization_id}/members', {
      params: { path: { organization_id: organizationId } },
      body: { email, role },
    }),
  )
}

export function changeMemberRole(organizationId: string, userId: string, role: Role): Promise<Member> {
  return unwrap(
    api.PATCH('/api/v1/organizations/{organization_id}/members/{user_id}', {
      params: { path: { organization_id: organizationId, user_id: userId } },
      body: { role },
    }),
  )
}

export async function removeMember(organizationId: string, userId: string): Promise<void> {
  await unwrap(
    api.DELETE('/api/v1/organizations/{organization_id}/members/{user_id}', {
      params: { path: { organization_id: organizationId, user_id: userId } },
    }),
  )
}
