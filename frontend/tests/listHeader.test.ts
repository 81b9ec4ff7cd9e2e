import { beforeEach, describe, expect, it } from 'vitest'
import { defineComponent, h } from 'vue'
import { flushPromises, mount } from '@vue/test-utils'
import { createPinia, setActivePinia } from 'pinia'
import { createMemoryHistory, createRouter, type Router } from 'vue-router'
import { NInput, NRadioGroup, NSelect } from 'naive-ui'
import { i18n } from '../src/i18n'
import ListHeader from '../src/components/list/ListHeader.vue'
import { filterPatch, filterValue, type ListFilter } from '../src/utils/listFilters'

const SEARCH: ListFilter = { key: 'q', kind: 'search', label: 'Search' }
const ROLE: ListFilter = {
  key: 'role',
  kind: 'select',
  label: 'Role',
  options: [
    { label: 'Viewer', value: 'viewer' },
    { label: 'Owner', value: 'owner' },
  ],
}
const STATUS: ListFilter = { key: 'status', kind: 'select', multiple: true, label: 'Status', options: [] }
const SOURCE: ListFilter = {
  key: 'source',
  kind: 'choice',
  label: 'Source',
  options: [
    { label: 'Catalogue', value: 'catalog', testId: 'tab-catalog' },
    { label: 'Custom', value: 'user', testId: 'tab-custom' },
  ],
  clears: ['saved'],
}

describe('list filters in the URL', () => {
  it('reads each kind from the query', () => {
    expect(filterValue(SEARCH, { q: 'web' })).toBe('web')
    expect(filterValue(SEARCH, { q: '' })).toBeNull()
    expect(filterValue(ROLE, {})).toBeNull()
    expect(filterValue(STATUS, { status: 'failed,running' })).toEqual(['failed', 'running'])
    expect(filterValue(STATUS, { status: ['failed', 'running'] })).toEqual(['failed', 'running'])
    expect(filterValue(STATUS, {})).toEqual([])
    expect(filterValue(SOURCE, {})).toBe('catalog') // a choice shows its default
    expect(filterValue(SOURCE, { source: 'user' })).toBe('user')
  })

  it('writes back: empty values and a choice’s default leave the key out, and clear what they name', () => {
    expect(filterPatch(SEARCH, 'web app ')).toEqual({ q: 'web app ' }) // typed as is (no trim while typing)
    expect(filterPatch(SEARCH, '')).toEqual({ q: null })
    expect(filterPatch(ROLE, null)).toEqual({ role: null })
    expect(filterPatch(STATUS, ['failed', 'running'])).toEqual({ status: 'failed,running' })
    expect(filterPatch(STATUS, [])).toEqual({ status: null })
    expect(filterPatch(SOURCE, 'user')).toEqual({ source: 'user', saved: null })
    expect(filterPatch(SOURCE, 'catalog')).toEqual({ source: null, saved: null })
  })
})

describe('ListHeader', () => {
  let router: Router
  beforeEach(async () => {
    setActivePinia(createPinia())
    i18n.global.locale.value = 'en'
    router = createRouter({
      history: createMemoryHistory(),
      routes: [{ path: '/list', name: 'list', component: { render: () => null } }],
    })
    await router.push('/list?role=owner&saved=s1')
  })

  function mountHeader(props: Record<string, unknown>) {
    const Root = defineComponent({
      render: () =>
        h(ListHeader, props, {
          actions: () => h('button', { 'data-testid': 'add' }, 'Add'),
          notice: () => h('p', { 'data-testid': 'notice' }, 'read this'),
        }),
    })
    return mount(Root, { global: { plugins: [i18n, router] } })
  }

  it('shows the title, the count, the actions, the notice and the error in the user’s language', async () => {
    const wrapper = mountHeader({
      title: 'Members',
      count: '3 members',
      countTestId: 'member-count',
      filters: [SEARCH],
      error: new Error('boom'),
    })
    await flushPromises()
    expect(wrapper.find('h1').text()).toBe('Members')
    expect(wrapper.find('[data-testid=member-count]').text()).toBe('3 members')
    expect(wrapper.find('[data-testid=add]').exists()).toBe(true)
    expect(wrapper.find('[data-testid=notice]').exists()).toBe(true)
    expect(wrapper.find('[data-testid=list-error]').text()).toContain('boom')
    // without a title (a list in a tab): no header row, the filters still
    const bare = mountHeader({ filters: [SEARCH] })
    expect(bare.find('h1').exists()).toBe(false)
    expect(bare.find('[data-testid=list-filters]').exists()).toBe(true)
  })

  it('shows the filters from the URL and puts what is chosen back in it', async () => {
    const wrapper = mountHeader({ title: 'Members', filters: [SEARCH, ROLE, SOURCE] })
    await flushPromises()
    expect(wrapper.findComponent(NSelect).props('value')).toBe('owner')
    expect(wrapper.findComponent(NRadioGroup).props('value')).toBe('catalog')
    expect(wrapper.find('[data-testid=filter-q]').exists()).toBe(true)

    wrapper.findComponent(NInput).vm.$emit('update:value', 'ada')
    await flushPromises()
    expect(router.currentRoute.value.query).toEqual({ role: 'owner', saved: 's1', q: 'ada' })
    wrapper.findComponent(NSelect).vm.$emit('update:value', null)
    await flushPromises()
    expect(router.currentRoute.value.query).toEqual({ saved: 's1', q: 'ada' })
    wrapper.findComponent(NRadioGroup).vm.$emit('update:value', 'user')
    await flushPromises()
    expect(router.currentRoute.value.query).toEqual({ q: 'ada', source: 'user' }) // the highlight is dropped
    expect((wrapper.findComponent(NInput).props('value') as string) ?? '').toBe('ada')
    expect(wrapper.findComponent(NRadioGroup).props('value')).toBe('user')
  })
})
