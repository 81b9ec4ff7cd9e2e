import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import {
  BACKOFF_MS,
  CLOSE_TRY_AGAIN_LATER,
  CLOSE_UNAUTHORIZED,
  OFFLINE_RETRY_MS,
  RealtimeSocket,
} from '../src/realtime/socket'
import { FakeWebSocket } from './fakeSocket'
import { progress } from './frames'

function makeSocket(token: () => string | null = () => 'tok-1', refreshToken?: () => Promise<string | null>) {
  return new RealtimeSocket({
    url: () => 'ws://test/api/v1/ws',
    token,
    refreshToken,
    create: (url) => new FakeWebSocket(url),
    pingIntervalMs: 60_000,
  })
}

describe('RealtimeSocket', () => {
  beforeEach(() => {
    vi.useFakeTimers()
    FakeWebSocket.instances = []
  })
  afterEach(() => vi.useRealTimers())

  it('authenticates with the first frame, then sends its subscriptions', () => {
    const s = makeSocket()
    s.subscribe('org:o1', () => ({ type: 'subscribe', organization_id: 'o1' }), {
      type: 'unsubscribe',
      organization_id: 'o1',
    })
    s.connect()
    expect(s.state).toBe('connecting')
    FakeWebSocket.last().open()
    expect(s.state).toBe('live')
    expect(FakeWebSocket.last().sent).toEqual([
      { type: 'auth', token: 'tok-1' },
      { type: 'subscribe', organization_id: 'o1' },
    ])
  })

  it('reconnects after 1 s, 2 s and 4 s, then offline keeps trying by itself, capped at 30 s', () => {
    expect(BACKOFF_MS).toEqual([1000, 2000, 4000])
    expect(OFFLINE_RETRY_MS).toEqual([8000, 16000, 30000])
    const s = makeSocket()
    s.connect()
    FakeWebSocket.last().open()
    FakeWebSocket.last().fail()
    expect(s.state).toBe('reconnecting')
    const attemptsAt: number[] = []
    const states: string[] = []
    const start = Date.now()
    for (const delay of [...BACKOFF_MS, 8000, 16000, 30000, 30000, 30000]) {
      const before = FakeWebSocket.instances.length
      expect(s.nextAttemptAt).toBe(Date.now() + delay)
      vi.advanceTimersByTime(delay - 1)
      expect(FakeWebSocket.instances.length).toBe(before) // not one millisecond early
      vi.advanceTimersByTime(1)
      expect(FakeWebSocket.instances.length).toBe(before + 1)
      attemptsAt.push(Date.now() - start)
      FakeWebSocket.last().fail()
      states.push(s.state)
    }
    expect(attemptsAt).toEqual([1000, 3000, 7000, 15000, 31000, 61000, 91000, 121000])
    expect(states).toEqual([
      'reconnecting',
      'reconnecting',
      'offline',
      'offline',
      'offline',
      'offline',
      'offline',
      'offline',
    ])

    s.retry() // the Retry button: at once
    expect(FakeWebSocket.instances.length).toBe(10)
    FakeWebSocket.last().open()
    expect(s.state).toBe('live')
    expect(s.nextAttemptAt).toBeNull()
  })

  it('tries at once when the browser comes back online or the tab becomes visible', () => {
    let wake: () => void = () => {}
    const s = new RealtimeSocket({
      url: () => 'ws://test/api/v1/ws',
      token: () => 'tok-1',
      create: (url) => new FakeWebSocket(url),
      onWake: (w) => {
        wake = w
        return () => {}
      },
    })
    s.connect()
    FakeWebSocket.last().open()
    wake() // live: nothing to do
    expect(FakeWebSocket.instances.length).toBe(1)
    FakeWebSocket.last().fail()
    for (const delay of BACKOFF_MS) {
      vi.advanceTimersByTime(delay)
      FakeWebSocket.last().fail()
    }
    expect(s.state).toBe('offline') // the next attempt is 8 s away...
    wake() // ...but the network is back
    expect(FakeWebSocket.instances.length).toBe(5)
    FakeWebSocket.last().open()
    expect(s.state).toBe('live')
  })

  it('a 1013 close (the database is down) is a failed attempt: the backoff goes on, nothing is live', () => {
    const s = makeSocket()
    const reconnected = vi.fn()
    s.onReconnect(reconnected)
    s.connect()
    FakeWebSocket.last().open()
    FakeWebSocket.last().fail()
    for (let i = 0; i < 3; i++) {
      vi.advanceTimersByTime(s.nextAttemptAt! - Date.now())
      FakeWebSocket.last().openOnly() // accepted, then closed before `authenticated`
      expect(s.state).not.toBe('live')
      FakeWebSocket.last().fail(CLOSE_TRY_AGAIN_LATER)
    }
    expect(s.failures).toBe(4) // the first drop and three refused attempts
    expect(s.state).toBe('offline')
    expect(reconnected).not.toHaveBeenCalled()
    vi.advanceTimersByTime(8000)
    FakeWebSocket.last().open()
    expect(s.state).toBe('live')
    expect(reconnected).toHaveBeenCalledTimes(1) // owners re-read what they show
  })

  it('a successful reconnection resets the backoff and rebuilds each subscription frame', () => {
    const s = makeSocket()
    let lastSeq = 0
    s.subscribe('logs:d1', () => ({ type: 'subscribe', deployment_id: 'd1', since_seq: lastSeq }), {
      type: 'unsubscribe',
      deployment_id: 'd1',
    })
    const reconnected = vi.fn()
    s.onReconnect(reconnected)
    s.connect()
    FakeWebSocket.last().open()
    lastSeq = 42
    FakeWebSocket.last().fail()
    vi.advanceTimersByTime(1000)
    FakeWebSocket.last().open()
    expect(FakeWebSocket.last().sent[1]).toEqual({ type: 'subscribe', deployment_id: 'd1', since_seq: 42 })
    expect(reconnected).toHaveBeenCalledTimes(1)
    expect(s.failures).toBe(0)
    FakeWebSocket.last().fail()
    vi.advanceTimersByTime(999)
    const count = FakeWebSocket.instances.length
    vi.advanceTimersByTime(1)
    expect(FakeWebSocket.instances.length).toBe(count + 1) // back to the 1 s step
  })

  it('after a 4401 close it refreshes the token once and reconnects with the new one', async () => {
    let token = 'old'
    const refresh = vi.fn(async () => (token = 'new'))
    const s = makeSocket(() => token, refresh)
    s.connect()
    FakeWebSocket.last().open()
    FakeWebSocket.last().fail(CLOSE_UNAUTHORIZED)
    await vi.runOnlyPendingTimersAsync()
    expect(refresh).toHaveBeenCalledTimes(1)
    FakeWebSocket.last().open()
    expect(FakeWebSocket.last().sent[0]).toEqual({ type: 'auth', token: 'new' })
  })

  it('unsubscribing sends the unsubscribe frame and no longer resubscribes', () => {
    const s = makeSocket()
    const stop = s.subscribe('org:o1', () => ({ type: 'subscribe', organization_id: 'o1' }), {
      type: 'unsubscribe',
      organization_id: 'o1',
    })
    s.connect()
    FakeWebSocket.last().open()
    stop()
    expect(FakeWebSocket.last().sent.at(-1)).toEqual({ type: 'unsubscribe', organization_id: 'o1' })
    FakeWebSocket.last().fail()
    vi.advanceTimersByTime(1000)
    FakeWebSocket.last().open()
    expect(FakeWebSocket.last().sent).toEqual([{ type: 'auth', token: 'tok-1' }])
  })

  it('delivers events to listeners but swallows pong and heartbeat', () => {
    const s = makeSocket()
    const seen: string[] = []
    s.onMessage((m) => seen.push(m.type))
    s.connect()
    FakeWebSocket.last().open()
    FakeWebSocket.last().receive({ type: 'pong' })
    FakeWebSocket.last().receive({ type: 'heartbeat', timestamp: '2026-01-01T00:00:00Z' })
    FakeWebSocket.last().receive(progress('d', { progress: 10 }))
    expect(seen).toEqual(['DEPLOYMENT_PROGRESS'])
  })

  it('drops what is not a frame: not JSON, or no string type', () => {
    const s = makeSocket()
    const seen: string[] = []
    s.onMessage((m) => seen.push(m.type))
    s.connect()
    FakeWebSocket.last().open()
    FakeWebSocket.last().receiveRaw('not json')
    FakeWebSocket.last().receiveRaw('[1, 2]')
    FakeWebSocket.last().receiveRaw('{"type": 3}')
    FakeWebSocket.last().receiveRaw('null')
    expect(seen).toEqual([])
  })

  it('a token_expired error frame sends a fresh auth frame instead of reaching the listeners', async () => {
    let token = 'old'
    const s = makeSocket(
      () => token,
      async () => (token = 'fresh'),
    )
    const seen: string[] = []
    s.onMessage((m) => seen.push(m.type))
    s.connect()
    FakeWebSocket.last().open()
    FakeWebSocket.last().receive({
      type: 'error',
      code: 'token_expired',
      detail: 'the token expires soon',
      deployment_id: null,
      organization_id: null,
    })
    await vi.waitFor(() => expect(FakeWebSocket.last().sent.at(-1)).toEqual({ type: 'auth', token: 'fresh' }))
    expect(seen).toEqual([])
  })
})
