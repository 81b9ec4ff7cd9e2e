/**
 * The system pages' data over the typed client: workers and execution mode, recovery, health.
 *
 * These routes declare no response model (the schema types them as free-form objects), so the shapes the
 * page reads are written down here, once, and the answers are read into them.
 */
import { api, unwrap } from './client'
import { workerProblemText } from '../i18n/serverWords'

export interface Worker {
  name: string
  kind: string
  hostname: string
  pid: number
  concurrency: number
  last_seen: string
  alive: boolean
  /** `healthy`, `degraded` (alive but executing nothing: `problem` says why) or `gone` */
  state?: 'healthy' | 'degraded' | 'gone'
  problem?: string | null
  /** `problem` as codes with their params (the UI words them: `system.problems`) */
  problems?: { code: string; params?: Record<string, unknown> }[]
  live_processes?: number | null
  /** the targets it declares (`WORKER_TARGETS`: ids, `*` for the shared queue); null for non-superusers */
  targets?: string[] | null
}

/** How a worker's state reads: a degraded worker (alive, executing nothing) never reads as healthy. */
export function workerState(w: Worker): {
  label: 'alive' | 'degraded' | 'gone'
  type: 'success' | 'error' | 'default'
  problem: string | null
} {
  if (!w.alive) return { label: 'gone', type: 'default', problem: null }
  if (w.state === 'degraded') return { label: 'degraded', type: 'error', problem: workerProblemText(w) }
  return { label: 'alive', type: 'success', problem: null }
}

export interface Workers {
  execution_mode: string
  /** in English; `reason_code` and `reason_params` word it in the user's language (`system.reasons`) */
  reason: string | null
  reason_code?: string | null
  reason_params?: Record<string, unknown> | null
  broker: string | null
  broker_ok: boolean | null
  workers: Worker[]
  embedded_worker: unknown
}

export interface Recovery {
  last: Record<string, unknown> | null
  totals: Record<string, number>
}

/** `/health`: only the parts the page shows are named. */
export interface Health {
  status?: string
  database?: { kind?: string; status?: string } & Record<string, unknown>
  event_bus?: ({ transport?: string; connected?: boolean } & Record<string, unknown>) | null
  [key: string]: unknown
}

export async function getWorkers(): Promise<Workers> {
  return (await unwrap(api.GET('/api/v1/system/workers'))) as unknown as Workers
}

export async function getRecovery(): Promise<Recovery> {
  return (await unwrap(api.GET('/api/v1/system/recovery'))) as unknown as Recovery
}

/** Run recovery now (superusers); no body: the server's default ages. */
export async function runRecovery(): Promise<void> {
  await unwrap(api.POST('/api/v1/system/recovery'))
}

export async function getHealth(): Promise<Health> {
  // /health answers 503 with the same body when the database is down: the page shows it either way.
  const { data, error } = await api.GET('/health')
  return (data ?? error ?? {}) as Health
}
