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
import { rawJson } from '../api/client'
import { isStatus, type DeploymentStatus, type LogLevel } from '../constants/deployments'
import type { ServerMessage } from '../realtime/socket'
import { getSocket, useRealtimeStore } from '../stores/realtime'

export interface LogLine {
  seq: number
  timestamp: string
  level: LogLevel
  message: string
}

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
const KNOWN_LEVELS: ReadonlySet<string> = new Set(['debug', 'info', 'warning', 'error'])

type FrameScheduler = (cb: () => void) => void
const defaultScheduler: FrameScheduler = (cb) =>
  typeof requestAnimationFrame === 'function' ? void requestAnimationFrame(() => cb()) : void setTimeout(cb, 16)
let scheduleFrame: FrameScheduler = defaultScheduler
/** Tests flush synchronously. */
export function setFrameScheduler(next: FrameScheduler | null): void {
  scheduleFrame = next ?? defaultScheduler
}

export function normaliseLevel(level: unknown): LogLevel {
  const l = String(level ?? 'info').toLowerCase()
  if (l === 'warn') return 'warning'
  if (l === 'critical' || l === 'fatal') return 'error'
  return l === 'debug' || l === 'warning' || l === 'error' ? l : 'info'
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

  function accept(raw: unknown[]): number {
    let added = 0
    for (const item of raw) {
      // The parsed frame's own objects are kept (normalised in place): no second object per line,
      // which matters for the garbage collector at 100,000 lines.
      const r = item as LogLine
      if (!r || typeof r !== 'object') continue
      const seq = typeof r.seq === 'number' ? r.seq : Number(r.seq)
      if (!Number.isFinite(seq) || seq <= lastSeq.value) continue // already shown: dedupe by seq
      lastSeq.value = seq
      r.seq = seq
      if (typeof r.timestamp !== 'string') r.timestamp = String(r.timestamp ?? '')
      if (typeof r.message !== 'string') r.message = String(r.message ?? '')
      if (!KNOWN_LEVELS.has(r.level)) r.level = normaliseLevel(r.level)
      pending.push(r)
      added++
    }
    if (added && !scheduled) {
      scheduled = true
      scheduleFrame(flush)
    }
    return added
  }

  function onMessage(m: ServerMessage): void {
    const id = toValue(deploymentId)
    if (!id || m.deployment_id !== id) return
    const data = m.data ?? {}
    switch (m.type) {
      case 'DEPLOYMENT_LOGS_UPDATE': {
        if (data.stream === 'services') {
          onServiceLines(data)
          return
        }
        if (debugOn()) console.debug('[logs] DEPLOYMENT_LOGS_UPDATE', m)
        if (Array.isArray(data.logs)) accept(data.logs)
        return
      }
      case 'SERVICE_LOGS':
      case 'DEPLOYMENT_SERVICE_LOGS':
        onServiceLines(data)
        return
      case 'DEPLOYMENT_PROGRESS':
        if (typeof data.progress === 'number') progress.value = data.progress
        if (typeof data.step_name === 'string') stepName.value = data.step_name
        return
      case 'DEPLOYMENT_STATUS_CHANGED':
        if (isStatus(data.new_status)) status.value = data.new_status
        if (typeof data.error_message === 'string') errorMessage.value = data.error_message
        if (status.value === 'running') progress.value = 100
        return
      case 'resync':
        // The server dropped lines for us: ask again from the last seq we hold.
        socket.resubscribe(`logs:${id}`)
        return
      case 'error':
        errorMessage.value = String(m.detail ?? 'error')
        return
    }
  }

  function onServiceLines(data: Record<string, unknown>): void {
    const raw = Array.isArray(data.logs) ? data.logs : Array.isArray(data.lines) ? data.lines : []
    if (!raw.length) return
    const next = serviceLines.value.slice()
    for (const item of raw) {
      const r = item as Record<string, unknown>
      next.push({
        id: ++serviceSeq,
        service: String(r.service ?? data.service ?? ''),
        timestamp: r.timestamp ? String(r.timestamp) : null,
        message: String(r.message ?? r.line ?? ''),
      })
    }
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
      let res: { items: unknown[] }
      try {
        res = await rawJson<{ items: unknown[] }>(
          'GET',
          `/api/v1/deployments/${encodeURIComponent(id)}/logs?since_seq=${since}&limit=5000`,
        )
      } catch {
        return
      }
      if (toValue(deploymentId) !== id) return
      accept(res.items)
      if (res.items.length < 5000) return
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
