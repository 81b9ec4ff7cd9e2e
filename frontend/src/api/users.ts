/** Platform users over the typed client (superusers only): list, create, reset a password, (de)activate. */
import { api, unwrap } from './client'
import type { Page, PageQuery } from './paging'
import type { components } from './schema'

type S = components['schemas']

export type User = S['UserRead']
export type NewUser = S['UserCreate']
export type UserChanges = S['UserUpdate']

/** One page of the platform's users, oldest first; `q`: the email or name contains it. */
export function pageUsers(q: string | null, page: PageQuery): Promise<Page<User>> {
  return unwrap(api.GET('/api/v1/users', { params: { query: { q: q ?? undefined, ...page } } }))
}

export function createUser(body: NewUser): Promise<User> {
  return unwrap(api.POST('/api/v1/users', { body }))
}

/** Name, password (ends every session of that user), active flag, superuser flag. */
export function updateUser(id: string, body: UserChanges): Promise<User> {
  return unwrap(api.PATCH('/api/v1/users/{user_id}', { params: { path: { user_id: id } }, body }))
}
