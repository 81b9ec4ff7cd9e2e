import { describe, expect, it } from 'vitest'
import { effectScope, nextTick, reactive, ref } from 'vue'
import { clearFieldErrorsOnEdit } from '../src/composables/useFieldErrors'

function form() {
  const values = reactive({ email: 'a@example.com', password: 'short', name: '' })
  const fields = ref<Record<string, string>>({})
  const scope = effectScope()
  scope.run(() => clearFieldErrorsOnEdit(fields, () => ({ ...values })))
  return { values, fields, scope }
}

describe('field errors cleared on edit', () => {
  it('drops the error of the field edited and keeps the others', async () => {
    const { values, fields, scope } = form()
    fields.value = { password: 'At least 8 characters', email: 'Enter an email address' }
    values.password = 'a-long-enough-password'
    await nextTick()
    expect(fields.value).toEqual({ email: 'Enter an email address' })
    values.email = 'b@example.com'
    await nextTick()
    expect(fields.value).toEqual({})
    scope.stop()
  })

  it('leaves the errors alone when a field without one changes', async () => {
    const { values, fields, scope } = form()
    fields.value = { password: 'At least 8 characters' }
    const shown = fields.value
    values.name = 'New Comer'
    await nextTick()
    expect(fields.value).toBe(shown) // not even replaced by an equal copy
    scope.stop()
  })

  it('shows a submit’s errors again until that field is edited', async () => {
    const { values, fields, scope } = form()
    fields.value = { password: 'At least 8 characters' }
    values.password = 'still'
    await nextTick()
    expect(fields.value).toEqual({})
    fields.value = { password: 'At least 8 characters' } // submitted again, still too short
    await nextTick()
    expect(fields.value).toEqual({ password: 'At least 8 characters' })
    scope.stop()
  })
})
