/**
 * Deployments over the typed client: listing, one deployment, its settings, lifecycle actions, history, compose,
 * logs (its revisions: revisions.ts).
 */
import { api, unwrap } from './client'
import type { Page, PageQuery } from './paging'
import type { components } from './schema'
import { LOG_LEVELS, type DeploymentAction, type DeploymentStatus, type LogLevel } from '../constants/deployments'

type S = components['schemas']

export type Deployment = S['DeploymentRead']
export type NewDeployment = S['DeploymentCreate']
export type DeploymentSettings = S['DeploymentUpdate']
export type HistoryEntry = S['HistoryRead']

/** One persisted line of a deployment's log, as the drawer shows it (from HTTP or from the socket). */
export interface LogLine {
  seq: number
  timestamp: string
  level: LogLevel
  message: string
  /** When WindFlow wrote the line: its sentence's code and the values it quotes (i18n/deploymentWords.ts). */
  code?: string | null
  params?: Record<string, string> | null
}

export interface DeploymentFilters {
  status: DeploymentStatus[]
  stack_id: string | null
  target_id: string | null
}

export function listDeployments(
  organizationId: string | null,
  filters: DeploymentFilters,
  page: PageQuery,
): Promise<Page<Deployment>> {
  const query = {
    organization_id: organizationId ?? undefined,
    status: filters.status.length ? filters.status : undefined,
    stack_id: filters.stack_id ?? undefined,
    target_id: filters.target_id ?? undefined,
    ...page,
  }
  return unwrap(api.GET('/api/v1/deployments', { params: { query } }))
}

export function getDeployment(id: string): Promise<Deployment> {
  return unwrap(api.GET('/api/v1/deployments/{deployment_id}', { params: { path: { deployment_id: id } } }))
}

export function createDeployment(body: NewDeployment): Promise<Deployment> {
  return unwrap(api.POST('/api/v1/deployments', { body }))
}

/** Changes a deployment's settings (`auto_rollback`); its inputs change through a new revision (revisions.ts). */
export function updateDeployment(id: string, body: DeploymentSettings): Promise<Deployment> {
  return unwrap(api.PATCH('/api/v1/deployments/{deployment_id}', { params: { path: { deployment_id: id } }, body }))
}

/** Accepted (202): the deployment as it is now, ``deleting``; its row goes with DEPLOYMENT_DELETED. */
export async function deleteDeployment(id: string): Promise<Deployment> {
  return unwrap(api.DELETE('/api/v1/deployments/{deployment_id}', { params: { path: { deployment_id: id } } }))
}

/** A lifecycle action other than delete: the deployment as it is after the transition. */
export function act(id: string, action: Exclude<DeploymentAction, 'delete'>): Promise<Deployment> {
  const params = { path: { deployment_id: id } }
  switch (action) {
    case 'stop':
      return unwrap(api.POST('/api/v1/deployments/{deployment_id}/stop', { params }))
    case 'start':
      return unwrap(api.POST('/api/v1/deployments/{deployment_id}/start', { params }))
    case 'redeploy':
      return unwrap(api.POST('/api/v1/deployments/{deployment_id}/redeploy', { params }))
    case 'retry':
      return unwrap(api.POST('/api/v1/deployments/{deployment_id}/retry', { params }))
    case 'cancel':
      return unwrap(api.POST('/api/v1/deployments/{deployment_id}/cancel', { params }))
  }
}

export function getHistory(id: string): Promise<HistoryEntry[]> {
  return unwrap(api.GET('/api/v1/deployments/{deployment_id}/history', { params: { path: { deployment_id: id } } }))
}

export type DeploymentServices = S['DeploymentServices']

/** The deployment's containers by service, as its target's engine reports them now. */
export function getServices(id: string): Promise<DeploymentServices> {
  return unwrap(api.GET('/api/v1/deployments/{deployment_id}/services', { params: { path: { deployment_id: id } } }))
}

/** The rendered compose document the deployment runs (secret values shown as ***). */
export async function getCompose(id: string): Promise<string> {
  const res = await unwrap(
    api.GET('/api/v1/deployments/{deployment_id}/compose', { params: { path: { deployment_id: id } } }),
  )
  return res.compose
}

// --- logs ---------------------------------------------------------------------------------------

export const LOG_PAGE = 5000
const KNOWN_LEVELS: ReadonlySet<string> = new Set(LOG_LEVELS)

/** A level as the UI knows it: "warn" is a warning, "critical"/"fatal" an error, anything else info. */
export function normaliseLevel(level: unknown): LogLevel {
  const l = String(level ?? 'info').toLowerCase()
  if (l === 'warn') return 'warning'
  if (l === 'critical' || l === 'fatal') return 'error'
  return l === 'debug' || l === 'warning' || l === 'error' ? l : 'info'
}

/**
 * A persisted line (`LogLineRead` over HTTP, `LogLineData` in a socket frame, whose level is free text) as a
 * LogLine. The object is normalised in place, not copied: at 100,000 lines one object per line less matters
 * to the garbage collector.
 */
export function toLogLine(raw: S['LogLineRead'] | S['LogLineData']): LogLine {
  if (!KNOWN_LEVELS.has(raw.level)) raw.level = normaliseLevel(raw.level)
  return raw as LogLine
}

/** Up to `limit` persisted lines after `sinceSeq`. */
export async function getLogs(id: string, sinceSeq: number, limit = LOG_PAGE): Promise<LogLine[]> {
  const page = await unwrap(
    api.GET('/api/v1/deployments/{deployment_id}/logs', {
      params: { path: { deployment_id: id }, query: { since_seq: sinceSeq, limit } },
    }),
  )
  return page.items.map(toLogLine)
}

/** Every persisted line of a deployment, not only those loaded in the drawer. */
export async function getWholeLog(id: string): Promise<LogLine[]> {
  const all: LogLine[] = []
  let since = 0
  for (let page = 0; page < 10_000; page++) {
    const items = await getLogs(id, since)
    all.push(...items)
    if (items.length < LOG_PAGE) break
    since = items[items.length - 1].seq
  }
  return all
}
