import { afterEach, describe, expect, it, vi } from 'vitest'
import { defineComponent, h } from 'vue'
import { flushPromises, mount } from '@vue/test-utils'
import { NMessageProvider } from 'naive-ui'
import { i18n } from '../src/i18n'
import ServicesPanel from '../src/components/deployment/ServicesPanel.vue'
import { composeServices, imageSize, serviceRows, splitImage } from '../src/utils/services'

const DIGEST = 'sha256:' + '0123456789abcdef'.repeat(4)
const COMPOSE = `services:
  api:
    image: 127.0.0.1:5000/team/api:1.4
  cache:
    image: redis@sha256:${'b'.repeat(64)}
  worker:
    image: busybox
`

function panel(rows: ReturnType<typeof serviceRows>) {
  return mount(
    defineComponent(() => () => h(NMessageProvider, null, () => h(ServicesPanel, { rows, revision: 2, every: 10 }))),
    { global: { plugins: [i18n] }, attachTo: document.body },
  )
}

describe('the Services card: image, tag, pinned digest and size per service', () => {
  afterEach(() => {
    i18n.global.locale.value = 'en'
    vi.unstubAllGlobals()
    document.body.innerHTML = ''
  })

  it('splits a reference into repository and tag as Docker reads it', () => {
    expect(splitImage('127.0.0.1:5000/team/api:1.4')).toEqual({ repository: '127.0.0.1:5000/team/api', tag: '1.4' })
    expect(splitImage('127.0.0.1:5000/team/api')).toEqual({ repository: '127.0.0.1:5000/team/api', tag: 'latest' })
    expect(splitImage('busybox')).toEqual({ repository: 'busybox', tag: 'latest' })
    expect(splitImage(`redis@sha256:${'b'.repeat(64)}`)).toEqual({ repository: 'redis', tag: null })
    expect(splitImage(`redis:7@sha256:${'b'.repeat(64)}`)).toEqual({ repository: 'redis', tag: '7' })
    expect(imageSize(4_261_888)).toBe('4.3 MB')
    expect(imageSize(812_000)).toBe('812 kB')
    expect(imageSize(1_203_000_000)).toBe('1.20 GB')
  })

  it('shows each service its repository, tag, short digest (full one copied) and size, in en and fr', async () => {
    const writeText = vi.fn(async () => {})
    vi.stubGlobal('navigator', { ...navigator, clipboard: { writeText } })
    const rows = serviceRows(
      composeServices(COMPOSE),
      [{ service: 'api', image: '127.0.0.1:5000/team/api:1.4', digest: DIGEST, size: 4_261_888 }],
      null,
    )
    const wrapper = panel(rows)
    const api = wrapper.find('[data-testid="service-api"]')
    expect(api.find('[data-testid="service-image"]').text()).toBe('127.0.0.1:5000/team/api')
    expect(api.find('[data-testid="service-tag"]').text()).toBe('1.4')
    const digest = api.find('[data-testid="service-digest"]')
    expect(digest.attributes('data-digest')).toBe(DIGEST)
    expect(digest.text()).toContain('sha256:0123456789ab')
    expect(digest.text()).not.toContain(DIGEST) // short on the card; the full one in the tooltip and the copy
    expect(api.find('[data-testid="service-size"]').text()).toBe('4.3 MB')
    await api.find('[data-testid="service-copy-digest"]').trigger('click')
    await flushPromises()
    expect(writeText).toHaveBeenCalledWith(DIGEST)

    // not pulled by WindFlow yet: no digest, no size; a reference pinned by digest has no tag
    const cache = wrapper.find('[data-testid="service-cache"]')
    expect(cache.find('[data-testid="service-digest"]').text()).toBe('not recorded')
    expect(cache.find('[data-testid="service-size"]').exists()).toBe(false)
    expect(cache.find('[data-testid="service-tag"]').text()).toBe('none (pinned by digest)')
    expect(wrapper.find('[data-testid="service-worker"] [data-testid="service-tag"]').text()).toBe('latest')
    expect(wrapper.text()).toContain('Tag')
    expect(wrapper.text()).toContain('Size')

    i18n.global.locale.value = 'fr'
    await flushPromises()
    expect(wrapper.text()).toContain('Taille')
    expect(wrapper.text()).toContain('Empreinte')
    expect(cache.find('[data-testid="service-digest"]').text()).toBe('non enregistrée')
    wrapper.unmount()
  })
})
