/** The deployment status vocabulary, mirroring backend/app/models/enums.py. */
import type { components } from '../api/schema'

export type DeploymentStatus = components['schemas']['DeploymentStatus']
export type LogLevel = components['schemas']['LogLevel']

export const STATUSES: readonly DeploymentStatus[] = [
  'pending',
  'deploying',
  'running',
  'failed',
  'stopped',
  'cancelled',
  'stopping',
  'deleting',
]
/** A stop or delete the API accepted (202): an executor takes the containers down in the background. */
export const TEARDOWN: ReadonlySet<DeploymentStatus> = new Set(['stopping', 'deleting'])
/** Some executor still has to work on these. */
export const ACTIVE: ReadonlySet<DeploymentStatus> = new Set(['pending', 'deploying', 'stopping', 'deleting'])
export const SETTLED: ReadonlySet<DeploymentStatus> = new Set(['running', 'failed', 'stopped', 'cancelled'])

export function isStatus(value: unknown): value is DeploymentStatus {
  return typeof value === 'string' && (STATUSES as readonly string[]).includes(value)
}
export const isActive = (s: DeploymentStatus): boolean => ACTIVE.has(s)

export type DeploymentAction = 'stop' | 'start' | 'redeploy' | 'retry' | 'cancel' | 'delete'

/** Which lifecycle actions the API accepts from each status (the state machine's transitions). */
export const ACTIONS_BY_STATUS: Record<DeploymentStatus, readonly DeploymentAction[]> = {
  pending: ['cancel'],
  deploying: ['cancel'],
  running: ['stop', 'redeploy', 'delete'],
  stopped: ['start', 'redeploy', 'delete'],
  failed: ['retry', 'delete'],
  cancelled: ['retry', 'delete'],
  stopping: [],
  deleting: [],
}

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warning', 'error']
