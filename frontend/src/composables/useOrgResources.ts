/** Stacks and targets of the current organisation (names for lists, choices for forms). */
import { computed, ref, toValue, watch, type MaybeRefOrGetter } from 'vue'
import { errorText } from '../api/errors'
import { listStacks, type Stack } from '../api/stacks'
import { listTargets, type Target } from '../api/targets'

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
      ;[stacks.value, targets.value] = await Promise.all([listStacks(org), listTargets(org)])
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
