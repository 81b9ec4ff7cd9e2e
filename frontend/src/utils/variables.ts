/**
 * The stack variable schema (docs/stacks.md, "Variables") as the form sees it, the values a form
 * starts with, and the checks made before submitting (the API checks again and its 422 messages are
 * shown beside the same fields).
 */

export type VariableType =
  'string' | 'textarea' | 'secret' | 'password' | 'integer' | 'number' | 'boolean' | 'enum' | 'group'

export interface EnumOption {
  value: string | number | boolean
  label: string
}

export interface VariableSpec {
  name: string
  type: VariableType
  label?: string | null
  description?: string | null
  placeholder?: string | null
  required?: boolean
  default?: unknown
  pattern?: string | null
  min?: number | null
  max?: number | null
  min_length?: number | null
  max_length?: number | null
  options?: (string | number | boolean | { value: string | number | boolean; label?: string | null })[] | null
  variables?: VariableSpec[] | null
}

export type Values = Record<string, unknown>

export function asSpecs(raw: unknown): VariableSpec[] {
  return Array.isArray(raw)
    ? (raw.filter((v) => v && typeof v === 'object' && typeof v.name === 'string') as VariableSpec[])
    : []
}

export function normaliseType(t: unknown): VariableType {
  const s = String(t ?? 'string')
  return (
    ['string', 'textarea', 'secret', 'password', 'integer', 'number', 'boolean', 'enum', 'group'].includes(s)
      ? s
      : 'string'
  ) as VariableType
}

export function isSecret(spec: VariableSpec): boolean {
  const t = normaliseType(spec.type)
  return t === 'secret' || t === 'password'
}

/** A default evaluated by WindFlow at deploy time (`{{ generate_password(24) }}`). */
export function isGenerator(value: unknown): value is string {
  return typeof value === 'string' && (value.includes('{{') || value.includes('{%'))
}

export function enumOptions(spec: VariableSpec): EnumOption[] {
  return (spec.options ?? []).map((o) =>
    typeof o === 'object' && o !== null
      ? { value: o.value, label: o.label || String(o.value) }
      : { value: o, label: String(o) },
  )
}

/** Initial values: defaults, except generators (left empty: the server generates them). */
export function initialValues(specs: VariableSpec[]): Values {
  const out: Values = {}
  for (const spec of specs) {
    const type = normaliseType(spec.type)
    if (type === 'group') out[spec.name] = initialValues(asSpecs(spec.variables))
    else if (isGenerator(spec.default)) out[spec.name] = type === 'boolean' ? false : null
    else if (spec.default !== undefined && spec.default !== null) out[spec.name] = spec.default
    else out[spec.name] = type === 'boolean' ? false : null
  }
  return out
}

/** Values to send: empty optional fields and empty generator fields are left out. */
export function payload(specs: VariableSpec[], values: Values): Values {
  const out: Values = {}
  for (const spec of specs) {
    const type = normaliseType(spec.type)
    const v = values[spec.name]
    if (type === 'group') {
      const nested = payload(asSpecs(spec.variables), (v as Values) ?? {})
      if (Object.keys(nested).length) out[spec.name] = nested
      continue
    }
    if (v === null || v === undefined || v === '') continue
    out[spec.name] = v
  }
  return out
}

export interface Messages {
  required: string
  integer: string
  number: string
  min: (n: number) => string
  max: (n: number) => string
  minLength: (n: number) => string
  maxLength: (n: number) => string
  pattern: (p: string) => string
}

/** Problems by dotted path ("port", "db.user"), the same keys as the API's 422 messages. */
export function validate(specs: VariableSpec[], values: Values, m: Messages, prefix = ''): Record<string, string> {
  const errors: Record<string, string> = {}
  for (const spec of specs) {
    const path = prefix + spec.name
    const type = normaliseType(spec.type)
    const v = values[spec.name]
    if (type === 'group') {
      Object.assign(errors, validate(asSpecs(spec.variables), (v as Values) ?? {}, m, `${path}.`))
      continue
    }
    const empty = v === null || v === undefined || v === ''
    if (empty) {
      if (spec.required && !isGenerator(spec.default) && type !== 'boolean') errors[path] = m.required
      continue
    }
    if (type === 'integer' || type === 'number') {
      const n = typeof v === 'number' ? v : Number(v)
      if (!Number.isFinite(n)) errors[path] = m.number
      else if (type === 'integer' && !Number.isInteger(n)) errors[path] = m.integer
      else if (spec.min !== null && spec.min !== undefined && n < spec.min) errors[path] = m.min(spec.min)
      else if (spec.max !== null && spec.max !== undefined && n > spec.max) errors[path] = m.max(spec.max)
      continue
    }
    if (typeof v === 'string') {
      if (spec.min_length && v.length < spec.min_length) errors[path] = m.minLength(spec.min_length)
      else if (spec.max_length && v.length > spec.max_length) errors[path] = m.maxLength(spec.max_length)
      else if (spec.pattern) {
        let re: RegExp | null
        try {
          re = new RegExp(`^(?:${spec.pattern})$`)
        } catch {
          re = null // a Python-only pattern: the server checks it
        }
        if (re && !re.test(v)) errors[path] = m.pattern(spec.pattern)
      }
    }
  }
  return errors
}

// --- changing a deployment: the form filled with its current values, and what to send -----------

/** How the API shows a secret's value (never the value itself). */
export const MASK = '***'

function isPlainObject(v: unknown): v is Values {
  return !!v && typeof v === 'object' && !Array.isArray(v)
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null)
}

/**
 * The edit form's starting values: the deployment's current values over the schema's defaults. Secrets start
 * empty (blank means "keep the current value": the API never returns them); a value of a variable the schema
 * no longer has is left out.
 */
export function editValues(specs: VariableSpec[], current: Values | null | undefined): Values {
  const out = initialValues(specs)
  const now = current ?? {}
  for (const spec of specs) {
    const type = normaliseType(spec.type)
    const v = now[spec.name]
    if (type === 'group') out[spec.name] = editValues(asSpecs(spec.variables), isPlainObject(v) ? v : {})
    else if (isSecret(spec)) out[spec.name] = null
    else if (v !== undefined) out[spec.name] = v
  }
  return out
}

/**
 * What a new revision sends (`RevisionCreate.variables`, merged by the API over the current values): each
 * value that differs from the current one, a secret only when something was typed in it, a field emptied as
 * null (its default, or none). Groups send only their changed members. Nothing changed: an empty object.
 */
export function changedValues(specs: VariableSpec[], values: Values, current: Values | null | undefined): Values {
  const out: Values = {}
  const now = current ?? {}
  for (const spec of specs) {
    const type = normaliseType(spec.type)
    const v = values[spec.name]
    const before = now[spec.name]
    if (type === 'group') {
      const nested = changedValues(
        asSpecs(spec.variables),
        isPlainObject(v) ? v : {},
        isPlainObject(before) ? before : {},
      )
      if (Object.keys(nested).length) out[spec.name] = nested
      continue
    }
    const empty = v === null || v === undefined || v === ''
    if (isSecret(spec)) {
      if (!empty) out[spec.name] = v
      continue
    }
    if (empty) {
      if (before !== null && before !== undefined && before !== '') out[spec.name] = null
      continue
    }
    if (!same(v, before)) out[spec.name] = v
  }
  return out
}

/** The schema with its secrets optional: in the edit form a blank secret keeps its value. */
export function secretsOptional(specs: VariableSpec[]): VariableSpec[] {
  return specs.map((spec) =>
    normaliseType(spec.type) === 'group'
      ? { ...spec, variables: secretsOptional(asSpecs(spec.variables)) }
      : isSecret(spec)
        ? { ...spec, required: false }
        : spec,
  )
}

/** One row of a deployment's variables, as the page lists them. */
export interface VariableRow {
  /** Dotted name ("db.user"). */
  path: string
  /** The schema's label (a group's label before it: "Database › User"), else the name. */
  label: string
  description: string | null
  /** The value as text: an enum's option label, yes/no for a boolean (`yesNo`), *** for a secret, '' when unset. */
  value: string
  secret: boolean
  /** No value (an optional field left empty). */
  unset: boolean
}

/**
 * A deployment's values as labelled rows, in the schema's order (groups flattened under their label); values
 * the schema does not name (a variable removed from the stack since) follow under their own name.
 */
export function variableRows(
  specs: VariableSpec[],
  values: Values | null | undefined,
  yesNo: (v: boolean) => string,
  prefix = '',
  labelPrefix = '',
): VariableRow[] {
  const rows: VariableRow[] = []
  const now = values ?? {}
  const named = new Set<string>()
  for (const spec of specs) {
    named.add(spec.name)
    const type = normaliseType(spec.type)
    const label = labelPrefix + (spec.label || spec.name)
    const v = now[spec.name]
    if (type === 'group') {
      rows.push(
        ...variableRows(
          asSpecs(spec.variables),
          isPlainObject(v) ? v : {},
          yesNo,
          `${prefix}${spec.name}.`,
          `${label} › `,
        ),
      )
      continue
    }
    const unset = v === null || v === undefined || v === ''
    let text = ''
    if (isSecret(spec)) text = unset ? '' : MASK
    else if (!unset) {
      if (typeof v === 'boolean') text = yesNo(v)
      else if (type === 'enum') text = enumOptions(spec).find((o) => o.value === v)?.label ?? String(v)
      else text = typeof v === 'object' ? JSON.stringify(v) : String(v)
    }
    rows.push({
      path: prefix + spec.name,
      label,
      description: spec.description ?? null,
      value: text,
      secret: isSecret(spec),
      unset,
    })
  }
  for (const [name, v] of Object.entries(now)) {
    if (named.has(name)) continue
    const unset = v === null || v === undefined || v === ''
    const text = unset ? '' : typeof v === 'boolean' ? yesNo(v) : typeof v === 'object' ? JSON.stringify(v) : String(v)
    rows.push({
      path: prefix + name,
      label: labelPrefix + name,
      description: null,
      value: text,
      secret: text === MASK,
      unset,
    })
  }
  return rows
}
