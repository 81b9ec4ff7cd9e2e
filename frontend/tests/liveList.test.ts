import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { effectScope } from 'vue'
import { RealtimeSocket } from '../src/realtime/socket'
import { setSocket } from '../src/stores/realtime'
import { useLiveList, type AccountResource, type OrganizationResource } from '../src/composables/useLiveList'
import type { PageQuery } from '../src/api/paging'
import type { ServerFrame } from '../src/realtime/frames'
import { FakeWebSocket } from './fakeSocket'

function changed(resource: string, organization_id = '', user_id: string | null = null): ServerFrame {
  return {
    type: 'RESOURCE_CHANGED',
    deployment_id: '',
    organization_id,
    timestamp: '2026-01-01T00:00:00Z',
    data: { resource, action: 'created', id: 'x', name: 'x', user_id },
  } as ServerFrame
}

describe('useLiveList: live by the events of its kind of row', () => {
  let scope: ReturnType<typeof effectScope>
  beforeEach(() => {
    vi.useFakeTimers()
    FakeWebSocket.instances = []
    setSocket(
      new RealtimeSocket({
        url: () => 'ws://t/api/v1/ws',
        token: () => 'tok',
        create: (u) => new FakeWebSocket(u),
        pingIntervalMs: 60_000,
      }),
    )
    scope = effectScope()
  })
  afterEach(() => {
    scope.stop()
    setSocket(null)
    vi.useRealTimers()
  })

  function list(resource: OrganizationResource | AccountResource, organizationId: string | null = null) {
    const fetch = vi.fn(async () => ({ items: [], total: 0, total_is_exact: true, next_cursor: null }))
    scope.run(() =>
      useLiveList({
        fetch,
        filterKey: () => '',
        resource,
        ...(organizationId ? { organizationId: () => organizationId } : {}),
      }),
    )
    return fetch
  }
  async function settle(): Promise<void> {
    await vi.advanceTimersByTimeAsync(200) // the reload is gathered for 150 ms
  }

  it('an account list (tokens) connects, needs no subscription, and reloads on its own kind of row only', async () => {
    const fetch = list('token')
    expect(fetch).toHaveBeenCalledTimes(1) // the first page
    const ws = FakeWebSocket.last()
    ws.open()
    await settle()
    expect(fetch).toHaveBeenCalledTimes(2) // once the account's events flow: what changed before is read again
    expect(ws.sent.filter((f) => f.type === 'subscribe')).toEqual([])
    ws.receive(changed('user'))
    ws.receive(changed('stack', 'o1'))
    await settle()
    expect(fetch).toHaveBeenCalledTimes(2)
    ws.receive(changed('token', '', 'u1'))
    ws.receive(changed('token', '', 'u1')) // two at once: one reload
    await settle()
    expect(fetch).toHaveBeenCalledTimes(3)
    ws.receive({ type: 'resync', deployment_id: null, organization_id: 'o1', last_seq: null } as ServerFrame)
    await settle()
    expect(fetch).toHaveBeenCalledTimes(3) // an organisation's resync is not the account's
    ws.receive({ type: 'resync', deployment_id: null, organization_id: null, last_seq: null } as ServerFrame)
    await settle()
    expect(fetch).toHaveBeenCalledTimes(4) // the account's events were dropped: read again
  })

  it('an organisation list (members) holds its subscription and hears only its organisation', async () => {
    const fetch = list('member', 'o1')
    const ws = FakeWebSocket.last()
    ws.open()
    await settle()
    expect(ws.sent).toContainEqual({ type: 'subscribe', organization_id: 'o1' })
    expect(fetch).toHaveBeenCalledTimes(1)
    // the subscription took effect: what changed between the first read and now is read again
    ws.receive({ type: 'subscribed', organization_id: 'o1', deployment_id: null } as ServerFrame)
    await settle()
    expect(fetch).toHaveBeenCalledTimes(2)
    ws.receive(changed('member', 'o2'))
    ws.receive(changed('token', '', 'u1'))
    await settle()
    expect(fetch).toHaveBeenCalledTimes(2)
    ws.receive(changed('member', 'o1'))
    await settle()
    expect(fetch).toHaveBeenCalledTimes(3)
  })

  it('a "Load more" asked while the list is read again is done once that read is in, not lost', async () => {
    const rows = Array.from({ length: 27 }, (_, i) => ({ id: `t${i}` }))
    let release: (() => void) | null = null
    const fetch = vi.fn(async ({ limit = 25, offset = 0 }: PageQuery) => {
      if (fetch.mock.calls.length === 2) await new Promise<void>((resolve) => (release = resolve)) // the live reload, slow
      return { items: rows.slice(offset, offset + limit), total: rows.length, total_is_exact: true }
    })
    const shown = scope.run(() => useLiveList({ fetch, filterKey: () => '', resource: 'token' }))!
    await vi.advanceTimersByTimeAsync(0)
    expect(shown.items.value).toHaveLength(25)
    FakeWebSocket.last().open()
    await settle() // the socket is live: the list is read again, slowly
    expect(fetch).toHaveBeenCalledTimes(2)
    await shown.loadMore() // clicked meanwhile
    expect(fetch).toHaveBeenCalledTimes(2)
    release!()
    await vi.advanceTimersByTimeAsync(0)
    expect(fetch).toHaveBeenCalledTimes(3)
    expect(fetch.mock.calls[2][0]).toEqual({ limit: 25, offset: 25 })
    expect(shown.items.value).toHaveLength(27)
  })
  it('a "Load more" under way when a live reload starts is done again after the reload, on its first page', async () => {
    const rows = Array.from({ length: 27 }, (_, i) => ({ id: `t${i}` }))
    let release: (() => void) | null = null
    const fetch = vi.fn(async ({ limit = 25, offset = 0 }: PageQuery) => {
      if (fetch.mock.calls.length === 2) await new Promise<void>((resolve) => (release = resolve)) // the click's page, slow
      return { items: rows.slice(offset, offset + limit), total: rows.length, total_is_exact: true }
    })
    const shown = scope.run(() => useLiveList({ fetch, filterKey: () => '', resource: 'token' }))!
    await vi.advanceTimersByTimeAsync(0)
    const clicked = shown.loadMore() // the next page, slow
    await shown.loadMore() // a second click meanwhile: the same click
    expect(fetch).toHaveBeenCalledTimes(2)
    FakeWebSocket.last().open()
    await settle() // the socket is live: the list is read again (its first page)
    expect(fetch).toHaveBeenCalledTimes(3)
    release!()
    await clicked
    await vi.advanceTimersByTimeAsync(0)
    expect(fetch).toHaveBeenCalledTimes(4) // the next page again, after the reload's first page
    expect(fetch.mock.calls[3][0]).toEqual({ limit: 25, offset: 25 })
    expect(shown.items.value).toHaveLength(27)
  })
})
