/**
 * Transport for `/api/v1/ws` (docs/api.md, "Real time"): authenticate with the first frame (the socket is
 * live once the server answers `authenticated`), keep a set of subscriptions, reconnect after 1 s, 2 s and
 * 4 s ("reconnecting"), then keep trying by itself every 8 s, 16 s, then 30 s ("offline", with the time of
 * the next attempt), and at once when the browser comes back online or the tab becomes visible, or on
 * `retry()`. A close with 1013 (the server's database is down: try again later) is one more failed attempt.
 * After every (re)connection each subscription's frame is built again, so a deployment subscription
 * resumes from the last `seq` its owner saw.
 */
import { parseFrame, type ClientFrame, type ServerFrame, type SubscribeFrame, type UnsubscribeFrame } from './frames'

export type SocketState = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'offline'

/** Delays before the 1st, 2nd and 3rd reconnection attempt; after the 3rd failure: offline, still trying. */
export const BACKOFF_MS: readonly number[] = [1000, 2000, 4000]
/** Delays of the attempts made while offline: the last one repeats (the cap). */
export const OFFLINE_RETRY_MS: readonly number[] = [8000, 16000, 30000]
/** Close code the server uses for a missing, bad, expired or revoked token. */
export const CLOSE_UNAUTHORIZED = 4401
/** Close code of a server that cannot serve the connection now (its database is down): try again later. */
export const CLOSE_TRY_AGAIN_LATER = 1013

/** The parts of the browser WebSocket this class uses (a test passes a stand-in). */
export interface WebSocketLike {
  readyState: number
  onopen: ((ev: unknown) => void) | null
  onclose: ((ev: { code: number; reason?: string }) => void) | null
  onerror: ((ev: unknown) => void) | null
  onmessage: ((ev: { data: unknown }) => void) | null
  send(data: string): void
  close(code?: number, reason?: string): void
}

export interface SocketOptions {
  url: () => string
  /** The current access token; `refreshToken` is called once after a 4401 close. */
  token: () => string | null
  refreshToken?: () => Promise<string | null>
  create?: (url: string) => WebSocketLike
  debug?: boolean
  pingIntervalMs?: number
  backoffMs?: readonly number[]
  offlineRetryMs?: readonly number[]
  /** Calls `wake` when a reconnection should be tried at once (the browser online again, the tab visible);
   * returns the way to stop. Default: the window's `online` and the document's `visibilitychange` events. */
  onWake?: (wake: () => void) => () => void
}

function browserWake(wake: () => void): () => void {
  if (typeof window === 'undefined' || typeof document === 'undefined') return () => {}
  const visible = () => document.visibilityState === 'visible' && wake()
  window.addEventListener('online', wake)
  document.addEventListener('visibilitychange', visible)
  return () => {
    window.removeEventListener('online', wake)
    document.removeEventListener('visibilitychange', visible)
  }
}

type Listener = (frame: ServerFrame) => void
type StateListener = (state: SocketState) => void

interface Subscription {
  frame: () => SubscribeFrame
  unsubscribeFrame: UnsubscribeFrame
}

const OPEN = 1

export class RealtimeSocket {
  state: SocketState = 'idle'
  /** Failed attempts since the last successful connection. */
  failures = 0
  /** When the next attempt is due (ms since the epoch), while one is scheduled. */
  nextAttemptAt: number | null = null
  private ws: WebSocketLike | null = null
  private timer: ReturnType<typeof setTimeout> | null = null
  private pinger: ReturnType<typeof setInterval> | null = null
  private readonly subscriptions = new Map<string, Subscription>()
  private readonly listeners = new Set<Listener>()
  private readonly stateListeners = new Set<StateListener>()
  private readonly reconnectListeners = new Set<() => void>()
  private closedByUs = false
  private refreshedAfterDenial = false
  private everConnected = false
  private authenticated = false

  constructor(private readonly options: SocketOptions) {
    ;(options.onWake ?? browserWake)(() => this.wake())
  }

  get backoff(): readonly number[] {
    return this.options.backoffMs ?? BACKOFF_MS
  }

  /** The delay before attempt number `failures + 1`: the backoff, then the offline retries (capped). */
  private delayAfter(failures: number): number {
    const backoff = this.backoff
    if (failures < backoff.length) return backoff[failures]
    const offline = this.options.offlineRetryMs ?? OFFLINE_RETRY_MS
    return offline[Math.min(failures - backoff.length, offline.length - 1)]
  }

  /** The browser is back online, or the tab visible again: a socket that is not live tries at once. */
  wake(): void {
    if (this.closedByUs || this.state === 'idle' || this.state === 'live' || this.state === 'connecting') return
    this.retry()
  }

  /** Open the socket (no-op when already open or opening). */
  connect(): void {
    if (this.ws && this.state !== 'offline' && this.state !== 'reconnecting') return
    this.closedByUs = false
    this.open()
  }

  /** An attempt now (the Retry button, or a wake-up), then the backoff from its start. */
  retry(): void {
    this.clearTimer()
    this.failures = 0
    this.closedByUs = false
    this.teardown()
    this.open()
  }

  /** Close for good (log out). Subscriptions are kept for a later connect(). */
  close(): void {
    this.closedByUs = true
    this.clearTimer()
    this.teardown()
    this.setState('idle')
  }

  /** Subscribe under `key`; `frame` is rebuilt at each (re)connection. Returns the unsubscribe. */
  subscribe(key: string, frame: () => SubscribeFrame, unsubscribeFrame: UnsubscribeFrame): () => void {
    this.subscriptions.set(key, { frame, unsubscribeFrame })
    if (this.state === 'live') this.send(frame())
    return () => {
      if (this.subscriptions.get(key)?.frame !== frame) return
      this.subscriptions.delete(key)
      if (this.state === 'live') this.send(unsubscribeFrame)
    }
  }

  /** Send a subscription's frame again (e.g. after a `resync`). */
  resubscribe(key: string): void {
    const sub = this.subscriptions.get(key)
    if (sub && this.state === 'live') this.send(sub.frame())
  }

  onMessage(listener: Listener): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  onState(listener: StateListener): () => void {
    this.stateListeners.add(listener)
    return () => this.stateListeners.delete(listener)
  }

  /** Called after a reconnection (not the first connection): owners refetch what may have changed. */
  onReconnect(listener: () => void): () => void {
    this.reconnectListeners.add(listener)
    return () => this.reconnectListeners.delete(listener)
  }

  send(frame: ClientFrame): void {
    if (!this.ws || this.ws.readyState !== OPEN) return
    if (this.options.debug) console.debug('[ws] →', frame.type === 'auth' ? { type: 'auth', token: '…' } : frame)
    this.ws.send(JSON.stringify(frame))
  }

  private open(): void {
    const token = this.options.token()
    if (!token) {
      this.setState('offline')
      return
    }
    if (this.state !== 'offline') this.setState(this.failures > 0 ? 'reconnecting' : 'connecting')
    let ws: WebSocketLike
    try {
      const url = this.options.url()
      ws = this.options.create ? this.options.create(url) : (new WebSocket(url) as unknown as WebSocketLike)
    } catch {
      this.scheduleReconnect()
      return
    }
    this.ws = ws
    this.authenticated = false
    ws.onopen = () => {
      if (this.ws !== ws) return
      // The socket is live, and its subscriptions are sent, once the server has accepted the credential.
      this.send({ type: 'auth', token: this.options.token() ?? token })
      this.startPing()
    }
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return
      const frame = parseFrame(ev.data)
      if (!frame) return
      if (this.options.debug) console.debug('[ws] ←', frame)
      if (frame.type === 'pong' || frame.type === 'heartbeat') return
      if (frame.type === 'authenticated' && !this.authenticated) {
        this.authenticated = true
        this.refreshedAfterDenial = false
        const reconnected = this.everConnected
        this.everConnected = true
        this.failures = 0
        this.nextAttemptAt = null
        this.setState('live')
        for (const sub of this.subscriptions.values()) this.send(sub.frame())
        if (reconnected) this.reconnectListeners.forEach((l) => l())
        return
      }
      if (frame.type === 'authenticated') return // a renewed credential's answer
      if (frame.type === 'error' && frame.code === 'token_expired') {
        void this.renewAuth()
        return
      }
      this.listeners.forEach((l) => l(frame))
    }
    ws.onerror = () => {
      /* onclose follows and decides */
    }
    ws.onclose = (ev) => {
      if (this.ws !== ws) return
      this.ws = null
      this.stopPing()
      if (this.closedByUs) return
      if (ev.code === CLOSE_UNAUTHORIZED) {
        void this.afterDenial()
        return
      }
      this.scheduleReconnect() // CLOSE_TRY_AGAIN_LATER included: one more failed attempt, then the backoff
    }
  }

  /** Send a fresh auth frame on the open socket (the server asks for one before the token expires). */
  reauthenticate(token: string | null = this.options.token()): void {
    if (token && this.state === 'live') this.send({ type: 'auth', token })
  }

  private async renewAuth(): Promise<void> {
    const fresh = this.options.refreshToken ? await this.options.refreshToken() : this.options.token()
    this.reauthenticate(fresh)
  }

  private async afterDenial(): Promise<void> {
    // One refresh per denial streak: a token that still fails after it means the session is over.
    if (!this.refreshedAfterDenial && this.options.refreshToken) {
      this.refreshedAfterDenial = true
      const fresh = await this.options.refreshToken()
      if (fresh && !this.closedByUs) {
        this.open()
        return
      }
    }
    this.setState('offline')
  }

  private scheduleReconnect(): void {
    const delay = this.delayAfter(this.failures)
    this.failures += 1
    this.clearTimer()
    this.nextAttemptAt = Date.now() + delay
    this.timer = setTimeout(() => {
      this.timer = null
      this.nextAttemptAt = null
      this.open()
    }, delay)
    // The state is set last, and told even when unchanged: its listeners read the new `nextAttemptAt`.
    this.setState(this.failures > this.backoff.length ? 'offline' : 'reconnecting', true)
  }

  private startPing(): void {
    this.stopPing()
    const every = this.options.pingIntervalMs ?? 25_000
    this.pinger = setInterval(() => this.send({ type: 'ping' }), every)
  }

  private stopPing(): void {
    if (this.pinger) clearInterval(this.pinger)
    this.pinger = null
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    this.nextAttemptAt = null
  }

  private teardown(): void {
    this.stopPing()
    const ws = this.ws
    this.ws = null
    if (ws) {
      ws.onclose = null
      ws.onmessage = null
      try {
        ws.close(1000, 'client closing')
      } catch {
        /* already closed */
      }
    }
  }

  private setState(state: SocketState, always = false): void {
    if (this.state === state && !always) return
    this.state = state
    this.stateListeners.forEach((l) => l(state))
  }
}
