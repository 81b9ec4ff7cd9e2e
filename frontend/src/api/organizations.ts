/** Organisations and their members over the typed client. */
import { api, unwrap } from './client'
import { fetchAll, type Page, type PageQuery } from './paging'
import type { components } from './schema'
import type { Role } from '../constants/roles'

export type Member = components['schemas']['MemberRead']
export type Organization = components['schemas']['OrganizationRead']

export interface MemberFilters {
  q: string | null
  role: Role | null
}

/** One page of an organisation's members, filtered. */
export function pageMembers(organizationId: string, filters: MemberFilters, page: PageQuery): Promise<Page<Member>> {
  return unwrap(
    api.GET('/api/v1/organizations/{organization_id}/members', {
      params: {
        path: { organization_id: organizationId },
        query: { q: filters.q ?? undefined, role: filters.role ?? undefined, ...page },
      },
    }),
  )
}

/** One page of the organisations you belong to (every one for a superuser). */
export function pageOrganizations(page: PageQuery): Promise<Page<Organization>> {
  return unwrap(api.GET('/api/v1/organizations', { params: { query: page } }))
}

/** A new organisation (superusers); its creator becomes its owner. */
export function createOrganization(name: string, description: string | null): Promise<Organization> {
  return unwrap(api.POST('/api/v1/organizations', { body: { name, description } }))
}

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
