/**
 * The scroll position of the logs drawer and its smart auto-scroll: following the tail is on by default,
 * pauses when the user scrolls up, and resumes by itself at the bottom (or with the button). The viewport's
 * size is measured with a ResizeObserver.
 */
import { nextTick, onScopeDispose, ref, watch } from 'vue'

export interface FollowOptions {
  /** Height of the content (the laid-out rows), from the layout's own model. */
  contentHeight: () => number
  /** Wrapped rows have estimated heights: then the real scroll height is read. */
  wrapped: () => boolean
  /** Height of one unwrapped row: closer than 1.5 rows to the end counts as the bottom. */
  rowHeight: number
}

export function useLogFollow(options: FollowOptions) {
  const scroller = ref<HTMLElement | null>(null)
  const scrollTop = ref(0)
  const viewport = ref(400)
  const width = ref(800)
  /** Following the tail: new lines scroll the view to the bottom. */
  const following = ref(true)
  let lastTop = 0

  /** To the end, from the layout's own model (reading scrollHeight would force a second layout per frame). */
  function toBottom(): void {
    const el = scroller.value
    if (!el) return
    const bottom = options.wrapped() ? el.scrollHeight : Math.max(0, options.contentHeight() - viewport.value)
    el.scrollTop = bottom
    // What the element took (it clamps): wrapped, `bottom` is a whole view past the end, and a window of rows
    // computed for it would leave the top of the view empty.
    scrollTop.value = options.wrapped() ? el.scrollTop : bottom
    lastTop = scrollTop.value
  }

  /** After new lines: when following, render the tail at once (not the old position, then the tail). */
  function afterAppend(): void {
    if (!following.value) return
    scrollTop.value = Math.max(0, options.contentHeight() - viewport.value)
    void nextTick(toBottom)
  }

  /** Shows the content at `top` a third of the way down the view, and stops following. */
  function reveal(top: number): void {
    const el = scroller.value
    if (!el) return
    following.value = false
    el.scrollTop = Math.max(0, top - viewport.value / 3)
    scrollTop.value = el.scrollTop
  }

  function onScroll(): void {
    const el = scroller.value
    if (!el) return
    scrollTop.value = el.scrollTop
    const atBottom = options.contentHeight() - el.scrollTop - viewport.value < options.rowHeight * 1.5
    if (atBottom) following.value = true
    else if (el.scrollTop < lastTop - 2) following.value = false
    lastTop = el.scrollTop
  }

  function follow(): void {
    following.value = true
    void nextTick(toBottom)
  }

  function toggle(): void {
    if (following.value) following.value = false
    else follow()
  }

  let observer: ResizeObserver | null = null
  function measure(): void {
    const el = scroller.value
    if (!el) return
    viewport.value = el.clientHeight || 400
    width.value = el.clientWidth || 800
  }
  watch(scroller, (el) => {
    observer?.disconnect()
    if (el && typeof ResizeObserver !== 'undefined') {
      observer = new ResizeObserver(measure)
      observer.observe(el)
    }
    measure()
  })
  onScopeDispose(() => observer?.disconnect())

  return { scroller, scrollTop, viewport, width, following, onScroll, toBottom, afterAppend, reveal, follow, toggle }
}

export type LogFollow = ReturnType<typeof useLogFollow>
