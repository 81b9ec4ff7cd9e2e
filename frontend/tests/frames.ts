/** Server frames for tests, complete as the schema says the server sends them. */
import type { Deployment } from '../src/api/deployments'
import type { components } from '../src/api/schema'
import type { FrameOf } from '../src/realtime/frames'

type S = components['schemas']
const AT = '2026-01-01T00:00:00Z'

export function deployment(id: string, over: Partial<Deployment> = {}): Deployment {
  return {
    id,
    name: `dep-${id}`,
    status: 'pending',
    stack_id: 's',
    target_id: 't',
    organization_id: 'o1',
    attempt: 0,
    max_attempts: 3,
    progress: 0,
    current_step: 0,
    total_steps: 5,
    step_name: null,
    error_message: null,
    executor: null,
    variables: {},
    revision: 1,
    last_good_revision: null,
    auto_rollback: true,
    created_at: AT,
    queued_at: AT,
    started_at: null,
    finished_at: null,
    ...over,
  }
}

const envelope = (deploymentId: string, organizationId: string) => ({
  deployment_id: deploymentId,
  organization_id: organizationId,
  timestamp: AT,
})

export function statusChanged(
  id: string,
  newStatus: string,
  oldStatus: string | null,
  over: Partial<S['StatusChangedData']> = {},
  org = 'o1',
): FrameOf<'DEPLOYMENT_STATUS_CHANGED'> {
  return {
    type: 'DEPLOYMENT_STATUS_CHANGED',
    ...envelope(id, org),
    data: {
      new_status: newStatus,
      old_status: oldStatus,
      name: `dep-${id}`,
      error_message: null,
      error_code: null,
      error_params: {},
      attempt: null,
      dispatch_latency_seconds: null,
      revision: null,
      ...over,
    },
  }
}

export function progress(
  id: string,
  data: Partial<S['ProgressData']> & { progress: number },
  org = 'o1',
): FrameOf<'DEPLOYMENT_PROGRESS'> {
  return {
    type: 'DEPLOYMENT_PROGRESS',
    ...envelope(id, org),
    data: { current_step: 1, total_steps: 5, step_name: null, ...data },
  }
}

export function created(d: Deployment): FrameOf<'DEPLOYMENT_CREATED'> {
  return { type: 'DEPLOYMENT_CREATED', ...envelope(d.id, d.organization_id), data: d }
}

export function deleted(id: string, org = 'o1'): FrameOf<'DEPLOYMENT_DELETED'> {
  return { type: 'DEPLOYMENT_DELETED', ...envelope(id, org), data: { name: `dep-${id}` } }
}

export function line(seq: number, message = `line ${seq}`, level = 'info'): S['LogLineData'] {
  return { seq, timestamp: AT, level, message }
}

export function logs(id: string, items: S['LogLineData'][], org = 'o'): FrameOf<'DEPLOYMENT_LOGS_UPDATE'> {
  return { type: 'DEPLOYMENT_LOGS_UPDATE', ...envelope(id, org), data: { logs: items, append: true, timestamp: AT } }
}

export function serviceLogs(id: string, lines: Partial<S['ServiceLogLine']>[], org = 'o'): FrameOf<'SERVICE_LOGS'> {
  return {
    type: 'SERVICE_LOGS',
    ...envelope(id, org),
    data: { lines: lines.map((l) => ({ service: 'web', container: 'web-1', timestamp: null, message: '', ...l })) },
  }
}

export function resync(
  ids: { deployment_id?: string; organization_id?: string },
  lastSeq: number | null = null,
): FrameOf<'resync'> {
  return {
    type: 'resync',
    deployment_id: ids.deployment_id ?? null,
    organization_id: ids.organization_id ?? null,
    last_seq: lastSeq,
  }
}
