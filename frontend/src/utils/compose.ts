/** What the UI reads of a rendered compose document: how long its containers may take to stop. */
import { parse } from 'yaml'

/** Docker's stop grace period when a service sets none. */
export const DEFAULT_STOP_GRACE_SECONDS = 10

/** A compose duration (`10s`, `1m30s`, `1.5s`, `500ms`, `2h`) in seconds, or null. */
export function durationSeconds(value: unknown): number | null {
  if (typeof value === 'number' && Number.isFinite(value)) return value
  if (typeof value !== 'string') return null
  const text = value.trim()
  if (!/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(text)) return null
  const unit: Record<string, number> = { ns: 1e-9, us: 1e-6, µs: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 }
  let total = 0
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) total += Number(m[1]) * unit[m[2]]
  return total
}

/** The longest stop grace period of the document's services (what a stop may wait for), in whole seconds. */
export function stopGraceSeconds(compose: string | null | undefined): number {
  let doc: unknown
  try {
    doc = compose ? parse(compose) : null
  } catch {
    return DEFAULT_STOP_GRACE_SECONDS
  }
  const services = (doc as { services?: unknown } | null)?.services
  if (!services || typeof services !== 'object') return DEFAULT_STOP_GRACE_SECONDS
  let longest = 0
  for (const service of Object.values(services as Record<string, unknown>)) {
    const grace = durationSeconds((service as { stop_grace_period?: unknown } | null)?.stop_grace_period)
    longest = Math.max(longest, grace ?? DEFAULT_STOP_GRACE_SECONDS)
  }
  return Math.ceil(longest || DEFAULT_STOP_GRACE_SECONDS)
}
