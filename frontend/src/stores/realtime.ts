/** The one WebSocket of the app: every page and the logs drawer subscribe through it. */
import { defineStore } from 'pinia'
import { ref } from 'vue'
import { flag, wsUrl } from '../api/config'
import { refreshSession } from '../api/client'
import { tokens } from '../api/tokens'
import { RealtimeSocket, type SocketState } from '../realtime/socket'

let socket: RealtimeSocket | null = null

export function getSocket(): RealtimeSocket {
  if (!socket) {
    socket = new RealtimeSocket({
      url: wsUrl,
      token: () => tokens.access(),
      refreshToken: refreshSession,
      debug: flag(import.meta.env.VITE_ENABLE_WEBSOCKET_DEBUG),
    })
    // A refreshed token is handed to the open socket, so it outlives the access token it began with.
    tokens.onChange((access) => socket?.reauthenticate(access))
  }
  return socket
}

/** Tests swap the socket for one built on a stand-in WebSocket. */
export function setSocket(next: RealtimeSocket | null): void {
  socket = next
  organizationHolders.clear()
}

/** How many owners (the deployments store, a list page) hold each organisation subscription. */
const organizationHolders = new Map<string, { count: number; stop: () => void }>()

/**
 * Subscribes to an organisation's events (list views: deployments, stacks, targets, members) for as long as
 * one owner holds it: several owners share the one subscription. Returns the release.
 */
export function holdOrganization(organizationId: string): () => void {
  const s = getSocket()
  let held = organizationHolders.get(organizationId)
  if (!held) {
    const stop = s.subscribe(`org:${organizationId}`, () => ({ type: 'subscribe', organization_id: organizationId }), {
      type: 'unsubscribe',
      organization_id: organizationId,
    })
    held = { count: 0, stop }
    organizationHolders.set(organizationId, held)
  }
  held.count += 1
  s.connect()
  let released = false
  return () => {
    if (released) return
    released = true
    const current = organizationHolders.get(organizationId)
    if (!current) return
    current.count -= 1
    if (current.count <= 0) {
      organizationHolders.delete(organizationId)
      current.stop()
    }
  }
}

export const useRealtimeStore = defineStore('realtime', () => {
  const state = ref<SocketState>(getSocket().state)
  /** When the next reconnection attempt is due (ms since the epoch), while one is scheduled. */
  const nextAttemptAt = ref<number | null>(getSocket().nextAttemptAt)
  getSocket().onState((s) => {
    state.value = s
    nextAttemptAt.value = getSocket().nextAttemptAt
  })

  function connect(): void {
    getSocket().connect()
  }
  function retry(): void {
    getSocket().retry()
  }
  function disconnect(): void {
    getSocket().close()
  }
  return { state, nextAttemptAt, connect, retry, disconnect }
})
