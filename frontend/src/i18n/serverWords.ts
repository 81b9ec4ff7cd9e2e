/**
 * Words the server says as text that has a fixed set of values, shown in the user's language: a deployment's
 * steps (the runner's titles, `backend/app/services/deployments/runner.py::STEPS`, kept in step by a backend
 * test), why a connection test failed (its `category`), why a real-time frame was refused (its `code`), why
 * the services' output ended (its `code`).
 * Anything not known here is shown as the server wrote it.
 */
import { i18n } from '.'
import { ApiError } from '../api/errors'

/** The runner's step titles, by the name of the step (`steps.<name>` in the catalogues). */
export const STEP_KEYS: Readonly<Record<string, string>> = {
  'Validate configuration': 'validate',
  'Prepare project directory': 'prepare',
  'Check images': 'ensure_images',
  'Create networks and volumes': 'create_resources',
  'Start services': 'start_services',
  'Wait until services are running and healthy': 'wait_healthy',
}

function known(key: string): boolean {
  const g = i18n.global
  return g.te(key, g.locale.value)
}

/** A step's title in the user's language (the server's own title when it is not a known step). */
export function stepText(title: string | null | undefined): string {
  if (!title) return ''
  const key = STEP_KEYS[title]
  return key && known(`steps.${key}`) ? i18n.global.t(`steps.${key}`) : title
}

/** Why a target's connection test failed, from its category (the server's fixed message otherwise). */
export function testFailureText(result: { category?: string | null; error?: string | null }): string {
  const key = `targets.failure.${result.category}`
  return result.category && known(key) ? i18n.global.t(key) : (result.error ?? '?')
}

/** A real-time `error` frame (`{code, detail}`) in the user's language, as an API error with that code. */
export function frameErrorText(frame: { code?: string | null; detail?: string | null }): string {
  return new ApiError(0, frame.detail || 'error', frame.code || 'error').text
}

/** Why the services' output ended (`SERVICE_LOGS_END`), from its code: the server's words otherwise. */
export function servicesEndText(data: {
  reason: string
  code?: string | null
  params?: Record<string, string>
}): string {
  const key = `logs.ended.${data.code}`
  if (!data.code || !known(key)) return data.reason
  const status = data.params?.status
  const named =
    status && known(`status.${status}`) ? i18n.global.t(`status.${status}`).toLocaleLowerCase() : (status ?? '')
  return i18n.global.t(key, { status: named })
}
