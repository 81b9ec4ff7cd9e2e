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
}

export const useRealtimeStore = defineStore('realtime', () => {
  const state = ref<SocketState>(getSocket().state)
  getSocket().onState((s) => (state.value = s))

  function connect(): void {
    getSocket().connect()
  }
  function retry(): void {
    getSocket().retry()
  }
  function disconnect(): void {
    getSocket().close()
  }
  return { state, connect, retry, disconnect }
})
