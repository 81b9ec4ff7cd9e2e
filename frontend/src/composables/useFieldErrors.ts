import { type Ref, watch } from 'vue'

/**
 * A form's field errors (its own checks at submit, or the API's 422) go as the user edits the field each one is
 * about: a corrected field no longer reads as wrong while the others still do, until the next submit checks
 * them all again. `values` gives each field's value under the key its error has.
 */
export function clearFieldErrorsOnEdit(
  fields: Ref<Partial<Record<string, string>>>,
  values: () => Record<string, unknown>,
): void {
  watch(values, (now, before) => {
    const edited = Object.keys(now).filter((key) => now[key] !== before[key] && fields.value[key])
    if (edited.length)
      fields.value = Object.fromEntries(Object.entries(fields.value).filter(([key]) => !edited.includes(key)))
  })
}
