import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { effectScope, nextTick, ref } from 'vue'
import { createPinia, setActivePinia } from 'pinia'
import { RealtimeSocket } from '../src/realtime/socket'
import { setSocket } from '../src/stores/realtime'
import { setFrameScheduler, useDeploymentWebSocket } from '../src/composables/useDeploymentWebSocket'
import { FakeWebSocket } from './fakeSocket'

const line = (seq: number, message = `line ${seq}`, level = 'info') => ({
  seq,
  timestamp: '2026-01-01T00:00:00Z',
  level,
  message,
})
const logs = (id: string, items: ReturnType<typeof line>[]) => ({
  type: 'DEPLOYMENT_LOGS_UPDATE',
  deployment_id: id,
  organization_id: 'o',
  data: { logs: items, append: true },
})

describe('useDeploymentWebSocket', () => {
  let scope: ReturnType<typeof effectScope>
  beforeEach(() => {
    vi.useFakeTimers()
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
    ws.receive({ type: 'resync', deployment_id: 'd1', last_seq: 10 })
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
    ws.receive({ type: 'DEPLOYMENT_PROGRESS', deployment_id: 'd1', data: { progress: 40, step_name: 'pull' } })
    expect(live.progress.value).toBe(40)
    ws.receive(logs('d1', [line(1)]))
    expect(spy).toHaveBeenCalledWith('[logs] DEPLOYMENT_LOGS_UPDATE', expect.objectContaining({ deployment_id: 'd1' }))
    ws.receive({
      type: 'DEPLOYMENT_STATUS_CHANGED',
      deployment_id: 'd1',
      data: { new_status: 'running', old_status: 'deploying' },
    })
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
})
