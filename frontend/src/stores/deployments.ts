/**
 * Deployments of the current organisation: `byId` plus the ordered ids of the listing, kept live by
 * the organisation subscription (one handler per event type). Pages either by `next_cursor` (when
 * the API returns one) or by offset against `total`.
 */
import { defineStore } from 'pinia'
import { computed, ref, shallowRef } from 'vue'
import { rawJson } from '../api/client'
import { errorText } from '../api/errors'
import { isStatus, type Deployment, type DeploymentAction, type DeploymentStatus } from '../constants/deployments'
import type { ServerMessage } from '../realtime/socket'
import { getSocket } from './realtime'

export interface DeploymentFilters {
  status: DeploymentStatus[]
  stack_id: string | null
  target_id: string | null
}

interface Page {
  items: Deployment[]
  total?: number
  next_cursor?: string | null
}

export const PAGE_SIZE = 25

export function listQuery(
  orgId: string | null,
  filters: DeploymentFilters,
  extra: Record<string, string> = {},
): string {
  const params = new URLSearchParams()
  if (orgId) params.set('organization_id', orgId)
  for (const s of filters.status) params.append('status', s)
  if (filters.stack_id) params.set('stack_id', filters.stack_id)
  if (filters.target_id) params.set('target_id', filters.target_id)
  params.set('limit', String(PAGE_SIZE))
  for (const [k, v] of Object.entries(extra)) params.set(k, v)
  return params.toString()
}

export function matchesFilters(d: Deployment, f: DeploymentFilters): boolean {
  if (f.status.length && !f.status.includes(d.status)) return false
  if (f.stack_id && d.stack_id !== f.stack_id) return false
  if (f.target_id && d.target_id !== f.target_id) return false
  return true
}

export const useDeploymentsStore = defineStore('deployments', () => {
  const byId = ref<Record<string, Deployment>>({})
  const order = shallowRef<string[]>([])
  const total = ref(0)
  const nextCursor = ref<string | null>(null)
  const usesCursor = ref(false)
  const loading = ref(false)
  const error = ref<string | null>(null)
  const organizationId = ref<string | null>(null)
  const filters = ref<DeploymentFilters>({ status: [], stack_id: null, target_id: null })
  let unsubscribe: (() => void) | null = null
  let stopListening: (() => void) | null = null
  let stopReconnect: (() => void) | null = null

  const items = computed(() => order.value.map((id) => byId.value[id]).filter((d): d is Deployment => !!d))
  const hasMore = computed(() => (usesCursor.value ? !!nextCursor.value : order.value.length < total.value))

  function upsert(d: Deployment): void {
    byId.value[d.id] = { ...(byId.value[d.id] ?? {}), ...d }
  }

  async function load(orgId: string | null, f: DeploymentFilters): Promise<void> {
    organizationId.value = orgId
    filters.value = f
    loading.value = true
    error.value = null
    try {
      const page = await rawJson<Page>('GET', `/api/v1/deployments?${listQuery(orgId, f)}`)
      byId.value = {}
      page.items.forEach(upsert)
      order.value = page.items.map((d) => d.id)
      applyPaging(page)
    } catch (err) {
      error.value = errorText(err)
    } finally {
      loading.value = false
    }
    watchOrganization(orgId)
  }

  async function loadMore(): Promise<void> {
    if (!hasMore.value || loading.value) return
    loading.value = true
    try {
      const extra: Record<string, string> =
        usesCursor.value && nextCursor.value ? { cursor: nextCursor.value } : { offset: String(order.value.length) }
      const page = await rawJson<Page>(
        'GET',
        `/api/v1/deployments?${listQuery(organizationId.value, filters.value, extra)}`,
      )
      page.items.forEach(upsert)
      const known = new Set(order.value)
      order.value = [...order.value, ...page.items.map((d) => d.id).filter((id) => !known.has(id))]
      applyPaging(page)
    } catch (err) {
      error.value = errorText(err)
    } finally {
      loading.value = false
    }
  }

  function applyPaging(page: Page): void {
    usesCursor.value = 'next_cursor' in page
    nextCursor.value = page.next_cursor ?? null
    total.value = typeof page.total === 'number' ? page.total : order.value.length + (page.next_cursor ? 1 : 0)
  }

  async function refreshOne(id: string): Promise<Deployment | null> {
    try {
      const d = await rawJson<Deployment>('GET', `/api/v1/deployments/${encodeURIComponent(id)}`)
      upsert(d)
      return d
    } catch {
      return null
    }
  }

  // --- live updates: one handler per event type ---------------------------------------------------
  const handlers: Record<string, (m: ServerMessage) => void> = {
    DEPLOYMENT_STATUS_CHANGED(m) {
      const id = m.deployment_id!
      const status = m.data?.new_status
      const known = byId.value[id]
      if (known && isStatus(status)) {
        known.status = status
        if ('error_message' in (m.data ?? {})) known.error_message = (m.data!.error_message as string | null) ?? null
      }
      // attempt, timestamps and progress come with the row; one read per status change, not polling.
      if (known || !order.value.includes(id)) void refreshOne(id).then((d) => d && !known && insertIfMatching(d))
    },
    DEPLOYMENT_PROGRESS(m) {
      const known = byId.value[m.deployment_id!]
      if (!known || !m.data) return
      if (typeof m.data.progress === 'number') known.progress = m.data.progress
      if (typeof m.data.current_step === 'number') known.current_step = m.data.current_step
      if (typeof m.data.total_steps === 'number') known.total_steps = m.data.total_steps
      if (typeof m.data.step_name === 'string') known.step_name = m.data.step_name
    },
    DEPLOYMENT_CREATED(m) {
      const d = m.data as unknown as Deployment | undefined
      if (d && typeof d.id === 'string') insertIfMatching(d)
      else if (m.deployment_id) void refreshOne(m.deployment_id).then((r) => r && insertIfMatching(r))
    },
    DEPLOYMENT_DELETED(m) {
      remove(m.deployment_id!)
    },
  }

  function insertIfMatching(d: Deployment): void {
    if (organizationId.value && d.organization_id !== organizationId.value) return
    if (!matchesFilters(d, filters.value)) return
    upsert(d)
    if (!order.value.includes(d.id)) {
      order.value = [d.id, ...order.value]
      total.value += 1
    }
  }

  function remove(id: string): void {
    if (!(id in byId.value)) return
    delete byId.value[id]
    if (order.value.includes(id)) {
      order.value = order.value.filter((x) => x !== id)
      total.value = Math.max(0, total.value - 1)
    }
  }

  function handle(message: ServerMessage): void {
    if (!message.deployment_id) return
    if (organizationId.value && message.organization_id && message.organization_id !== organizationId.value) return
    handlers[message.type]?.(message)
  }

  /** Keep byId live for `orgId` (the list does this on load; a detail page calls it directly). */
  function watchOrganization(orgId: string | null): void {
    organizationId.value = orgId
    unsubscribe?.()
    unsubscribe = null
    const socket = getSocket()
    if (!stopListening) stopListening = socket.onMessage(handle)
    if (!stopReconnect) stopReconnect = socket.onReconnect(() => void load(organizationId.value, filters.value))
    if (orgId) {
      unsubscribe = socket.subscribe(`org:${orgId}`, () => ({ type: 'subscribe', organization_id: orgId }), {
        type: 'unsubscribe',
        organization_id: orgId,
      })
    }
    socket.connect()
  }

  async function act(id: string, action: DeploymentAction): Promise<void> {
    if (action === 'delete') {
      await rawJson('DELETE', `/api/v1/deployments/${encodeURIComponent(id)}`)
      remove(id)
      return
    }
    upsert(await rawJson<Deployment>('POST', `/api/v1/deployments/${encodeURIComponent(id)}/${action}`))
  }

  function reset(): void {
    unsubscribe?.()
    stopListening?.()
    stopReconnect?.()
    unsubscribe = stopListening = stopReconnect = null
    byId.value = {}
    order.value = []
    total.value = 0
  }

  return {
    byId,
    items,
    total,
    hasMore,
    loading,
    error,
    filters,
    organizationId,
    load,
    loadMore,
    refreshOne,
    act,
    handle,
    reset,
    upsert,
    watchOrganization,
  }
})
