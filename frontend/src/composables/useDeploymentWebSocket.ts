/**
 * The live log of one deployment over the app's WebSocket (see stores/realtime.ts).
 *
 * - Subscribes with `since_seq` = the last seq seen, so the server sends the persisted lines after it,
 *   then live ones; after a reconnection the same frame is rebuilt and the stream resumes where it
 *   stopped. Lines are kept during an outage and deduplicated by `seq`: no loss, no double.
 * - Appends are batched per animation frame; `lines` is a plain (non-reactive) array and `version`
 *   ticks once per batch, so 100,000 lines cost one render per frame, not one per line.
 * - `debug` (or VITE_ENABLE_LOGS_DEBUG) logs every DEPLOYMENT_LOGS_UPDATE to the console.
 */
import { computed, markRaw, onScopeDispose, ref, shallowRef, toValue, watch, type MaybeRefOrGetter } from 'vue'
import { flag } from '../api/config'
import { getLogs, LOG_PAGE, toLogLine, type LogLine } from '../api/deployments'
import type { components } from '../api/schema'
import { isStatus, type DeploymentStatus } from '../constants/deployments'
import { dispatchFrame, type FrameHandlers, type ServerFrame } from '../realtime/frames'
import { getSocket, useRealtimeStore } from '../stores/realtime'

/** One line of a running deployment's container output, as the Services tab shows it. */
export interface ServiceLine {
  id: number
  service: string
  timestamp: string | null
  message: string
}

export interface DeploymentWebSocketOptions {
  debug?: MaybeRefOrGetter<boolean | undefined>
  /** Also subscribe to the services' live output (stream "services"). */
  services?: MaybeRefOrGetter<boolean>
  serviceTail?: number
}

const SERVICE_LINES_KEPT = 5000

type FrameScheduler = (cb: () => void) => void
const defaultScheduler: FrameScheduler = (cb) =>
  typeof requestAnimationFrame === 'function' ? void requestAnimationFrame(() => cb()) : void setTimeout(cb, 16)
let scheduleFrame: FrameScheduler = defaultScheduler
/** Tests flush synchronously. */
export function setFrameScheduler(next: FrameScheduler | null): void {
  scheduleFrame = next ?? defaultScheduler
}

export function useDeploymentWebSocket(
  deploymentId: MaybeRefOrGetter<string | null>,
  options: DeploymentWebSocketOptions = {},
) {
  const realtime = useRealtimeStore()
  const socket = getSocket()

  const lines = markRaw([] as LogLine[])
  const version = ref(0)
  const lastSeq = ref(0)
  const progress = ref<number | null>(null)
  const stepName = ref<string | null>(null)
  const status = ref<DeploymentStatus | null>(null)
  const serviceLines = shallowRef<ServiceLine[]>([])
  const errorMessage = ref<string | null>(null)
  const connected = computed(() => realtime.state === 'live')
  const state = computed(() => realtime.state)

  let pending: LogLine[] = []
  let scheduled = false
  let serviceSeq = 0
  let stopSub: (() => void) | null = null
  let stopServices: (() => void) | null = null

  const debugOn = () => !!toValue(options.debug) || flag(import.meta.env.VITE_ENABLE_LOGS_DEBUG)

  function flush(): void {
    scheduled = false
    if (!pending.length) return
    const batch = pending
    pending = []
    for (const line of batch) lines.push(line)
    version.value++
  }

  /** Appends the lines after the last seq held (dedupe by seq); the batch is shown at the next frame. */
  function accept(raw: readonly Parameters<typeof toLogLine>[0][]): number {
    let added = 0
    for (const item of raw) {
      if (!Number.isFinite(item.seq) || item.seq <= lastSeq.value) continue // already shown: dedupe by seq
      lastSeq.value = item.seq
      pending.push(toLogLine(item))
      added++
    }
    if (added && !scheduled) {
      scheduled = true
      scheduleFrame(flush)
    }
    return added
  }

  // --- one handler per frame type, for this deployment's frames only ------------------------------
  const handlers: FrameHandlers = {
    DEPLOYMENT_LOGS_UPDATE(frame) {
      if (debugOn()) console.debug('[logs] DEPLOYMENT_LOGS_UPDATE', frame)
      accept(frame.data.logs)
    },
    SERVICE_LOGS({ data }) {
      onServiceLines(data.lines)
    },
    DEPLOYMENT_PROGRESS({ data }) {
      progress.value = data.progress
      if (typeof data.step_name === 'string') stepName.value = data.step_name
    },
    DEPLOYMENT_STATUS_CHANGED({ data }) {
      if (isStatus(data.new_status)) status.value = data.new_status
      if (typeof data.error_message === 'string') errorMessage.value = data.error_message
      if (status.value === 'running') progress.value = 100
    },
    resync() {
      // The server dropped lines for us: ask again from the last seq we hold.
      socket.resubscribe(`logs:${toValue(deploymentId)}`)
    },
    error(frame) {
      errorMessage.value = frame.detail || 'error'
    },
  }

  function onMessage(frame: ServerFrame): void {
    const id = toValue(deploymentId)
    if (id && 'deployment_id' in frame && frame.deployment_id === id) dispatchFrame(handlers, frame)
  }

  function onServiceLines(raw: components['schemas']['ServiceLogLine'][]): void {
    if (!raw.length) return
    const next = serviceLines.value.slice()
    for (const r of raw)
      next.push({ id: ++serviceSeq, service: r.service, timestamp: r.timestamp ?? null, message: r.message })
    serviceLines.value = next.length > SERVICE_LINES_KEPT ? next.slice(-SERVICE_LINES_KEPT) : next
  }

  const stopListening = socket.onMessage(onMessage)

  function subscribe(id: string | null): void {
    stopSub?.()
    stopSub = null
    if (!id) return
    stopSub = socket.subscribe(
      `logs:${id}`,
      () => ({ type: 'subscribe', deployment_id: id, since_seq: lastSeq.value }),
      { type: 'unsubscribe', deployment_id: id },
    )
    socket.connect()
  }

  function subscribeServices(on: boolean): void {
    stopServices?.()
    stopServices = null
    const id = toValue(deploymentId)
    if (!on || !id) return
    const tail = options.serviceTail ?? 200
    stopServices = socket.subscribe(
      `services:${id}`,
      () => ({ type: 'subscribe', deployment_id: id, stream: 'services', tail }),
      { type: 'unsubscribe', deployment_id: id, stream: 'services' },
    )
  }

  /** Forget every line (another deployment, or a full reload). */
  function reset(): void {
    lines.length = 0
    pending = []
    lastSeq.value = 0
    progress.value = null
    stepName.value = null
    status.value = null
    errorMessage.value = null
    serviceLines.value = []
    version.value++
  }

  /** Clear the display only: the seq position is kept, so new lines keep coming and old ones do not return. */
  function clear(): void {
    lines.length = 0
    pending = []
    serviceLines.value = []
    version.value++
  }

  /** Persisted lines over HTTP while the socket is not live (they are deduplicated against the stream). */
  async function preload(id: string): Promise<void> {
    let since = lastSeq.value
    for (let page = 0; page < 100; page++) {
      if (toValue(deploymentId) !== id || realtime.state === 'live') return
      let items: LogLine[]
      try {
        items = await getLogs(id, since)
      } catch {
        return
      }
      if (toValue(deploymentId) !== id) return
      accept(items)
      if (items.length < LOG_PAGE) return
      since = lastSeq.value
    }
  }

  watch(
    () => toValue(deploymentId),
    (id) => {
      reset()
      subscribe(id)
      if (id && realtime.state !== 'live') void preload(id)
      subscribeServices(!!toValue(options.services))
    },
    { immediate: true },
  )
  watch(
    () => !!toValue(options.services),
    (on) => subscribeServices(on),
  )

  onScopeDispose(() => {
    stopSub?.()
    stopServices?.()
    stopListening()
  })

  return {
    lines,
    version,
    lastSeq,
    progress,
    stepName,
    status,
    errorMessage,
    serviceLines,
    connected,
    state,
    retry: () => realtime.retry(),
    clear,
    reset,
    /** Flush pending lines now (tests, and before copying). */
    flush,
    accept,
  }
}
