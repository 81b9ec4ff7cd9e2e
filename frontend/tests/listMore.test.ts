import { describe, expect, it } from 'vitest'
import { mount } from '@vue/test-utils'
import { i18n } from '../src/i18n'
import ListMore from '../src/components/list/ListMore.vue'

describe('ListMore', () => {
  it('is clicked while its list loads (a live reload): the click reaches the list, which does it after the reload', async () => {
    const w = mount(ListMore, { props: { hasMore: true, loading: true }, global: { plugins: [i18n] } })
    const button = w.get('[data-testid=load-more]')
    await button.trigger('click')
    expect(w.emitted('more')).toHaveLength(1)
    expect(button.attributes('aria-busy')).toBe('true')
    expect(button.find('.n-spin').exists()).toBe(true) // it says something loads
  })

  it('is not shown when there is nothing more', () => {
    const w = mount(ListMore, { props: { hasMore: false, loading: false }, global: { plugins: [i18n] } })
    expect(w.find('[data-testid=load-more]').exists()).toBe(false)
  })
})
