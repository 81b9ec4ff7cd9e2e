import { describe, expect, it } from 'vitest'
import { h } from 'vue'
import { mount } from '@vue/test-utils'
import { NForm, NInput } from 'naive-ui'
import FormField from '../src/components/FormField.vue'

/** The UI's sources, as text. */
const SOURCES = import.meta.glob('../src/**/*.vue', { query: '?raw', import: 'default', eager: true }) as Record<
  string,
  string
>

function field(props: Record<string, unknown>) {
  return mount({
    render: () => h(NForm, null, () => h(FormField, { label: 'Name', ...props }, () => h(NInput, { value: 'x' }))),
  })
}

describe('FormField', () => {
  it('shows the error under its input, in the error state, rather than the hint', () => {
    const w = field({ error: 'At most 100 characters', hint: 'What the thing is called', 'data-testid': 'field-name' })
    const item = w.get('[data-testid=field-name]')
    expect(item.text()).toContain('Name')
    expect(item.get('.n-form-item-feedback').text()).toBe('At most 100 characters')
    expect(item.find('.n-form-item-feedback--error').exists()).toBe(true)
    expect(item.text()).not.toContain('What the thing is called')
  })

  it('shows the hint while there is no error, not as an error', () => {
    const w = field({ error: null, hint: 'What the thing is called' })
    expect(w.get('.n-form-item-feedback').text()).toBe('What the thing is called')
    expect(w.find('.n-form-item-feedback--error').exists()).toBe(false)
  })

  it('passes other attributes to the form item (a required mark)', () => {
    expect(field({ required: true }).find('.n-form-item-label__asterisk').exists()).toBe(true)
    expect(field({}).find('.n-form-item-label__asterisk').exists()).toBe(false)
  })

  it('is how every form builds its fields: no page uses the bare form item', () => {
    const bare = Object.entries(SOURCES)
      .filter(([path, text]) => !path.endsWith('/FormField.vue') && text.includes('<NFormItem'))
      .map(([path]) => path)
    expect(Object.keys(SOURCES).length).toBeGreaterThan(20) // the sources were read
    expect(bare).toEqual([])
  })
})
