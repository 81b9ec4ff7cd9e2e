/** Who is logged in, their memberships and the organisation being looked at. */
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { api, rawJson, unwrap } from '../api/client'
import { apiBaseUrl } from '../api/config'
import { toApiError } from '../api/errors'
import { tokens, type TokenPair } from '../api/tokens'
import type { components } from '../api/schema'
import { can as roleCan, isRole, type Capability, type Role } from '../constants/roles'

export type Me = components['schemas']['MeRead']
const ORG_KEY = 'windflow.organization'

export const useAuthStore = defineStore('auth', () => {
  const me = ref<Me | null>(null)
  const organizationId = ref<string | null>(localStorage.getItem(ORG_KEY))
  const loading = ref(false)

  const loggedIn = computed(() => me.value !== null)
  const memberships = computed(() => me.value?.memberships ?? [])
  const organization = computed(() => memberships.value.find((m) => m.organization_id === organizationId.value) ?? null)
  const role = computed<Role | null>(() => {
    const r = organization.value?.role
    return isRole(r) ? r : null
  })
  const superuser = computed(() => me.value?.is_superuser ?? false)

  function can(capability: Capability): boolean {
    return roleCan(role.value, capability, superuser.value)
  }

  function selectOrganization(id: string): void {
    organizationId.value = id
    localStorage.setItem(ORG_KEY, id)
  }

  async function loadMe(): Promise<Me | null> {
    if (!tokens.access() && !tokens.refreshToken()) return null
    loading.value = true
    try {
      me.value = await unwrap(api.GET('/api/v1/auth/me'))
      const ids = me.value.memberships.map((m) => m.organization_id)
      if (!organizationId.value || !ids.includes(organizationId.value)) {
        const fallback = me.value.default_organization_id ?? ids[0] ?? null
        if (fallback) selectOrganization(fallback)
      }
      return me.value
    } catch {
      me.value = null
      return null
    } finally {
      loading.value = false
    }
  }

  async function login(email: string, password: string): Promise<void> {
    const body = new URLSearchParams({ username: email, password })
    const response = await fetch(`${apiBaseUrl()}/api/v1/auth/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body,
    })
    const data = await response.json().catch(() => ({}))
    if (!response.ok) throw toApiError(response.status, data)
    tokens.set(data as TokenPair)
    await loadMe()
  }

  async function setup(payload: {
    email: string
    password: string
    organization_name: string
    full_name?: string
  }): Promise<void> {
    const pair = await rawJson<TokenPair>('POST', '/api/v1/auth/setup', payload)
    tokens.set(pair)
    await loadMe()
  }

  async function logout(): Promise<void> {
    const refresh = tokens.refreshToken()
    try {
      if (tokens.access())
        await rawJson('POST', '/api/v1/auth/logout', refresh ? { refresh_token: refresh } : undefined)
    } catch {
      /* the tokens are dropped locally whatever the server says */
    }
    me.value = null
    tokens.clear()
  }

  /** Self-service password change: the API ends every other session and returns a new pair for this one. */
  async function changePassword(currentPassword: string, newPassword: string): Promise<void> {
    const pair = await unwrap(
      api.POST('/api/v1/auth/password', { body: { current_password: currentPassword, new_password: newPassword } }),
    )
    tokens.set(pair as TokenPair)
  }

  function reset(): void {
    me.value = null
  }

  return {
    me,
    organizationId,
    organization,
    memberships,
    role,
    superuser,
    loggedIn,
    loading,
    can,
    selectOrganization,
    loadMe,
    login,
    setup,
    logout,
    changePassword,
    reset,
  }
})
