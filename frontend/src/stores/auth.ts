/** Who is logged in, their memberships and the organisation being looked at. */
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import * as authApi from '../api/auth'
import type { Me, SetupForm } from '../api/auth'
import { tokens } from '../api/tokens'
import { can as roleCan, isRole, type Capability, type Role } from '../constants/roles'

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
      me.value = await authApi.getMe()
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
    tokens.set(await authApi.login(email, password))
    await loadMe()
  }

  async function setup(form: SetupForm): Promise<void> {
    tokens.set(await authApi.setup(form))
    await loadMe()
  }

  async function logout(): Promise<void> {
    const refresh = tokens.refreshToken()
    try {
      if (tokens.access()) await authApi.logout(refresh)
    } catch {
      /* the tokens are dropped locally whatever the server says */
    }
    me.value = null
    tokens.clear()
  }

  /** Self-service password change: the API ends every other session and returns a new pair for this one. */
  async function changePassword(currentPassword: string, newPassword: string): Promise<void> {
    tokens.set(await authApi.changePassword(currentPassword, newPassword))
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
