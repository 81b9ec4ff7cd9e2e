/**
 * Selected lines and the permalink of the logs drawer. A click on a line number selects that line (a
 * shift-click extends the selection to it) and makes it the permalink (`?seq=N`); a drawer opened with a
 * permalink waits for that line to arrive, then selects it and shows it.
 */
import { computed, nextTick, ref } from 'vue'

export interface SelectionOptions {
  /** The permalink changed (the line last clicked). */
  onSelect: (seq: number) => void
  /** The row showing the line `seq`, or -1 when it is not (yet) shown. */
  rowOf: (seq: number) => number
  /** Scrolls row k into view. */
  reveal: (k: number) => void
}

export function useLogSelection(options: SelectionOptions) {
  const start = ref<number | null>(null)
  const end = ref<number | null>(null)
  /** The permalink's line, until it has arrived and been shown. */
  const pending = ref<number | null>(null)
  const any = computed(() => start.value !== null && end.value !== null)

  function select(seq: number, extend: boolean): void {
    if (extend && start.value !== null) end.value = seq
    else {
      start.value = seq
      end.value = seq
    }
    options.onSelect(seq)
  }

  function isSelected(seq: number): boolean {
    if (start.value === null || end.value === null) return false
    return seq >= Math.min(start.value, end.value) && seq <= Math.max(start.value, end.value)
  }

  function clear(): void {
    start.value = end.value = null
  }

  /** Start over: nothing selected, and the line to open at (a permalink) if any. */
  function reset(openAt: number | null): void {
    clear()
    pending.value = openAt
  }

  /** Selects and shows the permalink's line once it has arrived (until then, it stays pending). */
  function tryPermalink(): void {
    const seq = pending.value
    if (seq === null) return
    const k = options.rowOf(seq)
    if (k < 0) return
    pending.value = null
    start.value = end.value = seq
    void nextTick(() => options.reveal(k))
  }

  return { start, end, pending, any, select, isSelected, clear, reset, tryPermalink }
}

export type LogSelection = ReturnType<typeof useLogSelection>
