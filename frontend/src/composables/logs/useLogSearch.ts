/**
 * Search within the rows of the logs drawer: the typed text becomes the term 150 ms after the last key;
 * matches are row indices, found by a scan that works a slice at a time (about 8 ms each), so a new term
 * over 100,000 lines never blocks the page. Matches appear as they are found; only the scan of a new term
 * goes to its first match (lines that arrive later and match do not take the view away from the tail).
 */
import { computed, onScopeDispose, ref, shallowRef, triggerRef, watch } from 'vue'

/** What the search reads: the rows shown, and when they were laid out anew (see useVirtualRows). */
export interface SearchableRows {
  count: () => number
  /** The text of row k as it is searched (without ANSI sequences). */
  text: (k: number) => string
  generation: () => number
}

export const SEARCH_DEBOUNCE_MS = 150
const SLICE_MS = 8

export function useLogSearch(rows: SearchableRows, options: { onMatch: (k: number) => void }) {
  /** The text in the search box. */
  const query = ref('')
  /** What is searched: the query trimmed and lower-cased, once typing pauses. */
  const term = ref('')
  /** Rows that contain the term, in order (appended in place, then triggered). */
  const matches = shallowRef<number[]>([])
  const matchIndex = ref(-1)
  let scanned = 0
  let generation = rows.generation()
  let goToFirst = false
  let debounce: ReturnType<typeof setTimeout> | null = null
  let slice: ReturnType<typeof setTimeout> | null = null

  watch(query, (value) => {
    if (debounce) clearTimeout(debounce)
    debounce = setTimeout(() => {
      term.value = value.trim().toLowerCase()
      matches.value = []
      scanned = 0
      matchIndex.value = -1
      goToFirst = true
      scan()
    }, SEARCH_DEBOUNCE_MS)
  })

  /** Looks for the term in the rows not scanned yet (all of them again after a new layout). */
  function scan(): void {
    if (slice) {
      clearTimeout(slice)
      slice = null
    }
    if (rows.generation() !== generation) {
      generation = rows.generation()
      matches.value = []
      scanned = 0
    }
    const n = rows.count()
    if (!term.value) {
      scanned = n
      return
    }
    // Appended in place (then one trigger): copying the list per batch made a search that matches most
    // lines quadratic while 100,000 lines stream in.
    const list = matches.value
    const before = list.length
    const deadline = performance.now() + SLICE_MS
    let k = scanned
    for (; k < n; k++) {
      if (rows.text(k).toLowerCase().includes(term.value)) list.push(k)
      if ((k & 1023) === 1023 && performance.now() > deadline) {
        k++
        break
      }
    }
    scanned = k
    if (list.length !== before) triggerRef(matches)
    if (goToFirst && list.length) {
      goToFirst = false
      goTo(0)
    }
    if (scanned < n) slice = setTimeout(scan, 0)
    else goToFirst = false
  }

  /** Makes match `i` the current one (wrapping round) and shows it. */
  function goTo(i: number): void {
    const n = matches.value.length
    if (!n) return
    matchIndex.value = ((i % n) + n) % n
    options.onMatch(matches.value[matchIndex.value])
  }

  /** The row of the current match, or -1. */
  const currentRow = computed(() => (matchIndex.value >= 0 ? matches.value[matchIndex.value] : -1))

  onScopeDispose(() => {
    if (debounce) clearTimeout(debounce)
    if (slice) clearTimeout(slice)
  })

  return {
    query,
    term,
    matches,
    matchIndex,
    currentRow,
    scan,
    goTo,
    next: () => goTo(matchIndex.value + 1),
    previous: () => goTo(matchIndex.value - 1),
  }
}

export type LogSearch = ReturnType<typeof useLogSearch>
