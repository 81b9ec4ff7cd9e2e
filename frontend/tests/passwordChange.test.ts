import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { defineComponent, h } from 'vue'
import { flushPromises, mount } from '@vue/test-utils'
import { createPinia, setActivePinia } from 'pinia'
import { createMemoryHistory, createRouter } from 'vue-router'
import { NMessageProvider } from 'naive-ui'
import { i18n } from '../src/i18n'
import { useAuthStore } from '../src/stores/auth'
import { passwordChangeProblems } from '../src/utils/password'
import ProfileView from '../src/views/ProfileView.vue'

const ME = {
  id: 'u1',
  email: 'ada@example.com',
  full_name: 'Ada',
  is_active: true,
  is_superuser: false,
  default_organization_id: 'o1',
  memberships: [{ organization_id: 'o1', organization_name: 'Acme', role: 'viewer' }],
}

type Reply = { status: number; body: unknown }
function mockFetch(replies: Reply[]) {
  const calls: { url: string; method: string; body: unknown }[] = []
  vi.stubGlobal(
    'fetch',
    vi.fn(async (req: Request) => {
      calls.push({ url: req.url, method: req.method, body: req.method === 'POST' ? await req.clone().json() : null })
      const reply = replies.shift() ?? { status: 500, body: { detail: 'unexpected request' } }
      return new Response(JSON.stringify(reply.body), {
        status: reply.status,
        headers: { 'Content-Type': 'application/json' },
      })
    }),
  )
  return calls
}

describe('password change: checks before sending', () => {
  it('requires the current password, 8 to 128 characters, a different new one and a matching confirmation', () => {
    expect(passwordChangeProblems({ current: '', next: 'short', confirm: 'other' })).toEqual({
      current: { key: 'validation.required' },
      next: { key: 'validation.minLength', n: 8 },
      confirm: { key: 'setup.mismatch' },
    })
    expect(
      passwordChangeProblems({ current: 'old-password', next: 'x'.repeat(129), confirm: 'x'.repeat(129) }).next,
    ).toEqual({ key: 'validation.maxLength', n: 128 })
    expect(
      passwordChangeProblems({ current: 'same-password', next: 'same-password', confirm: 'same-password' }).next,
    ).toEqual({ key: 'profile.samePassword' })
    expect(
      passwordChangeProblems({ current: 'old-password', next: 'new-password-1', confirm: 'new-password-1' }),
    ).toEqual({})
  })
})

describe('password change: the profile form', () => {
  beforeEach(() => {
    localStorage.clear()
    localStorage.setItem('windflow.access', 'old-access')
    localStorage.setItem('windflow.refresh', 'old-refresh')
    setActivePinia(createPinia())
    i18n.global.locale.value = 'en'
  })
  afterEach(() => vi.unstubAllGlobals())

  async function mountProfile() {
    const auth = useAuthStore()
    auth.me = ME as never
    const router = createRouter({
      history: createMemoryHistory(),
      routes: [{ path: '/profile', name: 'profile', component: ProfileView }],
    })
    await router.push('/profile')
    const Root = defineComponent({ render: () => h(NMessageProvider, null, { default: () => h(ProfileView) }) })
    const wrapper = mount(Root, { global: { plugins: [i18n, router] }, attachTo: document.body })
    const fill = async (name: string, value: string) => wrapper.find(`input[name=${name}]`).setValue(value)
    const submit = async () => {
      await wrapper.find('form').trigger('submit')
      await flushPromises()
    }
    const feedback = (testid: string) => wrapper.find(`[data-testid=${testid}]`).text()
    return { wrapper, fill, submit, feedback }
  }

  it('shows each problem beside its field and sends nothing', async () => {
    const calls = mockFetch([])
    const { fill, submit, feedback, wrapper } = await mountProfile()
    await fill('current_password', '')
    await fill('new_password', 'short')
    await fill('confirm_password', 'different')
    await submit()
    expect(feedback('field-current-password')).toContain('Required')
    expect(feedback('field-new-password')).toContain('At least 8 characters')
    expect(feedback('field-confirm-password')).toContain('The passwords differ')
    expect(calls).toEqual([])
    wrapper.unmount()
  })

  it('sends the current and new password, keeps the new token pair, and clears the form', async () => {
    const calls = mockFetch([
      { status: 200, body: { access_token: 'new-access', refresh_token: 'new-refresh', token_type: 'bearer' } },
    ])
    const { fill, submit, wrapper } = await mountProfile()
    await fill('current_password', 'old-password')
    await fill('new_password', 'new-password-1')
    await fill('confirm_password', 'new-password-1')
    await submit()
    expect(calls).toHaveLength(1)
    expect(calls[0].url).toMatch(/\/api\/v1\/auth\/password$/)
    expect(calls[0].method).toBe('POST')
    expect(calls[0].body).toEqual({ current_password: 'old-password', new_password: 'new-password-1' })
    expect(localStorage.getItem('windflow.access')).toBe('new-access')
    expect(localStorage.getItem('windflow.refresh')).toBe('new-refresh')
    expect((wrapper.find('input[name=new_password]').element as HTMLInputElement).value).toBe('')
    wrapper.unmount()
  })

  it("puts the API's refusals beside the field they concern", async () => {
    mockFetch([
      { status: 403, body: { detail: 'the current password is incorrect', code: 'invalid_credentials' } },
      {
        status: 422,
        body: {
          detail: 'new_password: too weak',
          code: 'validation_error',
          errors: [{ field: 'new_password', message: 'too weak' }],
        },
      },
    ])
    const { fill, submit, feedback, wrapper } = await mountProfile()
    await fill('current_password', 'wrong-password')
    await fill('new_password', 'new-password-1')
    await fill('confirm_password', 'new-password-1')
    await submit()
    expect(feedback('field-current-password')).toContain('the current password is incorrect')
    expect(localStorage.getItem('windflow.access')).toBe('old-access')
    await submit()
    expect(feedback('field-new-password')).toContain('too weak')
    expect(feedback('field-current-password')).not.toContain('incorrect')
    wrapper.unmount()
  })
})
