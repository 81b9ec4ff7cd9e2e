/**
 * The live log of one deployment over the app's WebSocket (see stores/realtime.ts).
 *
 * - Subscribes with `since_seq` = the last seq seen, so the server sends the persisted lines after it,
 *   then live ones; after a reconnection the same frame is rebuilt and the stream resumes where it
 *   stopped. Lines are kept during an outage and deduplicated by `seq`: no loss, no double.
 * - Each `subscribed` answer (the first one, and after every reconnection) and each `resync` reads the
 *   deployment again: status, progress, step and attempt are what the API says, not the last event
 *   received before an outage.
 * - The services' output (the Services tab): lines from every container merged by their timestamp (the
 *   server sends each container's backlog in turn), deduplicated (a resubscription sends the tail again),
 *   each with the level its text names.
 * - Appends are batched per animation frame; `lines` is a plain (non-reactive) array and `version`
 *   ticks once per batch, so 100,000 lines cost one render per frame, not one per line.
 * - `debug` (or VITE_ENABLE_LOGS_DEBUG) logs every DEPLOYMENT_LOGS_UPDATE to the console.
 */
import { computed, markRaw, onScopeDispose, ref, toValue, watch, type MaybeRefOrGetter } from 'vue'
import { flag } from '../api/config'
import { getDeployment, getLogs, LOG_PAGE, toLogLine, type LogLine } from '../api/deployments'
import type { components } from '../api/schema'
import { isStatus, type DeploymentStatus } from '../constants/deployments'
import { frameErrorText, servicesEndText } from '../i18n/serverWords'
import { dispatchFrame, type FrameHandlers, type ServerFrame } from '../realtime/frames'
import { getSocket, useRealtimeStore } from '../stores/realtime'
import { stripAnsi } from '../utils/ansi'

/**
 * One line of a running deployment's container output, as the Services tab shows it: a log line whose `seq`
 * is its place in the merged output (1, 2, ... in timestamp order), labelled with its service.
 */
export interface ServiceLine extends LogLine {
  service: string
  container: string
}

/** The level a line of container output names (`ERROR ...`, `level=warn`, `[debug]`): the first level word; info otherwise. */
export function lineLevel(message: string): LogLine['level'] {
  const m = /\b(error|err|fatal|critical|crit|panic|emerg|warn|warning|debug|trace|info|notice)\b/i.exec(
    stripAnsi(message.slice(0, 300)),
  )
  if (!m) return 'info'
  const word = m[1].toLowerCase()
  if (word === 'warn' || word === 'warning') return 'warning'
  if (word === 'debug' || word === 'trace') return 'debug'
  if (word === 'info' || word === 'notice') return 'info'
  return 'error'
}

/** Where the pull of one of the deployment's images stands (`DEPLOYMENT_PULL_PROGRESS`). */
export type PullProgress = components['schemas']['PullProgressData']

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
  const attempt = ref<number | null>(null)
  /**
   * Each image's pull as its last `DEPLOYMENT_PULL_PROGRESS` said (in the order the images started). Every
   * event carries an image's whole state, so a page opened mid-pull shows it from the next event (≤ 0.25 s).
   */
  const pulls = ref<PullProgress[]>([])
  /** The services' output, merged by timestamp (a plain array, like `lines`); `serviceVersion` ticks per batch. */
  const serviceLines = markRaw([] as ServiceLine[])
  const serviceVersion = ref(0)
  /** Ticks when lines were put in between others (a backlog older than what was shown): lay them out again. */
  const serviceReordered = ref(0)
  /** Why the services' stream ended (`SERVICE_LOGS_END`), while it has. */
  const servicesEnded = ref<string | null>(null)
  const serviceKeys = new Set<string>()
  const errorMessage = ref<string | null>(null)
  const connected = computed(() => realtime.state === 'live')
  const state = computed(() => realtime.state)

  let pending: LogLine[] = []
  let scheduled = false
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
      servicesEnded.value = null
      onServiceLines(data.lines)
    },
    SERVICE_LOGS_END({ data }) {
      servicesEnded.value = servicesEndText(data)
    },
    DEPLOYMENT_PULL_PROGRESS({ data }) {
      const at = pulls.value.findIndex((p) => p.image === data.image)
      pulls.value = at < 0 ? [...pulls.value, data] : pulls.value.map((p, i) => (i === at ? data : p))
    },
    DEPLOYMENT_PROGRESS({ data }) {
      progress.value = data.progress
      if (typeof data.step_name === 'string') stepName.value = data.step_name
    },
    DEPLOYMENT_STATUS_CHANGED({ data }) {
      if (isStatus(data.new_status)) status.value = data.new_status
      if (status.value === 'pending') pulls.value = [] // a retry or a new revision pulls again
      if (typeof data.error_message === 'string') errorMessage.value = data.error_message
      if (typeof data.attempt === 'number') attempt.value = data.attempt
      if (status.value === 'running') progress.value = 100
    },
    subscribed(frame) {
      // A (re)subscription took effect: what was shown before an outage is read again.
      if ((frame.stream ?? 'events') === 'events') void reread()
    },
    resync() {
      // The server dropped events for us: ask again from the last seq we hold, and read the rest again.
      socket.resubscribe(`logs:${toValue(deploymentId)}`)
      void reread()
    },
    error(frame) {
      errorMessage.value = frameErrorText(frame)
    },
  }

  function onMessage(frame: ServerFrame): void {
    const id = toValue(deploymentId)
    if (id && 'deployment_id' in frame && frame.deployment_id === id) dispatchFrame(handlers, frame)
  }

  /** Status, progress, step and attempt as the API has them now. */
  async function reread(): Promise<void> {
    const id = toValue(deploymentId)
    if (!id) return
    try {
      const d = await getDeployment(id)
      if (toValue(deploymentId) !== id) return
      status.value = d.status
      progress.value = d.progress
      stepName.value = d.step_name
      attempt.value = d.attempt
      errorMessage.value = d.error_message
    } catch {
      /* gone or unreachable: the events say so */
    }
  }

  function onServiceLines(raw: components['schemas']['ServiceLogLine'][]): void {
    let added = 0
    let outOfOrder = false
    for (const r of raw) {
      const timestamp = r.timestamp ?? ''
      const key = `${r.container}\u0000${timestamp}\u0000${r.message}`
      if (serviceKeys.has(key)) continue // sent again after a resubscription
      serviceKeys.add(key)
      const last = serviceLines[serviceLines.length - 1]
      if (last && timestamp && timestamp < last.timestamp) outOfOrder = true
      serviceLines.push({
        seq: serviceLines.length + 1,
        timestamp: timestamp || (last?.timestamp ?? ''),
        level: lineLevel(r.message),
        message: r.message,
        service: r.service,
        container: r.container,
      })
      added++
    }
    if (!added) return
    if (outOfOrder) {
      // A container's backlog older than lines shown: merged in by time (a stable sort keeps arrival order
      // for equal timestamps), then numbered again.
      serviceLines.sort((a, b) => (a.timestamp < b.timestamp ? -1 : a.timestamp > b.timestamp ? 1 : a.seq - b.seq))
    }
    if (serviceLines.length > SERVICE_LINES_KEPT) {
      for (const dropped of serviceLines.splice(0, serviceLines.length - SERVICE_LINES_KEPT))
        serviceKeys.delete(`${dropped.container}\u0000${dropped.timestamp}\u0000${dropped.message}`)
      outOfOrder = true
    }
    if (outOfOrder) {
      serviceLines.forEach((line, i) => (line.seq = i + 1))
      serviceReordered.value++
    }
    serviceVersion.value++
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
    attempt.value = null
    errorMessage.value = null
    pulls.value = []
    clearServices()
    version.value++
  }

  function clearServices(): void {
    serviceLines.length = 0
    serviceKeys.clear()
    servicesEnded.value = null
    serviceReordered.value++
    serviceVersion.value++
  }

  /** Clear the display only: the seq position is kept, so new lines keep coming and old ones do not return. */
  function clear(): void {
    lines.length = 0
    pending = []
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
    attempt,
    errorMessage,
    pulls,
    serviceLines,
    serviceVersion,
    serviceReordered,
    servicesEnded,
    /** Clear the services' display (the tail is sent again on the next subscription, and kept out). */
    clearServices: () => {
      const keys = [...serviceKeys]
      clearServices()
      keys.forEach((k) => serviceKeys.add(k))
    },
    reread,
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
