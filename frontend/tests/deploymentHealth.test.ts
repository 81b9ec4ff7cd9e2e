import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { mount } from '@vue/test-utils'
import { createPinia, setActivePinia } from 'pinia'
import { i18n } from '../src/i18n'
import HealthMark from '../src/components/deployment/HealthMark.vue'
import type { components } from '../src/api/schema'
import type { FrameOf } from '../src/realtime/frames'
import { RealtimeSocket } from '../src/realtime/socket'
import { setSocket } from '../src/stores/realtime'
import { useDeploymentsStore } from '../src/stores/deployments'
import { FakeWebSocket } from './fakeSocket'
import { deployment } from './frames'

type ServiceHealth = components['schemas']['ServiceHealthData']
const WEB_DOWN: ServiceHealth = {
  service: 'web',
  state: 'down',
  expected: 1,
  running: 0,
  restarts: 0,
  reason: 'exited with code 137',
}
const WORKER_UP: ServiceHealth = { service: 'worker', state: 'up', expected: 1, running: 1, restarts: 0, reason: null }

function healthChanged(id: string, health: 'healthy' | 'degraded' | 'down'): FrameOf<'DEPLOYMENT_HEALTH_CHANGED'> {
  return {
    type: 'DEPLOYMENT_HEALTH_CHANGED',
    deployment_id: id,
    organization_id: 'o1',
    timestamp: '2026-01-01T00:00:05Z',
    data: {
      health,
      previous: 'healthy',
      status: 'running',
      revision: 1,
      message: 'service web exited with code 137',
      services: [WEB_DOWN, WORKER_UP],
    },
  }
}

describe('what the watcher saw after the gate', () => {
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

  it('a health change marks the row at once, and its message comes with one read', async () => {
    const degraded = 'revision 1 is degraded: service web exited with code 137'
    const calls: string[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        calls.push(req.url)
        const body = req.url.includes('/api/v1/deployments/a')
          ? deployment('a', { status: 'running', health: 'degraded', error_message: degraded })
          : { items: [deployment('a', { status: 'running', health: 'healthy' })], total: 1 }
        return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } })
      }),
    )
    const store = useDeploymentsStore()
    await store.load('o1', { status: [], stack_id: null, target_id: null })
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(healthChanged('a', 'degraded'))
    expect(store.byId.a.health).toBe('degraded')
    expect(store.byId.a.service_health?.map((s) => s.state)).toEqual(['down', 'up'])
    await vi.waitFor(() => expect(store.byId.a.error_message).toBe(degraded))
    expect(calls.filter((u) => u.includes('/api/v1/deployments/a'))).toHaveLength(1)
  })

  it('the mark names the services that are not up, and says nothing of a healthy deployment', () => {
    const mark = mount(HealthMark, {
      props: { health: 'degraded', services: [WEB_DOWN, WORKER_UP] },
      global: { plugins: [i18n] },
    })
    const tag = mark.get('[data-testid="health-mark"]')
    expect(tag.text()).toBe('Degraded')
    expect(tag.attributes('title')).toBe('web: down (exited with code 137)')
    const down = mount(HealthMark, { props: { health: 'down', services: [WEB_DOWN] }, global: { plugins: [i18n] } })
    expect(down.get('[data-testid="health-mark"]').attributes('data-health')).toBe('down')
    expect(mount(HealthMark, { props: { health: 'healthy', services: [] }, global: { plugins: [i18n] } }).html()).toBe(
      '<!--v-if-->',
    )
  })
})
