/**
 * One readable log: the lines of a source laid out as virtual rows, with search, smart auto-scroll (follows the
 * end, pauses on scroll-up, resumes at the bottom), a selection, and what the drawer's toolbar needs of them
 * (rows in view, line counter, copy). The logs drawer has two: the deployment's log and the services' output.
 */
import { computed, markRaw, nextTick, watch, type Ref } from 'vue'
import type { LogLine } from '../../api/deployments'
import type { LogLevel } from '../../constants/deployments'
import { stripAnsi } from '../../utils/ansi'
import { logLineText } from '../../i18n/deploymentWords'
import type { LogRowsModel } from '../../components/logs/LogRows.vue'
import { useLogFollow } from './useLogFollow'
import { useLogSearch } from './useLogSearch'
import { useLogSelection } from './useLogSelection'
import { useVirtualRows } from './useVirtualRows'

/** Row height, monospace character width (for wrapped rows' estimated heights), rows rendered beyond the view. */
export const ROW = 20
const CHAR = 7.83
const OVERSCAN = 12

export interface LogViewSource<L extends LogLine> {
  /** The lines (a plain array appended to in place). */
  lines: () => readonly L[]
  /** Ticks once per batch of new lines. */
  version: Ref<number>
  /** Ticks when lines were inserted between others or removed: everything is laid out again. */
  reordered?: Ref<number>
  /** Levels shown. */
  levels: () => ReadonlySet<LogLevel>
  /** Another filter (the services ticked); `acceptKey` changes whenever it does. */
  accept?: (line: L) => boolean
  acceptKey?: () => string
  wrap: () => boolean
  timestamps: () => boolean
  /** A label before each line (the service of a line of container output). */
  label?: (line: L) => string | null
}

export interface LogViewOptions {
  /** The line last clicked (the deployment log's permalink). */
  onSelect?: (seq: number) => void
}

export function useLogView<L extends LogLine>(source: LogViewSource<L>, options: LogViewOptions = {}) {
  const follow = useLogFollow({ contentHeight: () => rows.totalHeight(), wrapped: source.wrap, rowHeight: ROW })
  const gutterChars = computed(() => 8 + (source.timestamps() ? 13 : 0) + 8 + (source.label ? 12 : 0))
  const columns = computed(() => Math.max(20, Math.floor((follow.width.value - 24) / CHAR) - gutterChars.value))
  const rows = useVirtualRows<L>({
    lines: source.lines,
    levels: source.levels,
    accept: source.accept,
    rowHeight: (line) => (source.wrap() ? ROW * Math.max(1, Math.ceil(logLineText(line).length / columns.value)) : ROW),
  })
  const search = useLogSearch(
    { count: rows.count, text: (k) => stripAnsi(logLineText(rows.line(k))), generation: rows.generation },
    { onMatch: revealRow },
  )
  const selection = useLogSelection({
    onSelect: (seq) => options.onSelect?.(seq),
    rowOf: (seq) => rows.find((line) => line.seq === seq),
    reveal: revealRow,
  })

  function revealRow(k: number): void {
    follow.reveal(rows.top(k))
  }

  /** Lays out the new lines (or all of them again) and searches them. */
  function layout(again = false): void {
    if (again) rows.rebuild()
    else rows.extend()
    search.scan()
  }

  const windowRows = computed(() => {
    void rows.layoutTick.value
    void source.version.value
    return rows.windowAt(follow.scrollTop.value, follow.viewport.value, OVERSCAN)
  })
  const lineCount = computed(() => {
    void source.version.value
    return source.lines().length
  })
  const empty = computed(() => lineCount.value === 0)
  // Handed to LogRows as a plain object holding refs: a new batch re-renders that component only.
  const model: LogRowsModel = markRaw({
    rows: windowRows,
    top: computed(() => windowRows.value[0]?.top ?? 0),
    height: computed(() => {
      void rows.layoutTick.value
      return rows.totalHeight()
    }),
    term: search.term,
    currentRow: search.currentRow,
    timestamps: source.timestamps,
    wrap: source.wrap,
    label: source.label as ((line: LogLine) => string | null) | undefined,
    isSelected: (seq: number) => selection.isSelected(seq),
    select: (seq: number, extend: boolean) => selection.select(seq, extend),
  })

  watch(source.version, () => {
    layout()
    if (selection.pending.value !== null) selection.tryPermalink()
    else follow.afterAppend()
  })
  watch(
    [
      source.wrap,
      () => source.acceptKey?.() ?? '',
      () => [...source.levels()].join(','),
      columns,
      () => source.reordered?.value,
    ],
    () => {
      layout(true)
      if (follow.following.value) void nextTick(follow.toBottom)
    },
  )

  /** Starts over: following the end, nothing selected (or a permalink's line to open at), no search. */
  function reset(openAt: number | null = null): void {
    layout(true)
    follow.following.value = true
    selection.reset(openAt)
    search.query.value = ''
  }

  /** The first error shown: scrolled to and selected; false when there is none. */
  function firstError(): boolean {
    const k = rows.find((line) => line.level === 'error')
    if (k < 0) return false
    revealRow(k)
    selection.select(rows.line(k).seq, false)
    return true
  }

  /** The selected lines shown, or all of them. */
  function selectedOrAll(): L[] {
    const shown = rows.shown()
    return selection.any.value ? shown.filter((line) => selection.isSelected(line.seq)) : shown
  }

  return {
    follow,
    scroller: follow.scroller,
    rows,
    search,
    selection,
    model,
    lineCount,
    empty,
    layout,
    reset,
    firstError,
    selectedOrAll,
  }
}

export type LogView<L extends LogLine = LogLine> = ReturnType<typeof useLogView<L>>
