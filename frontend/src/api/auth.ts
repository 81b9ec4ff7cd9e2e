/** Sessions and the caller's account over the typed client: setup, login, logout, me, password. */
import { api, unwrap } from './client'
import type { components } from './schema'
import type { TokenPair } from './tokens'

type S = components['schemas']

export type Me = S['MeRead']
export type SetupForm = S['SetupRequest']

/** Whether the instance still needs its first user (the setup page). */
export async function setupNeeded(): Promise<boolean> {
  return (await unwrap(api.GET('/api/v1/auth/setup'))).needed
}

/** Creates the first user and organisation; the answer logs them in. */
export function setup(form: SetupForm): Promise<TokenPair> {
  return unwrap(api.POST('/api/v1/auth/setup', { body: form }))
}

/** The OAuth2 password form (`application/x-www-form-urlencoded`, username = email). */
export function login(email: string, password: string): Promise<TokenPair> {
  return unwrap(
    api.POST('/api/v1/auth/login', {
      body: { username: email, password, scope: '' },
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    }),
  )
}

/** Ends this session on the server (its refresh token too, when given). */
export async function logout(refreshToken: string | null): Promise<void> {
  await unwrap(api.POST('/api/v1/auth/logout', refreshToken ? { body: { refresh_token: refreshToken } } : {}))
}

export function getMe(): Promise<Me> {
  return unwrap(api.GET('/api/v1/auth/me'))
}

/** Self-service password change: the server ends every other session and returns a new pair for this one. */
export function changePassword(currentPassword: string, newPassword: string): Promise<TokenPair> {
  return unwrap(
    api.POST('/api/v1/auth/password', { body: { current_password: currentPassword, new_password: newPassword } }),
  )
}
