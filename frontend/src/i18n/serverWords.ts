/**
 * Words the server says as text that has a fixed set of values, shown in the user's language: a deployment's
 * steps (the runner's titles, `backend/app/services/deployments/runner.py::STEPS`, kept in step by a backend
 * test), why a connection test failed (its `category`), why a real-time frame was refused (its `code`), why
 * the services' output ended (its `code`), why deployments run where they do (the execution mode's `reason_code`)
 * and why a worker is degraded (its `problems`' codes).
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

/** A coded server word (`{code, params}`) from `catalogue.<code>`, or null when the catalogue lacks it. */
function coded(
  catalogue: string,
  code: string | null | undefined,
  params: Record<string, unknown> = {},
): string | null {
  const key = `${catalogue}.${code}`
  if (!code || !known(key)) return null
  const named: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(params)) named[k] = v ?? ''
  return i18n.global.t(key, named)
}

/** Why deployments run where they do (`/system/workers`' `reason_code` and `reason_params`). */
export function modeReasonText(w: {
  reason: string | null
  reason_code?: string | null
  reason_params?: Record<string, unknown> | null
}): string {
  return coded('system.reasons', w.reason_code, w.reason_params ?? {}) ?? w.reason ?? '—'
}

/** Why a worker is degraded: each of its coded `problems`, else the server's text. */
export function workerProblemText(w: {
  problem?: string | null
  problems?: { code: string; params?: Record<string, unknown> }[] | null
}): string | null {
  const parts = (w.problems ?? []).map((p) => coded('system.problems', p.code, p.params ?? {}))
  if (parts.length && parts.every((p) => p !== null)) return parts.join(' ')
  return w.problem ?? null
}
