/** An API error with the server's `detail` text and, for a 422, the message of each field. */
export class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly fields: Record<string, string>

  constructor(status: number, detail: string, code = 'error', fields: Record<string, string> = {}) {
    super(detail)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.fields = fields
  }
}

interface ErrorItem {
  field?: string
  message?: string
}

/** Builds an ApiError from a response body `{detail, code, errors?}` (any shape tolerated). */
export function toApiError(status: number, body: unknown): ApiError {
  const b = (body ?? {}) as { detail?: unknown; code?: unknown; errors?: unknown }
  let detail = typeof b.detail === 'string' ? b.detail : ''
  if (!detail && Array.isArray(b.detail)) detail = b.detail.map((d) => d?.msg ?? String(d)).join('; ')
  if (!detail) detail = `HTTP ${status}`
  const fields: Record<string, string> = {}
  if (Array.isArray(b.errors)) {
    for (const item of b.errors as ErrorItem[]) {
      if (item?.field && item.message)
        fields[item.field] = fields[item.field] ? `${fields[item.field]}; ${item.message}` : item.message
    }
  }
  // Variable problems arrive in the detail as "variables.port: must be ...; db.user: ..." or "port: ...".
  if (status === 422 && !Object.keys(fields).length) {
    for (const part of detail.replace(/^invalid variables:\s*/, '').split(/;\s+/)) {
      const m = /^([A-Za-z0-9_.[\]]+):\s+(.+)$/.exec(part)
      if (m) fields[m[1]] = m[2]
    }
  }
  return new ApiError(status, detail, typeof b.code === 'string' ? b.code : 'error', fields)
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError) return err.message
  if (err instanceof Error) return err.message
  return String(err)
}
