/**
 * API errors: the server's `detail` (English), its stable `code` and the `params` it quotes, and for a 422 each
 * field's problem with its pydantic `type` and limits. The UI words them in the user's language: a code (or a
 * field's type) with a message in the current locale's catalogue (`apiErrors.*`, `apiFields.*`) is shown in it,
 * filled with the params; any other falls back to the server's English text.
 */
import { i18n } from '../i18n'

export type ErrorParams = Record<string, unknown>

/** One field's problem in a 422 (`errors: [{field, message, type, params}]`). */
export interface FieldProblem {
  field: string
  message: string
  type: string | null
  params: ErrorParams
}

export class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly params: ErrorParams
  readonly problems: FieldProblem[]
  private readonly rawFields: Record<string, string>

  constructor(
    status: number,
    detail: string,
    code = 'error',
    fields: Record<string, string> = {},
    params: ErrorParams = {},
    problems: FieldProblem[] = [],
  ) {
    super(detail)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.rawFields = fields
    this.params = params
    this.problems = problems
  }

  /** The server's English detail. */
  get detail(): string {
    return this.message
  }

  /** Each field's message, in the user's language where the catalogue words its type. */
  get fields(): Record<string, string> {
    const out: Record<string, string> = { ...this.rawFields }
    for (const p of this.variableProblems) {
      const where = p.variable ?? p.field
      if (typeof where === 'string') out[where] = variableProblemText(this.code, p)
    }
    const seen = new Set<string>()
    for (const p of this.problems) {
      const text = fieldText(p)
      out[p.field] = seen.has(p.field) ? `${out[p.field]}; ${text}` : text
      seen.add(p.field)
    }
    return out
  }

  /**
   * Why, in the user's language, without where: the error's `params.reason` worded from
   * `apiReasons.<code>.<reason>` with the values it quotes; null when the catalogue has no such reason.
   */
  get reasonText(): string | null {
    const reason = this.params.reason
    return typeof reason === 'string' ? localized(`apiReasons.${this.code}.${reason}`, this.params) : null
  }

  /** A variable error's problems (`params.problems` of `invalid_variables`, `invalid_variable_schema`). */
  get variableProblems(): ErrorParams[] {
    const list = this.params.problems
    if (!VARIABLE_CODES.has(this.code) || !Array.isArray(list)) return []
    return list.filter((p): p is ErrorParams => !!p && typeof p === 'object' && typeof p.message === 'string')
  }

  /**
   * A variable error's detail (`path: problem; ...`, as the server's) with each problem worded in the user's
   * language, for the stack editor to put at its line; the server's detail when there are no problems.
   */
  get variableDetail(): string {
    const problems = this.variableProblems
    if (!problems.length) return this.message
    return problems
      .map((p) => {
        const where = p.variable ?? p.field
        return typeof where === 'string' ? `${where}: ${variableProblemText(this.code, p)}` : String(p.message)
      })
      .join('; ')
  }

  /** The whole error in the user's language. */
  get text(): string {
    if (this.problems.length && this.code === 'validation_error')
      return this.problems.map((p) => (p.field ? `${p.field}: ${fieldText(p)}` : fieldText(p))).join('; ')
    const at =
      (this.params.defaults === true ? (localized('apiWords.with_defaults', {}) ?? '') : '') +
      (typeof this.params.line === 'number' ? (localized('apiWords.at_line', { line: this.params.line }) ?? '') : '')
    const variables = this.variableProblems
    const why = variables.length
      ? variables
          .map((p) => {
            const where = p.variable ?? p.field
            const text = variableProblemText(this.code, p)
            return typeof where === 'string'
              ? (localized('apiWords.variable.at', { where, why: text }) ?? `${where}: ${text}`)
              : text
          })
          .join('; ')
      : (this.reasonText ?? this.message)
    return localized(`apiErrors.${this.code}`, { ...this.params, detail: this.message, why, at }) ?? this.message
  }
}

/** The catalogue's message for `key` in the current locale, or null when it has none. */
function localized(key: string, params: ErrorParams): string | null {
  const g = i18n.global
  if (!g.te(key, g.locale.value)) return null
  const named: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(params)) named[k] = Array.isArray(v) ? v.join(', ') : (v ?? '')
  return g.t(key, named)
}

const VARIABLE_CODES = new Set(['invalid_variables', 'invalid_variable_schema'])

/** One variable's problem (without which variable) worded from its `reason`, else the server's English message. */
function variableProblemText(code: string, p: ErrorParams): string {
  const got = typeof p.got === 'string' ? (localized('apiWords.variable.got', { got: p.got }) ?? '') : ''
  // one of Pydantic's own checks on a schema field: worded like a request field of that type
  const typed = p.reason === 'field_type' && typeof p.type === 'string' ? localized(`apiFields.${p.type}`, p) : null
  const reason =
    typeof p.reason === 'string'
      ? localized(`apiReasons.${code}.${p.reason}`, { ...p, got, detail: typed ?? String(p.message) })
      : null
  return reason ?? String(p.message)
}

function fieldText(p: FieldProblem): string {
  return (p.type && localized(`apiFields.${p.type}`, { ...p.params, detail: p.message })) || p.message
}

interface RawProblem {
  field?: unknown
  message?: unknown
  type?: unknown
  params?: unknown
}

/** Builds an ApiError from a response body `{detail, code, params?, errors?}` (any shape tolerated). */
export function toApiError(status: number, body: unknown): ApiError {
  const b = (body ?? {}) as { detail?: unknown; code?: unknown; errors?: unknown; params?: unknown }
  let detail = typeof b.detail === 'string' ? b.detail : ''
  if (!detail && Array.isArray(b.detail)) detail = b.detail.map((d) => d?.msg ?? String(d)).join('; ')
  if (!detail) detail = `HTTP ${status}`
  const problems: FieldProblem[] = []
  if (Array.isArray(b.errors)) {
    for (const item of b.errors as RawProblem[]) {
      if (typeof item?.field !== 'string' || typeof item.message !== 'string') continue
      problems.push({
        field: item.field,
        message: item.message,
        type: typeof item.type === 'string' ? item.type : null,
        params: item.params && typeof item.params === 'object' ? (item.params as ErrorParams) : {},
      })
    }
  }
  // Variable problems arrive in the detail as "variables.port: must be ...; db.user: ..." or "port: ...".
  const fields: Record<string, string> = {}
  if (status === 422 && !problems.length) {
    for (const part of detail.replace(/^invalid variables:\s*/, '').split(/;\s+/)) {
      const m = /^([A-Za-z0-9_.[\]]+):\s+(.+)$/.exec(part)
      if (m) fields[m[1]] = m[2]
    }
  }
  const params = b.params && typeof b.params === 'object' ? (b.params as ErrorParams) : {}
  return new ApiError(status, detail, typeof b.code === 'string' ? b.code : 'error', fields, params, problems)
}

/** What to show for any error: an API error in the user's language, else the error's message. */
export function errorText(err: unknown): string {
  if (err instanceof ApiError) return err.text
  if (err instanceof Error) return err.message
  return String(err)
}
