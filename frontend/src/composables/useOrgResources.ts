/** Stacks and targets of the current organisation (names for lists, choices for forms). */
import { computed, ref, toValue, watch, type MaybeRefOrGetter } from 'vue'
import { rawJson } from '../api/client'
import { errorText } from '../api/errors'
import type { components } from '../api/schema'

export type Stack = components['schemas']['StackRead']
export type Target = components['schemas']['TargetRead']

interface Page<T> {
  items: T[]
  total?: number
  next_cursor?: string | null
}

/** Every item of a listing, following either paging shape (offset/total or next_cursor). */
export async function fetchAll<T>(path: string, params: Record<string, string> = {}): Promise<T[]> {
  const all: T[] = []
  let cursor: string | null = null
  for (let i = 0; i < 50; i++) {
    const q = new URLSearchParams({ ...params, limit: '100' })
    if (cursor) q.set('cursor', cursor)
    else if (all.length) q.set('offset', String(all.length))
    const page: Page<T> = await rawJson<Page<T>>('GET', `${path}?${q}`)
    all.push(...page.items)
    if ('next_cursor' in page) {
      cursor = page.next_cursor ?? null
      if (!cursor) break
    } else if (!page.items.length || all.length >= (page.total ?? 0)) break
  }
  return all
}

export function useOrgResources(organizationId: MaybeRefOrGetter<string | null>) {
  const stacks = ref<Stack[]>([])
  const targets = ref<Target[]>([])
  const loading = ref(false)
  const error = ref<string | null>(null)

  async function refresh(): Promise<void> {
    const org = toValue(organizationId)
    if (!org) return
    loading.value = true
    error.value = null
    try {
      const params = { organization_id: org }
      ;[stacks.value, targets.value] = await Promise.all([
        fetchAll<Stack>('/api/v1/stacks', params),
        fetchAll<Target>('/api/v1/targets', params),
      ])
    } catch (err) {
      error.value = errorText(err)
    } finally {
      loading.value = false
    }
  }
  watch(() => toValue(organizationId), refresh, { immediate: true })

  const stackName = computed(() => Object.fromEntries(stacks.value.map((s) => [s.id, s.name])))
  const targetName = computed(() => Object.fromEntries(targets.value.map((s) => [s.id, s.name])))
  return { stacks, targets, loading, error, refresh, stackName, targetName }
}
