/** The audit trail (who changed what) over the typed client. */
import { api, unwrap } from './client'
import type { Page, PageQuery } from './paging'
import type { components } from './schema'

export type AuditEntry = components['schemas']['AuditEntryRead']

export interface AuditFilters {
  organizationId: string | null
  actor: string | null
  /** an action (`deployment.stop`) or a prefix ending in '.' (`deployment.`) */
  action: string | null
  since: string | null
}

/** One page of the audit trail, newest first. */
export function pageAudit(filters: AuditFilters, page: PageQuery): Promise<Page<AuditEntry>> {
  const query = {
    organization_id: filters.organizationId ?? undefined,
    actor: filters.actor ?? undefined,
    action: filters.action ?? undefined,
    since: filters.since ?? undefined,
    ...page,
  }
  return unwrap(api.GET('/api/v1/audit', { params: { query } }))
}
