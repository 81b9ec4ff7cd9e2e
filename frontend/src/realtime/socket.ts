/**
 * Transport for `/api/v1/ws` (docs/api.md, "Real time"): authenticate with the first frame,
 * keep a set of subscriptions, reconnect after 1 s, 2 s and 4 s, then give up ("offline") until
 * `retry()`. After every (re)connection each subscription's frame is built again, so a deployment
 * subscription resumes from the last `seq` its owner saw.
 */
import { parseFrame, type ClientFrame, type ServerFrame, type SubscribeFrame, type UnsubscribeFrame } from './frames'

export type SocketState = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'offline'

/** Delays before the 1st, 2nd and 3rd reconnection attempt; after the 3rd failure: offline. */
export const BACKOFF_MS: readonly number[] = [1000, 2000, 4000]
/** Close code the server uses for a missing, bad, expired or revoked token. */
export const CLOSE_UNAUTHORIZED = 4401

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

  constructor(private readonly options: SocketOptions) {}

  get backoff(): readonly number[] {
    return this.options.backoffMs ?? BACKOFF_MS
  }

  /** Open the socket (no-op when already open or opening). */
  connect(): void {
    if (this.ws && this.state !== 'offline' && this.state !== 'reconnecting') return
    this.closedByUs = false
    this.open()
  }

  /** Manual retry after "offline": a fresh budget of three attempts. */
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
    this.setState(this.failures > 0 ? 'reconnecting' : 'connecting')
    let ws: WebSocketLike
    try {
      const url = this.options.url()
      ws = this.options.create ? this.options.create(url) : (new WebSocket(url) as unknown as WebSocketLike)
    } catch {
      this.scheduleReconnect()
      return
    }
    this.ws = ws
    ws.onopen = () => {
      if (this.ws !== ws) return
      this.send({ type: 'auth', token: this.options.token() ?? token })
      const reconnected = this.everConnected
      this.everConnected = true
      this.failures = 0
      this.setState('live')
      for (const sub of this.subscriptions.values()) this.send(sub.frame())
      this.startPing()
      if (reconnected) this.reconnectListeners.forEach((l) => l())
    }
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return
      const frame = parseFrame(ev.data)
      if (!frame) return
      if (this.options.debug) console.debug('[ws] ←', frame)
      if (frame.type === 'pong' || frame.type === 'heartbeat') return
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
      this.scheduleReconnect()
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
    if (this.failures >= this.backoff.length) {
      this.setState('offline')
      return
    }
    const delay = this.backoff[this.failures]
    this.failures += 1
    this.setState('reconnecting')
    this.clearTimer()
    this.timer = setTimeout(() => {
      this.timer = null
      this.open()
    }, delay)
  }

  private startPing(): void {
    this.stopPing()
    this.refreshedAfterDenial = false
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

  private setState(state: SocketState): void {
    if (this.state === state) return
    this.state = state
    this.stateListeners.forEach((l) => l(state))
  }
}
