/** Whether the window is phone-narrow (below `px`), kept up to date on resize. */
import { onBeforeUnmount, onMounted, ref } from 'vue'

export function useNarrow(px = 700) {
  const narrow = ref(typeof window !== 'undefined' && window.innerWidth < px)
  const update = () => (narrow.value = window.innerWidth < px)
  onMounted(() => window.addEventListener('resize', update))
  onBeforeUnmount(() => window.removeEventListener('resize', update))
  return narrow
}
