/** Light/dark: follows the system until the user picks one (remembered). */
import { computed, ref } from 'vue'
import { darkTheme, useOsTheme } from 'naive-ui'

type Choice = 'light' | 'dark' | null
const KEY = 'windflow.theme'
const choice = ref<Choice>((localStorage.getItem(KEY) as Choice) || null)

export function useTheme() {
  const os = useOsTheme()
  const isDark = computed(() => (choice.value ?? os.value) === 'dark')
  const theme = computed(() => (isDark.value ? darkTheme : null))
  function toggle(): void {
    choice.value = isDark.value ? 'light' : 'dark'
    localStorage.setItem(KEY, choice.value)
  }
  return { isDark, theme, toggle }
}
