import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { RealtimeSocket } from '../src/realtime/socket'
import { setSocket } from '../src/stores/realtime'
import { useDeploymentsStore } from '../src/stores/deployments'
import { FakeWebSocket } from './fakeSocket'
import { created, deleted, deployment, progress, resync, statusChanged } from './frames'

const dep = deployment

function mockFetch(pages: Record<string, unknown>) {
  const calls: string[] = []
  vi.stubGlobal(
    'fetch',
    vi.fn(async (req: Request) => {
      calls.push(req.url)
      const key = Object.keys(pages).find((k) => req.url.includes(k))
      return new Response(JSON.stringify(key ? pages[key] : {}), {
        status: key ? 200 : 404,
        headers: { 'Content-Type': 'application/json' },
      })
    }),
  )
  return calls
}

describe('deployments store', () => {
  beforeEach(() => {
    FakeWebSocket.instances = []
    localStorage.setItem('windflow.access', 'tok')
    setSocket(
      new RealtimeSocket({
        url: () => 'ws://t',
        token: () => 'tok',
        create: (u) => new FakeWebSocket(u),
        pingIntervalMs: 60_000,
      }),
    )
    setActivePinia(createPinia())
  })
  afterEach(() => {
    vi.unstubAllGlobals()
    setSocket(null)
  })

  it('pages by offset against total when the API has no next_cursor', async () => {
    const calls = mockFetch({
      'offset=1': { items: [dep('b')], total: 2 },
      '/api/v1/deployments?': { items: [dep('a')], total: 2 },
    })
    const store = useDeploymentsStore()
    await store.load('o1', { status: [], stack_id: null, target_id: null })
    expect(store.hasMore).toBe(true)
    await store.loadMore()
    expect(calls.at(-1)).toContain('offset=1')
    expect(store.items.map((d) => d.id)).toEqual(['a', 'b'])
    expect(store.hasMore).toBe(false)
  })

  it('pages by cursor when the API returns next_cursor', async () => {
    const calls = mockFetch({
      'cursor=c2': { items: [dep('b')], next_cursor: null },
      '/api/v1/deployments?': { items: [dep('a')], next_cursor: 'c2' },
    })
    const store = useDeploymentsStore()
    await store.load('o1', { status: ['pending'], stack_id: null, target_id: null })
    expect(calls[0]).toContain('status=pending')
    expect(store.hasMore).toBe(true)
    await store.loadMore()
    expect(calls.at(-1)).toContain('cursor=c2')
    expect(calls.at(-1)).not.toContain('offset=')
    expect(store.items.map((d) => d.id)).toEqual(['a', 'b'])
    expect(store.hasMore).toBe(false)
  })

  it('subscribes to the organisation and applies one handler per event type', async () => {
    mockFetch({
      '/api/v1/deployments/a': dep('a', { status: 'deploying', attempt: 2 }),
      '/api/v1/deployments?': { items: [dep('a')], total: 1 },
    })
    const store = useDeploymentsStore()
    await store.load('o1', { status: [], stack_id: null, target_id: null })
    const ws = FakeWebSocket.last()
    ws.open()
    expect(ws.sent).toContainEqual({ type: 'subscribe', organization_id: 'o1' })

    ws.receive(progress('a', { progress: 60, current_step: 3, total_steps: 5, step_name: 'pull' }))
    expect(store.byId.a.progress).toBe(60)
    expect(store.byId.a.step_name).toBe('pull')
    ws.receive(statusChanged('a', 'deploying', 'pending'))
    expect(store.byId.a.status).toBe('deploying')
    await vi.waitFor(() => expect(store.byId.a.attempt).toBe(2)) // the row is read once after a status change

    ws.receive(created(dep('n')))
    expect(store.items.map((d) => d.id)).toEqual(['n', 'a']) // new ones at the top
    expect(store.total).toBe(2)
    ws.receive(created(dep('x', { organization_id: 'other' })))
    expect(store.items.length).toBe(2)
    ws.receive(deleted('a'))
    expect(store.items.map((d) => d.id)).toEqual(['n'])
  })

  it('a created deployment outside the filters is not inserted', async () => {
    mockFetch({ '/api/v1/deployments?': { items: [], total: 0 } })
    const store = useDeploymentsStore()
    await store.load('o1', { status: ['failed'], stack_id: null, target_id: null })
    FakeWebSocket.last().open()
    FakeWebSocket.last().receive(created(dep('n')))
    expect(store.items).toEqual([])
  })

  it("a failure carries its error message; another organisation's events change nothing", async () => {
    mockFetch({
      '/api/v1/deployments/a': dep('a', { status: 'failed', error_message: 'pull failed' }),
      '/api/v1/deployments?': { items: [dep('a', { status: 'deploying' })], total: 1 },
    })
    const store = useDeploymentsStore()
    await store.load('o1', { status: [], stack_id: null, target_id: null })
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(statusChanged('a', 'failed', 'deploying', { error_message: 'pull failed' }))
    expect(store.byId.a.status).toBe('failed')
    expect(store.byId.a.error_message).toBe('pull failed')
    ws.receive(progress('a', { progress: 90 }, 'other'))
    ws.receive(deleted('a', 'other'))
    expect(store.byId.a.progress).toBe(0)
    expect(store.items.map((d) => d.id)).toEqual(['a'])
  })

  it('a resync of the organisation reads the list again; of a deployment, that deployment', async () => {
    const calls = mockFetch({
      '/api/v1/deployments/a': dep('a', { status: 'running' }),
      '/api/v1/deployments?': { items: [dep('a')], total: 1 },
    })
    const store = useDeploymentsStore()
    await store.load('o1', { status: [], stack_id: null, target_id: null })
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(resync({ organization_id: 'o1' }))
    await vi.waitFor(() => expect(calls.filter((u) => u.includes('/api/v1/deployments?')).length).toBe(2))
    ws.receive(resync({ deployment_id: 'a' }, 12))
    await vi.waitFor(() => expect(store.byId.a.status).toBe('running'))
    ws.receive(resync({ organization_id: 'other' }))
    expect(calls.filter((u) => u.includes('/api/v1/deployments?')).length).toBe(2)
  })

  it('a deployment created between the list read and the subscription taking effect is not missed', async () => {
    let listed = [dep('a')]
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        const body = req.url.includes('/api/v1/deployments?') ? { items: listed, total: listed.length } : {}
        return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } })
      }),
    )
    const store = useDeploymentsStore()
    await store.load('o1', { status: [], stack_id: null, target_id: null })
    expect(store.items.map((d) => d.id)).toEqual(['a'])
    const ws = FakeWebSocket.last()
    ws.open()
    expect(ws.sent).toContainEqual({ type: 'subscribe', organization_id: 'o1' })
    listed = [dep('b'), dep('a')] // 'b' was created before the subscription took effect: no event for it
    ws.receive({ type: 'subscribed', organization_id: 'o1', deployment_id: null, stream: 'events' } as never)
    await vi.waitFor(() => expect(store.items.map((d) => d.id)).toEqual(['b', 'a']))
  })
})
