/**
 * Deployments of the current organisation: `byId` plus the ordered ids of the listing, kept live by
 * the organisation subscription (one handler per event type). Pages either by `next_cursor` (when
 * the API returns one) or by offset against `total`.
 *
 * Lifecycle actions go through `act`: one at a time per deployment (a second click while one is in flight
 * sends nothing), and `inFlight` says which one runs, so the row shows the transition at once.
 *
 * Status events carry the deployment's current revision; `DEPLOYMENT_ROLLED_BACK` is kept in `rollbacks` (the
 * last one per deployment) for the pages to say so.
 */
import { defineStore } from 'pinia'
import { computed, ref, shallowRef } from 'vue'
import * as deploymentsApi from '../api/deployments'
import type { Deployment, DeploymentFilters } from '../api/deployments'
import { ApiError, errorText } from '../api/errors'
import type { Page, PageQuery } from '../api/paging'
import { isStatus, TEARDOWN, type DeploymentAction, type DeploymentStatus } from '../constants/deployments'
import { dispatchFrame, type FrameHandlers, type FrameOf, type ServerFrame } from '../realtime/frames'
import { getSocket, holdOrganization } from './realtime'

/** The last automatic rollback seen of a deployment (`DEPLOYMENT_ROLLED_BACK`), with when it came. */
export type RollbackNotice = FrameOf<'DEPLOYMENT_ROLLED_BACK'>['data'] & { at: string }

export const PAGE_SIZE = 25

export function matchesFilters(d: Deployment, f: DeploymentFilters): boolean {
  if (f.status.length && !f.status.includes(d.status)) return false
  if (f.stack_id && d.stack_id !== f.stack_id) return false
  if (f.target_id && d.target_id !== f.target_id) return false
  return true
}

/** How long an accepted stop or delete stays in flight at most, waiting for the status to move on. */
const TEARDOWN_WAIT_MS = 10 * 60_000
/** How often that wait reads the deployment again itself. */
const LOOK_AGAIN_MS = 3000

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
  /** The lifecycle action being sent for each deployment (until the API answers). */
  const inFlight = ref<Record<string, DeploymentAction>>({})
  /** Deployments deleted while shown (a detail page says so instead of going blank). */
  const deleted = ref<Record<string, string>>({})
  /** Automatic rollbacks seen while shown, by deployment. */
  const rollbacks = ref<Record<string, RollbackNotice>>({})
  let unsubscribe: (() => void) | null = null
  let subscribedTo: string | null = null
  let stopListening: (() => void) | null = null
  let stopReconnect: (() => void) | null = null

  const items = computed(() => order.value.map((id) => byId.value[id]).filter((d): d is Deployment => !!d))
  const hasMore = computed(() => (usesCursor.value ? !!nextCursor.value : order.value.length < total.value))

  function upsert(d: Deployment): void {
    byId.value[d.id] = { ...(byId.value[d.id] ?? {}), ...d }
  }

  function page(extra: PageQuery = {}): Promise<Page<Deployment>> {
    return deploymentsApi.listDeployments(organizationId.value, filters.value, { limit: PAGE_SIZE, ...extra })
  }

  async function load(orgId: string | null, f: DeploymentFilters): Promise<void> {
    organizationId.value = orgId
    filters.value = f
    loading.value = true
    error.value = null
    try {
      const first = await page()
      byId.value = {}
      first.items.forEach(upsert)
      order.value = first.items.map((d) => d.id)
      applyPaging(first)
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
      const next = await page(
        usesCursor.value && nextCursor.value ? { cursor: nextCursor.value } : { offset: order.value.length },
      )
      next.items.forEach(upsert)
      const known = new Set(order.value)
      order.value = [...order.value, ...next.items.map((d) => d.id).filter((id) => !known.has(id))]
      applyPaging(next)
    } catch (err) {
      error.value = errorText(err)
    } finally {
      loading.value = false
    }
  }

  function applyPaging(p: Page<Deployment>): void {
    usesCursor.value = 'next_cursor' in p
    nextCursor.value = p.next_cursor ?? null
    total.value = typeof p.total === 'number' ? p.total : order.value.length + (p.next_cursor ? 1 : 0)
  }

  async function refreshOne(id: string): Promise<Deployment | null> {
    try {
      const d = await deploymentsApi.getDeployment(id)
      upsert(d)
      return d
    } catch {
      return null
    }
  }

  // --- live updates: one handler per event type ---------------------------------------------------
  const handlers: FrameHandlers = {
    DEPLOYMENT_STATUS_CHANGED({ deployment_id: id, data }) {
      const known = byId.value[id]
      if (known && isStatus(data.new_status)) {
        known.status = data.new_status
        known.error_message = data.error_message ?? null
        known.error_code = data.error_code ?? null
        known.error_params = data.error_params ?? {}
        if (typeof data.revision === 'number') known.revision = data.revision
      }
      // attempt, timestamps and progress come with the row; one read per status change, not polling.
      if (known || !order.value.includes(id)) void refreshOne(id).then((d) => d && !known && insertIfMatching(d))
      // A slot of its target was taken or freed: the target's waiting rows say why they wait.
      if (known) refreshWaiting(known.target_id, id)
    },
    DEPLOYMENT_PROGRESS({ deployment_id: id, data }) {
      const known = byId.value[id]
      if (!known) return
      known.progress = data.progress
      known.current_step = data.current_step
      known.total_steps = data.total_steps
      if (typeof data.step_name === 'string') known.step_name = data.step_name
    },
    DEPLOYMENT_CREATED({ data }) {
      insertIfMatching(data)
    },
    // Revision `from_revision` failed: WindFlow rolls out `revision`, a copy of `to_revision` (status events follow).
    DEPLOYMENT_ROLLED_BACK({ deployment_id: id, timestamp, data }) {
      rollbacks.value = { ...rollbacks.value, [id]: { ...data, at: timestamp } }
      const known = byId.value[id]
      if (known) {
        known.revision = data.revision
        void refreshOne(id)
      }
    },
    // What the watcher sees of a running (or failed) deployment's containers changed: the row's mark follows at
    // once, its error message with one read.
    DEPLOYMENT_HEALTH_CHANGED({ deployment_id: id, data }) {
      const known = byId.value[id]
      if (!known) return
      known.health = data.health
      known.service_health = data.services
      void refreshOne(id)
    },
    DEPLOYMENT_DELETED({ deployment_id: id, data }) {
      deleted.value[id] = data.name
      remove(id)
    },
    // The organisation's subscription took effect: what changed between the list's read and now (a deployment
    // created meanwhile) came before it, so the list is read again (once, with a reconnection's re-read).
    subscribed({ deployment_id: id, organization_id: org }) {
      if (!id && org && org === organizationId.value) reloadSoon()
    },
    // Events were dropped for this client: what the list shows may be stale, read it again.
    resync({ deployment_id: id, organization_id: org }) {
      if (id) {
        if (byId.value[id]) void refreshOne(id)
      } else if (org && org === organizationId.value) void load(org, filters.value)
    },
  }

  /** Reads again the pending rows of a target (other than `except`): whether they wait for a slot changed. */
  function refreshWaiting(targetId: string, except: string): void {
    for (const d of Object.values(byId.value))
      if (d.id !== except && d.target_id === targetId && d.status === 'pending') void refreshOne(d.id)
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

  function handle(frame: ServerFrame): void {
    const org = 'organization_id' in frame ? frame.organization_id : null
    if (organizationId.value && org && org !== organizationId.value) return
    dispatchFrame(handlers, frame)
  }

  /** Keep byId live for `orgId` (the list does this on load; a detail page calls it directly). */
  function watchOrganization(orgId: string | null): void {
    organizationId.value = orgId
    if (subscribedTo === orgId && unsubscribe) return
    unsubscribe?.()
    unsubscribe = null
    subscribedTo = orgId
    const socket = getSocket()
    if (!stopListening) stopListening = socket.onMessage(handle)
    // After an outage everything shown (status, progress, step, attempt) is read again.
    if (!stopReconnect) stopReconnect = socket.onReconnect(reloadSoon)
    if (orgId) unsubscribe = holdOrganization(orgId)
    socket.connect()
  }

  let reloadTimer: ReturnType<typeof setTimeout> | null = null
  /** reloadShown, once for the reasons that arrive together (a reconnection and its subscription's answer). */
  function reloadSoon(): void {
    if (reloadTimer) clearTimeout(reloadTimer)
    reloadTimer = setTimeout(() => {
      reloadTimer = null
      void reloadShown()
    }, 150)
  }

  /** The list as loaded (as many rows as were shown), and the rows outside it that a page shows. */
  async function reloadShown(): Promise<void> {
    const shown = new Set(order.value)
    const others = Object.keys(byId.value).filter((id) => !shown.has(id))
    await load(organizationId.value, filters.value)
    await Promise.all(others.map((id) => refreshOne(id)))
  }

  /**
   * Resolves once deployment `id` has left `status`: its socket event, or its removal. It looks again itself every
   * few seconds (an event missed while the socket reconnects) and gives up after `TEARDOWN_WAIT_MS`.
   */
  async function leaves(id: string, status: DeploymentStatus): Promise<void> {
    const deadline = Date.now() + TEARDOWN_WAIT_MS
    let looked = Date.now()
    while (byId.value[id]?.status === status && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      if (Date.now() - looked >= LOOK_AGAIN_MS && byId.value[id]?.status === status) {
        looked = Date.now()
        try {
          upsert(await deploymentsApi.getDeployment(id))
        } catch (err) {
          if (err instanceof ApiError && err.status === 404) remove(id) // deleted: its event was missed
          return
        }
      }
    }
  }

  /**
   * Sends a lifecycle action, once: while one is in flight for this deployment, another is refused (false).
   * The API's error is thrown to the caller.
   */
  async function act(id: string, action: DeploymentAction): Promise<boolean> {
    if (inFlight.value[id]) return false
    inFlight.value = { ...inFlight.value, [id]: action }
    try {
      const d = action === 'delete' ? await deploymentsApi.deleteDeployment(id) : await deploymentsApi.act(id, action)
      upsert(d)
      // stop and delete answer at once (202: stopping, deleting) and finish in the background: the action stays
      // in flight (the row's transition, the dialog's wait) until the status moves on (stopped, failed) or the
      // row goes (DEPLOYMENT_DELETED)
      if (TEARDOWN.has(d.status)) await leaves(id, d.status)
      return true
    } finally {
      const rest = { ...inFlight.value }
      delete rest[id]
      inFlight.value = rest
    }
  }

  function reset(): void {
    unsubscribe?.()
    stopListening?.()
    stopReconnect?.()
    unsubscribe = stopListening = stopReconnect = null
    if (reloadTimer) clearTimeout(reloadTimer)
    reloadTimer = null
    subscribedTo = null
    byId.value = {}
    order.value = []
    total.value = 0
    inFlight.value = {}
    rollbacks.value = {}
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
    inFlight,
    deleted,
    rollbacks,
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
