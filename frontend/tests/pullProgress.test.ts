import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { effectScope } from 'vue'
import { mount } from '@vue/test-utils'
import { createPinia, setActivePinia } from 'pinia'
import { i18n } from '../src/i18n'
import PullProgressList from '../src/components/logs/PullProgressList.vue'
import { RealtimeSocket } from '../src/realtime/socket'
import type { FrameOf } from '../src/realtime/frames'
import { setSocket } from '../src/stores/realtime'
import { setFrameScheduler, useDeploymentWebSocket, type PullProgress } from '../src/composables/useDeploymentWebSocket'
import { FakeWebSocket } from './fakeSocket'
import { statusChanged } from './frames'

function pull(image: string, over: Partial<PullProgress> = {}): PullProgress {
  return {
    image,
    status: 'downloading',
    current_bytes: 0,
    total_bytes: 0,
    layers_done: 0,
    layers_total: 0,
    ...over,
  }
}

function pullFrame(id: string, data: PullProgress): FrameOf<'DEPLOYMENT_PULL_PROGRESS'> {
  return {
    type: 'DEPLOYMENT_PULL_PROGRESS',
    deployment_id: id,
    organization_id: 'o1',
    timestamp: '2026-01-01T00:00:00Z',
    data,
  }
}

describe('pull progress in the logs drawer', () => {
  let scope: ReturnType<typeof effectScope>
  beforeEach(() => {
    vi.useFakeTimers()
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
    i18n.global.locale.value = 'en'
  })

  it("keeps each image's latest state, in the order the images started, for this deployment only", () => {
    const live = scope.run(() => useDeploymentWebSocket('d1'))!
    const ws = FakeWebSocket.last()
    ws.open()
    ws.receive(
      pullFrame('d1', pull('reg/app:1', { current_bytes: 1_000_000, total_bytes: 8_000_000, layers_total: 3 })),
    )
    ws.receive(pullFrame('d1', pull('reg/db:2', { status: 'pulling' })))
    ws.receive(pullFrame('other', pull('reg/else:3')))
    ws.receive(
      pullFrame(
        'd1',
        pull('reg/app:1', {
          status: 'extracting',
          current_bytes: 8_000_000,
          total_bytes: 8_000_000,
          layers_done: 2,
          layers_total: 3,
        }),
      ),
    )
    expect(live.pulls.value.map((p) => [p.image, p.status, p.current_bytes, p.layers_done])).toEqual([
      ['reg/app:1', 'extracting', 8_000_000, 2],
      ['reg/db:2', 'pulling', 0, 0],
    ])
    // a retry (back to pending) pulls again: the list starts over
    ws.receive(statusChanged('d1', 'pending', 'deploying'))
    expect(live.pulls.value).toEqual([])
  })

  it('shows each image with its status, bytes, layers and bar, in English and in French', () => {
    const pulls = [
      pull('registry.example.com/team/api:1.4', {
        current_bytes: 12_345_678,
        total_bytes: 64_000_000,
        layers_done: 3,
        layers_total: 5,
      }),
      pull('busybox:1.36', {
        status: 'pulled',
        current_bytes: 2_000_000,
        total_bytes: 2_000_000,
        layers_done: 1,
        layers_total: 1,
      }),
    ]
    const wrapper = mount(PullProgressList, { props: { pulls }, global: { plugins: [i18n] } })
    const rows = wrapper.findAll('[data-testid=pull-row]')
    expect(rows.map((r) => r.attributes('data-image'))).toEqual(['registry.example.com/team/api:1.4', 'busybox:1.36'])
    expect(rows[0].find('[data-testid=pull-status]').text()).toBe('downloading')
    expect(rows[0].find('[data-testid=pull-figures]').text().replace(/\s+/g, ' ')).toBe('12.3 of 64.0 MB · 3/5 layers')
    expect(rows[0].find('[role=progressbar]').attributes('aria-valuenow')).toBe('19')
    expect(rows[1].find('[data-testid=pull-status]').text()).toBe('pulled')
    expect(rows[1].find('[role=progressbar]').attributes('aria-valuenow')).toBe('100')

    i18n.global.locale.value = 'fr'
    const fr = mount(PullProgressList, { props: { pulls }, global: { plugins: [i18n] } })
    const first = fr.findAll('[data-testid=pull-row]')[0]
    expect(first.find('[data-testid=pull-status]').text()).toBe('téléchargement')
    expect(first.find('[data-testid=pull-figures]').text().replace(/\s+/g, ' ')).toBe('12.3 sur 64.0 Mo · 3/5 couches')
    expect(fr.find('[data-testid=pull-list]').attributes('aria-label')).toBe('Images en cours de téléchargement')
  })

  it('an image whose size is not known yet is at 0 %', () => {
    const wrapper = mount(PullProgressList, {
      props: { pulls: [pull('reg/x:1', { status: 'pulling' })] },
      global: { plugins: [i18n] },
    })
    expect(wrapper.find('[data-testid=pull-status]').text()).toBe('waiting for the registry')
    expect(wrapper.find('[data-testid=pull-figures]').text().replace(/\s+/g, ' ')).toBe('0.0 of 0.0 MB · 0/0 layers')
    expect(wrapper.find('[role=progressbar]').attributes('aria-valuenow')).toBe('0')
  })
})
