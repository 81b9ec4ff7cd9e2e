/** A page's filters in the URL (shareable, kept on reload): read one, or replace some. */
import { useRoute, useRouter } from 'vue-router'

export function useRouteQuery() {
  const route = useRoute()
  const router = useRouter()

  function get(name: string): string | null {
    const v = route.query[name]
    return typeof v === 'string' && v !== '' ? v : null
  }

  function set(patch: Record<string, string | null | undefined>): void {
    const query: Record<string, unknown> = { ...route.query, ...patch }
    for (const k of Object.keys(query))
      if (query[k] === undefined || query[k] === null || query[k] === '') delete query[k]
    void router.replace({ query: query as Record<string, string> })
  }

  return { get, set }
}
