import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { effectScope, nextTick, ref } from 'vue'
import { createPinia, setActivePinia } from 'pinia'
import { RealtimeSocket } from '../src/realtime/socket'
import { setSocket } from '../src/stores/realtime'
import { setFrameScheduler, useDeploymentWebSocket } from '../src/composables/useDeploymentWebSocket'
import { FakeWebSocket } from './fakeSocket'
import { deployment, line, logs, progress, resync, serviceLogs, statusChanged } from './frames'

describe('useDeploymentWebSocket', () => {
  let scope: ReturnType<typeof effectScope>
  beforeEach(() => {
    vi.useFakeTimers()
    // no server here: the composable's HTTP reads fail at once (not later, inside the next test)
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => {
        throw new TypeError('no server in unit tests')
      }),
    )
    FakeWebSocket.instances = []
    localStorage.setItem('windflow.access', 'tok')
    setSocket(
      new RealtimeSocket({
        url: () => 'ws://t/api/v1/ws',
        token: () => 'tok',
        create: (u) => new FakeWebSocket(u),
        pingIntervalMs: 60_000,
      }),
    )
    setActivePinia(createPinia())
    setFrameScheduler((cb) => cb())
    scope = effectScope()
  })
  afterEach(() => {
    scope.stop()
    setSocket(null)
    setFrameScheduler(null)
    vi.useRealTimers()
    vi.unstubAllGlobals()
  })

  it('subscribes from seq 0, shows lines once each (dedupe by seq) and reports Live', async () => {
    const live = scope.run(() => useDeploymentWebSocket('d1'))!
    FakeWebSocket.last().open()
    expect(FakeWebSocket.last().sent[1]).toEqual({ type: 'subscribe', deployment_id: 'd1', since_seq: 0 })
    expect(live.connected.value).toBe(true)
    const ws = FakeWebSocket.last()
    ws.receive(logs('d1', [line(1), line(2), line(3)]))
    ws.receive(logs('d1', [line(2), line(3), line(4)])) // overlap after a resubscribe
    ws.receive(logs('other', [line(5)])) // another deployment's lines are not ours
    expect(live.lines.map((l) => l.seq)).toEqual([1, 2, 3, 4])
    expect(live.lastSeq.value).toBe(4)
  })

  it('resumes from the last seq after a reconnection, keeping the lines shown during the outage', async () => {
    const live = scope.run(() => useDeploymentWebSocket('d1'))!
    FakeWebSocket.last().open()
    FakeWebSocket.last().receive(logs('d1', [line(1), line(2)]))
    FakeWebSocket.last().fail()
    expect(live.state.value).toBe('reconnecting')
    expect(live.connected.value).toBe(false)
    expect(live.lines.length).toBe(2) // kept while offline
    vi.advanceTimersByTime(1000)
    FakeWebSocket.last().open()
    expect(FakeWebSocket.last().sent[1]).toEqual({ type: 'subscribe', deployment_id: 'd1', since_seq: 2 })
    FakeWebSocket.last().receive(logs('d1', [line(3)]))
    expect(live.lines.map((l) => l.seq)).toEqual([1, 2, 3])
  })

  it('a resync frame asks again from the last seq held', () => {
    scope.run(() => useDeploymentWebSocket('d1'))
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(logs('d1', [line(1), line(2), line(3)]))
    ws.receive(resync({ deployment_id: 'd1' }, 10))
    expect(ws.sent.at(-1)).toEqual({ type: 'subscribe', deployment_id: 'd1', since_seq: 3 })
  })

  it('Clear empties the display but keeps the position: old lines do not return, new ones keep coming', () => {
    const live = scope.run(() => useDeploymentWebSocket('d1'))!
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(logs('d1', [line(1), line(2)]))
    live.clear()
    ws.receive(logs('d1', [line(2), line(3)]))
    expect(live.lines.map((l) => l.seq)).toEqual([3])
  })

  it('opening another deployment shows only its lines and subscribes to it from 0', async () => {
    const id = ref<string | null>('d1')
    const live = scope.run(() => useDeploymentWebSocket(id))!
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(logs('d1', [line(1), line(2)]))
    id.value = 'd2'
    await nextTick()
    expect(live.lines.length).toBe(0)
    expect(ws.sent).toContainEqual({ type: 'unsubscribe', deployment_id: 'd1' })
    expect(ws.sent.at(-1)).toEqual({ type: 'subscribe', deployment_id: 'd2', since_seq: 0 })
    ws.receive(logs('d1', [line(3)]))
    ws.receive(logs('d2', [line(1, 'two')]))
    expect(live.lines.map((l) => l.message)).toEqual(['two'])
  })

  it('batches appends per animation frame', () => {
    const frames: (() => void)[] = []
    setFrameScheduler((cb) => frames.push(cb))
    const live = scope.run(() => useDeploymentWebSocket('d1'))!
    const ws = FakeWebSocket.last()
    ws.open()
    const before = live.version.value
    for (let i = 1; i <= 100; i++) ws.receive(logs('d1', [line(i)]))
    expect(live.lines.length).toBe(0)
    expect(frames.length).toBe(1) // one frame scheduled for 100 messages
    frames.shift()!()
    expect(live.lines.length).toBe(100)
    expect(live.version.value).toBe(before + 1)
  })

  it('tracks progress and status events; debug logs each DEPLOYMENT_LOGS_UPDATE', () => {
    const spy = vi.spyOn(console, 'debug').mockImplementation(() => {})
    const live = scope.run(() => useDeploymentWebSocket('d1', { debug: true }))!
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(progress('d1', { progress: 40, step_name: 'pull' }))
    expect(live.progress.value).toBe(40)
    ws.receive(logs('d1', [line(1)]))
    expect(spy).toHaveBeenCalledWith('[logs] DEPLOYMENT_LOGS_UPDATE', expect.objectContaining({ deployment_id: 'd1' }))
    ws.receive(statusChanged('d1', 'running', 'deploying'))
    expect(live.status.value).toBe('running')
    spy.mockRestore()
  })

  it('without debug, nothing is logged', () => {
    const spy = vi.spyOn(console, 'debug').mockImplementation(() => {})
    scope.run(() => useDeploymentWebSocket('d1'))
    FakeWebSocket.last().open()
    FakeWebSocket.last().receive(logs('d1', [line(1)]))
    expect(spy).not.toHaveBeenCalled()
    spy.mockRestore()
  })

  it('shows levels as the UI knows them: warn is a warning, critical an error, anything else info', () => {
    const live = scope.run(() => useDeploymentWebSocket('d1'))!
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(
      logs('d1', [line(1, 'a', 'WARN'), line(2, 'b', 'critical'), line(3, 'c', 'notice'), line(4, 'd', 'debug')]),
    )
    expect(live.lines.map((l) => l.level)).toEqual(['warning', 'error', 'info', 'debug'])
  })

  it("keeps the services' output (labelled per service), this deployment's only", async () => {
    const live = scope.run(() => useDeploymentWebSocket('d1', { services: true }))!
    const ws = FakeWebSocket.last()
    ws.open()
    expect(ws.sent).toContainEqual({ type: 'subscribe', deployment_id: 'd1', stream: 'services', tail: 200 })
    ws.receive(
      serviceLogs('d1', [
        { service: 'web', message: 'GET /' },
        { service: 'db', message: 'ready' },
      ]),
    )
    ws.receive(serviceLogs('d2', [{ service: 'web', message: 'not ours' }]))
    expect(live.serviceLines.map((l) => `${l.service}: ${l.message}`)).toEqual(['web: GET /', 'db: ready'])
  })

  it("merges the services' backlogs by time, numbers them in that order and keeps each line once", () => {
    const live = scope.run(() => useDeploymentWebSocket('d1', { services: true }))!
    const ws = FakeWebSocket.last()
    ws.open()
    const at = (s: number) => `2026-01-01T00:00:0${s}.000000000Z`
    // each container's backlog arrives in turn: web's, then db's (older lines in between)
    ws.receive(
      serviceLogs('d1', [
        { service: 'web', container: 'web-1', timestamp: at(1), message: 'web 1' },
        { service: 'web', container: 'web-1', timestamp: at(3), message: 'web 3' },
      ]),
    )
    const reordered = live.serviceReordered.value
    ws.receive(
      serviceLogs('d1', [
        { service: 'db', container: 'db-1', timestamp: at(2), message: 'ERROR db 2' },
        { service: 'db', container: 'db-1', timestamp: at(4), message: 'db 4 level=warn' },
      ]),
    )
    expect(live.serviceLines.map((l) => l.message)).toEqual(['web 1', 'ERROR db 2', 'web 3', 'db 4 level=warn'])
    expect(live.serviceLines.map((l) => l.seq)).toEqual([1, 2, 3, 4])
    expect(live.serviceLines.map((l) => l.level)).toEqual(['info', 'error', 'info', 'warning'])
    expect(live.serviceReordered.value).toBeGreaterThan(reordered) // laid out again
    // a resubscription sends the tail again: nothing twice
    ws.receive(serviceLogs('d1', [{ service: 'web', container: 'web-1', timestamp: at(3), message: 'web 3' }]))
    expect(live.serviceLines.length).toBe(4)
    ws.receive(serviceLogs('d1', [{ service: 'web', container: 'web-1', timestamp: at(5), message: 'web 5' }]))
    expect(live.serviceLines.at(-1)).toMatchObject({ seq: 5, message: 'web 5' })
  })

  it('reads the deployment again after each subscription: progress, step and attempt as the API has them', async () => {
    const calls: string[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        calls.push(new URL(req.url).pathname)
        return new Response(
          JSON.stringify({ ...deployment('d1'), status: 'deploying', progress: 83, step_name: 'Wait', attempt: 2 }),
          { status: 200, headers: { 'Content-Type': 'application/json' } },
        )
      }),
    )
    try {
      const live = scope.run(() => useDeploymentWebSocket('d1'))!
      const ws = FakeWebSocket.last()
      ws.open()
      ws.receive(progress('d1', { progress: 66, step_name: 'Start services' }))
      expect(live.progress.value).toBe(66)
      ws.receive({
        type: 'subscribed',
        deployment_id: 'd1',
        organization_id: 'o1',
        stream: 'events',
        last_seq: 0,
        status: 'deploying',
      })
      await vi.waitFor(() => expect(live.progress.value).toBe(83))
      expect(live.stepName.value).toBe('Wait')
      expect(live.attempt.value).toBe(2)
      expect(calls.filter((p) => p === '/api/v1/deployments/d1')).toHaveLength(1) // (the HTTP preload reads /logs)
    } finally {
      vi.unstubAllGlobals()
    }
  })

  it("an error frame about this deployment is shown; another's is not", () => {
    const live = scope.run(() => useDeploymentWebSocket('d1'))!
    const ws = FakeWebSocket.last()
    ws.open()
    const error = (id: string) =>
      ({
        type: 'error',
        code: 'access_revoked',
        detail: `no access to ${id}`,
        deployment_id: id,
        organization_id: null,
      }) as const
    ws.receive(error('d2'))
    expect(live.errorMessage.value).toBe(null)
    ws.receive(error('d1'))
    expect(live.errorMessage.value).toBe('no access to d1')
  })

  it('while the socket is not live, reads the persisted lines over HTTP, deduplicated against the stream', async () => {
    const urls: string[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        urls.push(req.url)
        const body = { items: [line(1, 'one', 'WARN'), line(2)], last_seq: 2, next_cursor: null }
        return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } })
      }),
    )
    try {
      const live = scope.run(() => useDeploymentWebSocket('d1'))!
      await vi.waitFor(() => expect(live.lines.length).toBe(2))
      expect(urls[0]).toMatch(/\/api\/v1\/deployments\/d1\/logs\?since_seq=0&limit=5000$/)
      expect(live.lines[0].level).toBe('warning')
      const ws = FakeWebSocket.last()
      ws.open()
      ws.receive(logs('d1', [line(2), line(3)]))
      expect(live.lines.map((l) => l.seq)).toEqual([1, 2, 3])
    } finally {
      vi.unstubAllGlobals()
    }
  })
})
