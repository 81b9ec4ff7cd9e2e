/**
 * A list page's filters as the URL holds them (`?q=web&status=failed,running&source=user`): what each filter
 * reads from the query and what it writes back. One filter per query key; an empty value, or a choice's
 * default, leaves the key out of the URL.
 */
export interface FilterOption {
  label: string
  value: string
  testId?: string
}

export interface ListFilter {
  /** The URL query key (`q`, `role`, `status`, ...). */
  key: string
  /** `search`: free text; `select`: a drop-down (`multiple`: several values, comma-separated); `choice`: buttons. */
  kind: 'search' | 'select' | 'choice'
  /** Placeholder and accessible name. */
  label: string
  options?: FilterOption[]
  multiple?: boolean
  /** A select whose options can be searched by typing. */
  filterable?: boolean
  /** A choice's value when the URL has none (default: its first option); choosing it leaves the key out. */
  fallback?: string
  /** Other query keys a change of this filter drops (a highlight that no longer applies, ...). */
  clears?: string[]
  testId?: string
}

export type FilterValue = string | string[] | null
type Query = Record<string, unknown>

function text(v: unknown): string | null {
  if (Array.isArray(v)) v = v.join(',')
  return typeof v === 'string' && v !== '' ? v : null
}

/** What the filter shows for this query. */
export function filterValue(filter: ListFilter, query: Query): FilterValue {
  const raw = text(query[filter.key])
  if (filter.kind === 'choice') return raw ?? filter.fallback ?? filter.options?.[0]?.value ?? null
  if (filter.multiple) return raw ? raw.split(',').filter(Boolean) : []
  return raw
}

/** The query change that shows `value` (null removes a key). */
export function filterPatch(filter: ListFilter, value: FilterValue): Record<string, string | null> {
  let next = Array.isArray(value) ? value.join(',') : value
  if (filter.kind === 'choice' && next === (filter.fallback ?? filter.options?.[0]?.value)) next = null
  const patch: Record<string, string | null> = { [filter.key]: next || null }
  for (const key of filter.clears ?? []) patch[key] = null
  return patch
}
