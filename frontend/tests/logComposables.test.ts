import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { effectScope, nextTick } from 'vue'
import type { LogLine } from '../src/api/deployments'
import type { LogLevel } from '../src/constants/deployments'
import { useLogFollow } from '../src/composables/logs/useLogFollow'
import { SEARCH_DEBOUNCE_MS, useLogSearch } from '../src/composables/logs/useLogSearch'
import { useLogSelection } from '../src/composables/logs/useLogSelection'
import { useVirtualRows } from '../src/composables/logs/useVirtualRows'

const AT = '2026-01-01T00:00:00Z'
const lines = (...spec: [LogLevel, string][]): LogLine[] =>
  spec.map(([level, message], i) => ({ seq: i + 1, timestamp: AT, level, message }))

let scope: ReturnType<typeof effectScope>
beforeEach(() => {
  scope = effectScope()
})
afterEach(() => scope.stop())

function rowsOver(all: LogLine[], levels: LogLevel[] = ['debug', 'info', 'warning', 'error'], height = 20) {
  const shown = new Set(levels)
  return useVirtualRows({ lines: () => all, levels: () => shown, rowHeight: () => height })
}

describe('useVirtualRows', () => {
  it('lays out only the lines of the levels shown, and takes in appended lines', () => {
    const all = lines(['info', 'a'], ['debug', 'b'], ['error', 'c'])
    const rows = rowsOver(all, ['info', 'error'])
    rows.extend()
    expect(rows.shown().map((l) => l.message)).toEqual(['a', 'c'])
    expect([rows.top(0), rows.top(1), rows.totalHeight()]).toEqual([0, 20, 40])
    all.push(...lines(['info', 'd']).map((l) => ({ ...l, seq: 4 })))
    const tick = rows.layoutTick.value
    rows.extend()
    expect(rows.count()).toBe(3)
    expect(rows.layoutTick.value).toBe(tick + 1)
    expect(rows.find((l) => l.level === 'error')).toBe(1)
  })

  it('shows the rows around the scroll position, with the overscan, for 100,000 lines', () => {
    const all = Array.from({ length: 100_000 }, (_, i) => ({
      seq: i + 1,
      timestamp: AT,
      level: 'info' as const,
      message: `${i}`,
    }))
    const rows = rowsOver(all)
    rows.extend()
    const view = rows.windowAt(20 * 50_000 + 5, 200, 12)
    expect(view[0]).toMatchObject({ k: 50_000 - 12, top: 20 * (50_000 - 12) })
    expect(view.at(-1)!.k).toBe(50_000 + 12) // past the 10 rows in view: rendered rows stay a few dozen
  })

  it('lays everything out again after the lines were cleared, in a new generation', () => {
    const all = lines(['info', 'a'], ['info', 'b'])
    const rows = rowsOver(all)
    rows.extend()
    const generation = rows.generation()
    all.length = 0
    all.push(...lines(['warning', 'c']))
    rows.extend()
    expect(rows.shown().map((l) => l.message)).toEqual(['c'])
    expect(rows.generation()).toBe(generation + 1)
  })
})

describe('useLogSearch', () => {
  beforeEach(() => vi.useFakeTimers())
  afterEach(() => vi.useRealTimers())

  function searchOver(all: LogLine[]) {
    const rows = rowsOver(all)
    rows.extend()
    const shown: number[] = []
    const search = scope.run(() =>
      useLogSearch(
        { count: rows.count, text: (k) => rows.line(k).message, generation: rows.generation },
        { onMatch: (k) => shown.push(k) },
      ),
    )!
    return { rows, search, shown }
  }

  it('searches once typing pauses, case-insensitively, and goes to the first match', async () => {
    const { search, shown } = searchOver(lines(['info', 'Pulling web'], ['info', 'started'], ['error', 'WEB failed']))
    search.query.value = '  Web '
    await nextTick()
    vi.advanceTimersByTime(SEARCH_DEBOUNCE_MS - 1)
    expect(search.term.value).toBe('')
    vi.advanceTimersByTime(1)
    expect(search.term.value).toBe('web')
    expect(search.matches.value).toEqual([0, 2])
    expect(search.matchIndex.value).toBe(0)
    expect(shown).toEqual([0])
  })

  it('next and previous wrap round', async () => {
    const { search, shown } = searchOver(lines(['info', 'x1'], ['info', 'y'], ['info', 'x2']))
    search.query.value = 'x'
    await nextTick()
    vi.advanceTimersByTime(SEARCH_DEBOUNCE_MS)
    search.next()
    expect(search.currentRow.value).toBe(2)
    search.next()
    expect(search.currentRow.value).toBe(0)
    search.previous()
    expect(search.currentRow.value).toBe(2)
    expect(shown).toEqual([0, 2, 0, 2])
  })

  it('finds matches in lines that arrive later without taking the view to them', async () => {
    const all = lines(['info', 'match 1'])
    const { rows, search, shown } = searchOver(all)
    search.query.value = 'match'
    await nextTick()
    vi.advanceTimersByTime(SEARCH_DEBOUNCE_MS)
    all.push({ seq: 2, timestamp: AT, level: 'info', message: 'match 2' })
    rows.extend()
    search.scan()
    expect(search.matches.value).toEqual([0, 1])
    expect(shown).toEqual([0])
  })

  it('scans a large log a slice at a time, and starts over after a new layout', async () => {
    const all = Array.from({ length: 50_000 }, (_, i) => ({
      seq: i + 1,
      timestamp: AT,
      level: 'info' as const,
      message: i % 2 ? 'odd' : 'even',
    }))
    const { rows, search } = searchOver(all)
    let now = 0
    vi.spyOn(performance, 'now').mockImplementation(() => (now += 1)) // each check: 1 ms later
    search.query.value = 'odd'
    await nextTick()
    vi.advanceTimersByTime(SEARCH_DEBOUNCE_MS)
    expect(search.matches.value.length).toBeLessThan(25_000) // a first slice only: the page was not blocked
    await vi.runAllTimersAsync()
    expect(search.matches.value.length).toBe(25_000)
    rows.rebuild()
    search.scan()
    await vi.runAllTimersAsync()
    expect(search.matches.value.length).toBe(25_000) // not doubled
    vi.restoreAllMocks()
  })
})

describe('useLogSelection', () => {
  it('a click selects a line, a shift-click extends to another, each makes the permalink', () => {
    const permalinks: number[] = []
    const sel = useLogSelection({ onSelect: (seq) => permalinks.push(seq), rowOf: () => -1, reveal: () => {} })
    sel.select(5, false)
    sel.select(2, true)
    expect([1, 2, 3, 5, 6].map(sel.isSelected)).toEqual([false, true, true, true, false])
    expect(permalinks).toEqual([5, 2])
    sel.select(9, false)
    expect([5, 9].map(sel.isSelected)).toEqual([false, true])
  })

  it('a permalink waits for its line, then selects and shows it', async () => {
    let arrived = false
    const revealed: number[] = []
    const sel = useLogSelection({
      onSelect: () => {},
      rowOf: (seq) => (arrived && seq === 7 ? 3 : -1),
      reveal: (k) => revealed.push(k),
    })
    sel.reset(7)
    sel.tryPermalink()
    expect(sel.pending.value).toBe(7)
    arrived = true
    sel.tryPermalink()
    await nextTick()
    expect(sel.pending.value).toBe(null)
    expect(sel.isSelected(7)).toBe(true)
    expect(revealed).toEqual([3])
  })
})

describe('useLogFollow', () => {
  function followOver(contentHeight: number) {
    const follow = scope.run(() =>
      useLogFollow({ contentHeight: () => contentHeight, wrapped: () => false, rowHeight: 20 }),
    )!
    const el = { scrollTop: 0, clientHeight: 400, clientWidth: 800, scrollHeight: contentHeight } as HTMLElement
    follow.scroller.value = el
    return { follow, el }
  }

  it('pauses when the user scrolls up and resumes at the bottom by itself', async () => {
    const { follow, el } = followOver(10_000)
    await nextTick()
    follow.toBottom()
    expect(el.scrollTop).toBe(9_600)
    el.scrollTop = 9_000
    follow.onScroll()
    expect(follow.following.value).toBe(false)
    el.scrollTop = 9_590
    follow.onScroll()
    expect(follow.following.value).toBe(true)
  })

  it('wrapped, the end is where the element took it (it clamps), so the rows in view are the last ones', async () => {
    const follow = scope.run(() => useLogFollow({ contentHeight: () => 1_200, wrapped: () => true, rowHeight: 20 }))!
    let top = 0
    const el = {
      clientHeight: 400,
      clientWidth: 800,
      scrollHeight: 1_000, // the real height of wrapped rows, not the estimate
      get scrollTop() {
        return top
      },
      set scrollTop(v: number) {
        top = Math.min(Math.max(0, v), 1_000 - 400)
      },
    } as unknown as HTMLElement
    follow.scroller.value = el
    await nextTick()
    follow.toBottom()
    expect(el.scrollTop).toBe(600)
    expect(follow.scrollTop.value).toBe(600) // not 1,000: a window computed for it would leave the view empty
  })

  it('showing a line stops following and puts it a third of the way down', async () => {
    const { follow, el } = followOver(10_000)
    await nextTick()
    follow.reveal(3_000)
    expect(follow.following.value).toBe(false)
    expect(el.scrollTop).toBe(3_000 - 400 / 3)
    follow.toggle()
    expect(follow.following.value).toBe(true)
    await nextTick()
    expect(el.scrollTop).toBe(9_600)
  })
})
