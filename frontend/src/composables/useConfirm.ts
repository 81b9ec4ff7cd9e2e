/**
 * One confirmation dialog for the whole app (components/ConfirmDialog.vue shows it): buttons that name the
 * action ("Stop deployment" / "Keep it running"), the destructive one in the error colour, and while the
 * action runs a spinner saying what it waits for. The confirm button cannot be pressed twice.
 */
import { ref, shallowRef } from 'vue'

export interface ConfirmRequest {
  title: string
  content: string
  /** The confirm button: names the action. */
  confirmText: string
  /** The other button: names what not confirming keeps ("Keep it running"). */
  cancelText: string
  /** Deleting, stopping, cancelling: the confirm button in the error colour. */
  destructive?: boolean
  /** What the action waits for while it runs; a function is read again as it changes (e.g. once known). */
  waiting?: string | (() => string)
  /** The action; the dialog closes when it settles (it reports its own success or failure). */
  run: () => Promise<unknown>
}

/** The request shown, if any. */
export const confirmRequest = shallowRef<ConfirmRequest | null>(null)
/** The action is running. */
export const confirmBusy = ref(false)
/** When it started (ms), for the elapsed time shown with what it waits for. */
export const confirmStarted = ref(0)

export function confirm(request: ConfirmRequest): void {
  if (confirmBusy.value) return
  confirmRequest.value = request
}

/** Runs the action once: a second press while it runs does nothing. */
export async function confirmNow(): Promise<void> {
  const request = confirmRequest.value
  if (!request || confirmBusy.value) return
  confirmBusy.value = true
  confirmStarted.value = Date.now()
  try {
    await request.run()
  } catch {
    /* the action reports its own failure */
  } finally {
    confirmBusy.value = false
    if (confirmRequest.value === request) confirmRequest.value = null
  }
}

/** Closes the dialog; an action already running goes on (its row shows it). */
export function dismissConfirm(): void {
  confirmRequest.value = null
}
