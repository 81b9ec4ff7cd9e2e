import type { HTMLAttributes } from 'vue'

/** `data-*` attributes for a data table's row (what the browser tests find rows by). */
export function rowAttrs(attrs: Record<string, string>): HTMLAttributes {
  return attrs as unknown as HTMLAttributes
}
