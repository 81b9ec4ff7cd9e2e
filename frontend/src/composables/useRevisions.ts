/**
 * A deployment's revisions as its page shows them: the newest page (read again when the deployment's status or
 * revision changes, or after an automatic rollback), older pages by cursor, and the current revision.
 */
import { computed, ref, toValue, type MaybeRefOrGetter } from 'vue'
import { errorText } from '../api/errors'
import { getRevision, listRevisions, type Revision } from '../api/revisions'

export const REVISION_PAGE = 20

/** `older` appended after `newer` (newest first), each number once, the newer copy kept. */
export function mergeRevisions(newer: Revision[], older: Revision[]): Revision[] {
  const seen = new Set(newer.map((r) => r.number))
  return [...newer, ...older.filter((r) => !seen.has(r.number))].sort((a, b) => b.number - a.number)
}

export function useRevisions(deploymentId: MaybeRefOrGetter<string>) {
  const items = ref<Revision[]>([])
  const nextCursor = ref<string | null>(null)
  const loading = ref(false)
  const error = ref<string | null>(null)
  let generation = 0
  /** Older pages were read ("Older revisions"): the cursor points past them, a reload keeps it. */
  let olderLoaded = false

  /** The newest page again, keeping the older pages already loaded (their outcomes may have changed too). */
  async function reload(): Promise<void> {
    const id = toValue(deploymentId)
    const mine = ++generation
    loading.value = true
    try {
      const page = await listRevisions(id, { limit: REVISION_PAGE })
      if (mine !== generation) return
      const newest = page.items
      const oldestShown = newest.length ? newest[newest.length - 1].number : 0
      // Older pages already shown: kept (below the newest page), or reset when this is the first read.
      const kept = items.value.filter((r) => r.number < oldestShown)
      items.value = mergeRevisions(newest, kept)
      if (!olderLoaded) nextCursor.value = page.next_cursor ?? null
      error.value = null
    } catch (err) {
      if (mine === generation) error.value = errorText(err)
    } finally {
      if (mine === generation) loading.value = false
    }
  }

  async function loadMore(): Promise<void> {
    if (!nextCursor.value || loading.value) return
    loading.value = true
    try {
      const page = await listRevisions(toValue(deploymentId), { limit: REVISION_PAGE, cursor: nextCursor.value })
      items.value = mergeRevisions(items.value, page.items)
      nextCursor.value = page.next_cursor ?? null
      olderLoaded = true
    } catch (err) {
      error.value = errorText(err)
    } finally {
      loading.value = false
    }
  }

  /** Revision `n`: from the pages loaded, else read (and kept). */
  async function ensure(n: number): Promise<Revision | null> {
    const known = items.value.find((r) => r.number === n)
    if (known) return known
    try {
      const r = await getRevision(toValue(deploymentId), n)
      items.value = mergeRevisions(items.value, [r])
      return r
    } catch {
      return null
    }
  }

  function clear(): void {
    generation++
    olderLoaded = false
    items.value = []
    nextCursor.value = null
    error.value = null
  }

  const byNumber = computed(() => Object.fromEntries(items.value.map((r) => [r.number, r])) as Record<number, Revision>)
  return { items, nextCursor, loading, error, reload, loadMore, ensure, clear, byNumber }
}
