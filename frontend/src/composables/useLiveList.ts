/**
 * A listing as the UI shows it (stacks, targets, members, tokens, users, organisations): its first page, "Load
 * more" by cursor (or offset), the filters it is given (kept in the URL by the page), and live: a
 * `RESOURCE_CHANGED` event about its kind of row reloads what is shown, as does a reconnection after an outage.
 * Stacks, targets and members hear their organisation's events (the list holds its subscription); tokens,
 * users and organisations hear the account's events, which the server sends to every connection of the user
 * they concern (a token's owner; superusers for users and organisations) without a subscription.
 */
import { computed, onScopeDispose, ref, shallowRef, toValue, watch, type MaybeRefOrGetter } from 'vue'
import { errorText } from '../api/errors'
import type { Page, PageQuery } from '../api/paging'
import { dispatchFrame, type FrameHandlers } from '../realtime/frames'
import { getSocket, holdOrganization } from '../stores/realtime'

export const LIST_PAGE = 25
/** Rows of an organisation: their events come with its subscription. */
export type OrganizationResource = 'stack' | 'target' | 'member'
/** Rows of the account or of the platform: their events come to the user's connections unasked. */
export type AccountResource = 'token' | 'user' | 'organization'
const ACCOUNT_RESOURCES: readonly string[] = ['token', 'user', 'organization']

export interface LiveListOptions<T> {
  /** One page of the listing with the current filters. */
  fetch: (page: PageQuery) => Promise<Page<T>>
  /** Changes when the filters change (the list starts over). */
  filterKey: () => string
  /** The organisation whose events keep the list live (null: none). */
  organizationId?: MaybeRefOrGetter<string | null>
  /** The kind of row `RESOURCE_CHANGED` events name for this list. */
  resource?: OrganizationResource | AccountResource
  pageSize?: number
}

export function useLiveList<T>(options: LiveListOptions<T>) {
  const items = shallowRef<T[]>([])
  const total = ref(0)
  const totalExact = ref(true)
  const nextCursor = ref<string | null>(null)
  const usesCursor = ref(false)
  const loading = ref(false)
  const error = ref<string | null>(null)
  const size = options.pageSize ?? LIST_PAGE
  let generation = 0
  /** The first page is being read again (an event, a reconnection, new filters). */
  let reloading = false
  /** A next page is being read (a second click meanwhile is the same click). */
  let more = false
  /** "Load more" asked while the list was being read again: done once that read is in. */
  let moreAsked = false
  /** The last reload kept what was shown (a live one), rather than starting over (new filters). */
  let live = false

  const hasMore = computed(() => (usesCursor.value ? !!nextCursor.value : items.value.length < total.value))

  function apply(page: Page<T>, append: boolean): void {
    items.value = append ? [...items.value, ...page.items] : page.items
    usesCursor.value = 'next_cursor' in page
    nextCursor.value = page.next_cursor ?? null
    total.value = typeof page.total === 'number' ? page.total : items.value.length
    totalExact.value = page.total_is_exact ?? true
  }

  /** The first page again (as many rows as are shown, so a live reload does not shrink the list). */
  async function reload(keepShown = false): Promise<void> {
    const mine = ++generation
    live = keepShown
    if (!keepShown) moreAsked = false // new filters: a click on the old list's foot is not carried over
    if (options.organizationId !== undefined && !toValue(options.organizationId)) {
      // no organisation (yet): nothing to list
      apply({ items: [], total: 0, total_is_exact: true, next_cursor: null }, false)
      return
    }
    loading.value = true
    reloading = true
    error.value = null
    try {
      const limit = keepShown ? Math.min(200, Math.max(size, items.value.length)) : size
      const page = await options.fetch({ limit })
      if (mine === generation) apply(page, false)
    } catch (err) {
      if (mine === generation) error.value = errorText(err)
    } finally {
      if (mine === generation) {
        loading.value = false
        reloading = false
      }
    }
    if (mine === generation && moreAsked) {
      moreAsked = false
      await loadMore()
    }
  }

  async function loadMore(): Promise<void> {
    if (reloading) {
      // a live reload is under way (an event, a reconnection): the click is not lost, it follows it
      moreAsked = true
      return
    }
    if (more || !hasMore.value) return
    const mine = generation
    loading.value = true
    more = true
    try {
      const page = await options.fetch(
        usesCursor.value && nextCursor.value
          ? { limit: size, cursor: nextCursor.value }
          : { limit: size, offset: items.value.length },
      )
      if (mine === generation) apply(page, true)
    } catch (err) {
      if (mine === generation) error.value = errorText(err)
    } finally {
      more = false
      if (mine === generation) loading.value = false
    }
    // A live reload began meanwhile: its first page replaced what this page followed, so the click is done
    // again after it (now if it is in, else when it is). New filters start over without it.
    if (mine !== generation && live) await loadMore()
  }

  watch(
    () => [options.filterKey(), toValue(options.organizationId)],
    () => void reload(),
    { immediate: true },
  )

  // --- live -----------------------------------------------------------------------------------
  let pending: ReturnType<typeof setTimeout> | null = null
  function soon(): void {
    if (pending) clearTimeout(pending)
    pending = setTimeout(() => {
      pending = null
      void reload(true)
    }, 150)
  }
  const socket = getSocket()
  const account = !!options.resource && ACCOUNT_RESOURCES.includes(options.resource)
  const handlers: FrameHandlers = {
    RESOURCE_CHANGED(frame) {
      if (frame.data.resource !== options.resource) return
      if (account || frame.organization_id === toValue(options.organizationId)) soon()
    },
    // The organisation's subscription took effect: a change made between the first read and now came
    // before it, so the list is read again.
    subscribed(frame) {
      if (!frame.deployment_id && frame.organization_id === toValue(options.organizationId)) soon()
    },
    // Events were dropped: the organisation's (its id), or the account's (no organisation).
    resync(frame) {
      if (frame.deployment_id) return
      if (account ? !frame.organization_id : frame.organization_id === toValue(options.organizationId)) soon()
    },
  }
  const stops: (() => void)[] = [socket.onReconnect(soon)]
  if (options.resource) stops.push(socket.onMessage((frame) => dispatchFrame(handlers, frame)))
  let release: (() => void) | null = null
  if (account) {
    // The account's events flow once the socket is live: a change made before that is read again then.
    if (socket.state !== 'live') {
      const stop = socket.onState((state) => {
        if (state !== 'live') return
        stop()
        soon()
      })
      stops.push(stop)
    }
    socket.connect()
  } else if (options.resource)
    watch(
      () => toValue(options.organizationId),
      (org) => {
        release?.()
        release = org ? holdOrganization(org) : null
      },
      { immediate: true },
    )
  onScopeDispose(() => {
    stops.forEach((stop) => stop())
    release?.()
    if (pending) clearTimeout(pending)
  })

  return { items, total, totalExact, hasMore, loading, error, reload, loadMore }
}

export type LiveList<T> = ReturnType<typeof useLiveList<T>>
