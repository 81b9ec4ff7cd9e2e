/**
 * The virtual list of the logs drawer: which lines are rows (those whose level is shown), where each row
 * starts, and which rows a scroll position shows. Nothing here is reactive per line: `extend()` takes the
 * lines appended since the last call into plain arrays, and `layoutTick` ticks once per call, so 100,000
 * lines cost one layout per batch.
 */
import { ref } from 'vue'
import type { LogLine } from '../../api/deployments'
import type { LogLevel } from '../../constants/deployments'

export interface VirtualRow<L extends LogLine = LogLine> {
  /** Index of the row among the rows shown. */
  k: number
  line: L
  top: number
}

export interface VirtualRowsOptions<L extends LogLine = LogLine> {
  /** The lines so far (appended to in place; shorter than before after a clear). */
  lines: () => readonly L[]
  /** Levels shown. */
  levels: () => ReadonlySet<LogLevel>
  /** Also shown only if this says so (e.g. the services ticked in the Services tab). */
  accept?: (line: L) => boolean
  /** Height of a line's row in pixels. */
  rowHeight: (line: L) => number
}

export function useVirtualRows<L extends LogLine = LogLine>(options: VirtualRowsOptions<L>) {
  // visible[k] = index into lines of row k; tops[k] = offset of row k.
  let visible: number[] = []
  let tops = new Float64Array(1024)
  let processed = 0
  let totalHeight = 0
  /** Ticks once per extend() or rebuild(): what reads the layout depends on it. */
  const layoutTick = ref(0)
  /** Changes at each rebuild: row indices from before (search matches, ...) no longer hold. */
  let generation = 0

  function ensureCapacity(n: number): void {
    if (n + 1 <= tops.length) return
    let size = tops.length
    while (size < n + 1) size *= 2
    const next = new Float64Array(size)
    next.set(tops)
    tops = next
  }

  /** Takes in the lines appended since the last call (everything again when the lines were cleared). */
  function extend(): void {
    const lines = options.lines()
    if (lines.length < processed) return rebuild()
    const levels = options.levels()
    const accept = options.accept
    for (let i = processed; i < lines.length; i++) {
      if (!levels.has(lines[i].level) || (accept && !accept(lines[i]))) continue
      ensureCapacity(visible.length + 1)
      tops[visible.length] = totalHeight
      visible.push(i)
      totalHeight += options.rowHeight(lines[i])
    }
    processed = lines.length
    layoutTick.value++
  }

  /** Lays every line out again (another level filter, wrapping or width; the lines were cleared). */
  function rebuild(): void {
    visible = []
    processed = 0
    totalHeight = 0
    generation++
    extend()
  }

  /** The rows around `scrollTop` (with `overscan` rows on either side), for a viewport `height` high. */
  function windowAt(scrollTop: number, height: number, overscan: number): VirtualRow<L>[] {
    const n = visible.length
    if (!n) return []
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (tops[mid] <= scrollTop) lo = mid
      else hi = mid - 1
    }
    const start = Math.max(0, lo - overscan)
    const rows: VirtualRow<L>[] = []
    const bottom = scrollTop + height
    const lines = options.lines()
    for (let k = start; k < n; k++) {
      if (tops[k] > bottom && k > lo + overscan) break
      rows.push({ k, line: lines[visible[k]], top: tops[k] })
    }
    return rows
  }

  return {
    layoutTick,
    extend,
    rebuild,
    windowAt,
    generation: () => generation,
    count: () => visible.length,
    totalHeight: () => totalHeight,
    top: (k: number) => tops[k],
    line: (k: number) => options.lines()[visible[k]],
    /** The lines shown, in order. */
    shown: (): L[] => {
      const lines = options.lines()
      return visible.map((i) => lines[i])
    },
    /** The first row whose line passes `test`, or -1. */
    find: (test: (line: L) => boolean): number => {
      const lines = options.lines()
      return visible.findIndex((i) => test(lines[i]))
    },
  }
}

export type VirtualRows = ReturnType<typeof useVirtualRows>
