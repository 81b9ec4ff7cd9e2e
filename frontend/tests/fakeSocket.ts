/** A stand-in for the browser WebSocket, driven by the test (pure transport logic only). */
import type { ServerFrame } from '../src/realtime/frames'
import type { WebSocketLike } from '../src/realtime/socket'

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = []
  readyState = 0
  sent: Record<string, unknown>[] = []
  onopen: ((ev: unknown) => void) | null = null
  onclose: ((ev: { code: number; reason?: string }) => void) | null = null
  onerror: ((ev: unknown) => void) | null = null
  onmessage: ((ev: { data: unknown }) => void) | null = null

  constructor(readonly url: string) {
    FakeWebSocket.instances.push(this)
  }
  static last(): FakeWebSocket {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1]
  }
  send(data: string): void {
    this.sent.push(JSON.parse(data))
  }
  close(): void {
    this.readyState = 3
  }
  // --- driven by the test ---
  /** The connection opens and the server accepts the credential (what a healthy server does). */
  open(): void {
    this.openOnly()
    this.receive({ type: 'authenticated', user_id: 'u1', expires_at: null })
  }
  /** The connection opens; the server has not answered the auth frame (yet). */
  openOnly(): void {
    this.readyState = 1
    this.onopen?.({})
  }
  fail(code = 1006): void {
    this.readyState = 3
    this.onclose?.({ code })
  }
  receive(frame: ServerFrame): void {
    this.receiveRaw(JSON.stringify(frame))
  }
  receiveRaw(data: string): void {
    this.onmessage?.({ data })
  }
}
