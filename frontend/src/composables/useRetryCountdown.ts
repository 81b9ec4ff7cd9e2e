/** Seconds until the socket's next reconnection attempt (null when none is scheduled), ticking each second. */
import { computed, onScopeDispose, ref } from 'vue'
import { useRealtimeStore } from '../stores/realtime'

export function useRetryCountdown() {
  const realtime = useRealtimeStore()
  const now = ref(Date.now())
  const timer = setInterval(() => (now.value = Date.now()), 1000)
  onScopeDispose(() => clearInterval(timer))
  return computed(() =>
    realtime.nextAttemptAt === null ? null : Math.max(0, Math.ceil((realtime.nextAttemptAt - now.value) / 1000)),
  )
}
