/** Checks of the self-service password change, before anything is sent (the API checks again). */
export interface PasswordChangeForm {
  current: string
  next: string
  confirm: string
}

export type PasswordField = keyof PasswordChangeForm
export type PasswordProblem =
  | { key: 'validation.required' }
  | { key: 'validation.minLength'; n: number }
  | { key: 'validation.maxLength'; n: number }
  | { key: 'setup.mismatch' }
  | { key: 'profile.samePassword' }

export const PASSWORD_MIN = 8
export const PASSWORD_MAX = 128

/** The problem of each field, as i18n keys with their parameters; empty when the form can be sent. */
export function passwordChangeProblems(form: PasswordChangeForm): Partial<Record<PasswordField, PasswordProblem>> {
  const out: Partial<Record<PasswordField, PasswordProblem>> = {}
  if (!form.current) out.current = { key: 'validation.required' }
  if (form.next.length < PASSWORD_MIN) out.next = { key: 'validation.minLength', n: PASSWORD_MIN }
  else if (form.next.length > PASSWORD_MAX) out.next = { key: 'validation.maxLength', n: PASSWORD_MAX }
  else if (form.current && form.next === form.current) out.next = { key: 'profile.samePassword' }
  if (form.confirm !== form.next) out.confirm = { key: 'setup.mismatch' }
  return out
}

/** Where the API's error of a field goes in the form. */
export const API_FIELD: Record<string, PasswordField> = {
  current_password: 'current',
  new_password: 'next',
  'body.current_password': 'current',
  'body.new_password': 'next',
}
